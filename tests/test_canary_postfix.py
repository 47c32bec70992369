"""Issue 14, the canary test's mail path: canaries through a real Postfix and the `mailaudit milter`
process (the module fixture of test_milter_postfix.py), then ingest. The milter's own log file, its
metrics and every ClickHouse column hold no canary; the event on mail.headers does (allowed)."""

from __future__ import annotations

import copy
import uuid

import pytest

from helpers import ConsumerThread, wait_until
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.schema import migrate
from test_canary import clickhouse_leaks
from test_milter_postfix import mailpath  # noqa: F401 - module fixture: Postfix + milter + sink

pytestmark = pytest.mark.servers

TOKEN = "qzpfcanary" + uuid.uuid4().hex[:8]


def test_canaries_through_postfix_and_the_milter(mailpath, make_cfg):  # noqa: F811
    to = ", ".join(f'"Dn {TOKEN.upper()} {i}" <p.{TOKEN}{i}@d{i % 3}.example>' for i in range(30))
    rcpt = f"p.{TOKEN}0@d0.example"
    mid = mailpath.send("news@billing.shop.example", [rcpt], to, subject=f"Your {TOKEN} results",
                        campaign="canary-pf")
    mailpath.wait_delivered(mid)
    events = mailpath.events([mid])[mid]
    assert TOKEN in events[0]["to"]                      # mail.headers carries the raw header: allowed

    cfg = make_cfg()
    cfg.kafka = copy.deepcopy(mailpath.cfg.kafka)
    db = Database(cfg.clickhouse)
    migrate(db)
    with ConsumerThread(cfg):
        wait_until(lambda: db.execute("SELECT count() FROM {db}.events WHERE message_id = %(m)s", {"m": mid})[0][0] == 1,
                   60, what="the canary copy stored")
    assert clickhouse_leaks(db, [TOKEN]) == []
    assert TOKEN not in mailpath.milter_log.read_text().lower()
    metrics = "\n".join(f"{k} {v}" for k, v in mailpath.metrics().items())
    assert TOKEN not in metrics.lower()
