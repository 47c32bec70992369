"""End to end through a real Postfix: smtplib -> Postfix (smtpd_milters = mailaudit milter) -> SMTP sink.

One private Postfix instance, one milter process (`mailaudit milter`, as an operator runs it) and one
sink serve every test of this module. Services are configured so both policies run side by side:
``billing`` and ``crm`` are monitored (the default), ``newsletter`` and ``digest`` are enforced, the
latter deferring (4xx) held mail instead of quarantining it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import smtplib
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from mailaudit.config import Config
from mailaudit.ingest.kafka_io import make_consumer
from mailaudit.ingest.publisher import send_control
from mailaudit.ingest.topics import create_topics
from mailaudit.stack import free_port, port_open

from helpers import cli, wait_until, write_config
from postfix_support import Postfix, Sink

pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(shutil.which("postfix") is None and not Path("/usr/sbin/postfix").exists(),
                       reason="postfix not installed: run scripts/setup-mailpath.sh"),
]

LEAK_TO = ", ".join(f"Customer {i} <customer{i}@d{i % 7}.example>" for i in range(40))


@dataclass
class MailPath:
    cfg: Config
    postfix: Postfix
    sink: Sink
    metrics_port: int
    milter_log: Path

    def send(self, mail_from: str, rcpts: list[str], to: str, service: str | None = None,
             campaign: str | None = None, subject: str = "hello") -> str:
        msg = EmailMessage()
        msg["From"] = mail_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Message-ID"] = mid = make_msgid(domain="shop.example")
        if service:
            msg["X-Mailaudit-Service"] = service
        if campaign:
            msg["X-Mailaudit-Campaign"] = campaign
        msg.set_content("Hello,\nthis is a test.\n")
        with smtplib.SMTP("127.0.0.1", self.postfix.smtp_port, timeout=30) as s:
            s.send_message(msg, from_addr=mail_from, to_addrs=rcpts)
        return mid

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = out.get(name, 0) + float(value)
        return out

    def events(self, wait_for: list[str], timeout: float = 30) -> dict[str, list[dict]]:
        """Wire events on the events topic by Message-ID, once every Message-ID in ``wait_for`` is there
        (events of one service share a partition, in order: what was published before them is there too)."""
        from kafka import TopicPartition

        consumer = make_consumer(self.cfg.kafka, None)
        try:
            tps = [TopicPartition(self.cfg.kafka.topic_events, p)
                   for p in sorted(consumer.partitions_for_topic(self.cfg.kafka.topic_events))]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            by_mid: dict[str, list[dict]] = {}
            deadline = time.monotonic() + timeout
            while not all(m in by_mid for m in wait_for):
                assert time.monotonic() < deadline, f"events missing: {set(wait_for) - set(by_mid)}"
                for records in consumer.poll(timeout_ms=500).values():
                    for r in records:
                        e = json.loads(r.value)
                        by_mid.setdefault(e["message_id"], []).append(e)
            return by_mid
        finally:
            consumer.close()

    def wait_delivered(self, mid: str, timeout: float = 20) -> dict:
        return wait_until(lambda: (self.sink.find(mid) or [None])[0], timeout, what=f"delivery of {mid}")

    def queue_entry(self, rcpt: str) -> dict | None:
        for m in self.postfix.queue():
            if any(r["address"] == rcpt for r in m["recipients"]):
                return m
        return None


@pytest.fixture(scope="module")
def mailpath(stack):
    base = Path(tempfile.mkdtemp(prefix="mailaudit-postfix-"))
    base.chmod(0o755)
    cfg = Config()
    uid = uuid.uuid4().hex[:10]
    cfg.kafka.bootstrap = stack.kafka_bootstrap
    for name in ("topic_events", "topic_dlq", "topic_alerts", "topic_control"):
        setattr(cfg.kafka, name, f"t{uid}." + getattr(cfg.kafka, name))
    cfg.privacy.hash_key = secrets.token_hex(16)
    create_topics(cfg.kafka)
    main_cfg = write_config(cfg, base / "mailaudit.toml")

    sink = Sink().start()
    milter_port, metrics_port = free_port(), free_port()
    postfix = Postfix(base / "postfix", milter_port, sink.port)
    milter_cfg = base / "milter.toml"
    milter_cfg.write_text(f"""
[milter]
listen = "inet:{milter_port}@127.0.0.1"
metrics_listen = "127.0.0.1:{metrics_port}"
auto_release = true
postfix_config_dir = "{postfix.config_dir}"
stats_interval_s = 0

[milter.senders]
"@billing.shop.example" = "billing"

[milter.services.newsletter]
mode = "enforce"

[milter.services.digest]
mode = "enforce"
on_hold = "tempfail"
""")
    log_path = base / "milter.log"
    log = open(log_path, "w")
    proc = cli(["milter", "--milter-config", str(milter_cfg)], main_cfg, stdout=log, stderr=subprocess.STDOUT)
    mp = MailPath(cfg, postfix, sink, metrics_port, log_path)
    try:
        postfix.start()
        wait_until(lambda: port_open(milter_port) or proc.poll() is not None, 30, what="milter socket")
        assert proc.poll() is None, log_path.read_text()
        wait_until(lambda: mp.metrics().get("mailaudit_milter_hold_guard_ready") == 1, 30, what="hold guard ready")
        yield mp
    finally:
        postfix.stop()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_monitor_and_enforce_with_the_true_envelope(mailpath):
    mp = mailpath
    # A normal transactional message; its service comes from the sender map (MAIL FROM domain).
    normal = mp.send("invoices@billing.shop.example", ["alice@example.com"], "Alice <alice@example.com>",
                     subject="Your invoice")
    # A one-To newsletter: one submission per reader, each copy shows only its reader.
    readers = [f"reader{i}@example.org" for i in range(3)]
    news = [mp.send("news@shop.example", [r], r, service="newsletter", campaign="nl-42") for r in readers]
    # The BitMEX failure: one copy whose To: holds every customer, sent to one of them.
    leak_enforced = mp.send("news@shop.example", ["customer0@d0.example"], LEAK_TO, service="newsletter",
                            campaign="nl-43")
    leak_monitored = mp.send("crm@shop.example", ["customer1@d1.example"], LEAK_TO, service="crm")

    mp.wait_delivered(normal)
    for mid in news:
        mp.wait_delivered(mid)
    delivered_leak = mp.wait_delivered(leak_monitored)
    assert delivered_leak["rcpt_tos"] == ["customer1@d1.example"]

    # enforce: the leaking copy sits in Postfix's hold queue, never delivered.
    held = wait_until(lambda: mp.queue_entry("customer0@d0.example"), 10, what="leak in the queue")
    assert held["queue_name"] == "hold"
    assert held["sender"] == "news@shop.example"
    assert not mp.sink.find(leak_enforced)
    assert f"{held['queue_id']}: milter-hold: END-OF-MESSAGE" in mp.postfix.log()
    milter_log = mp.milter_log.read_text()
    assert f"queue_id={held['queue_id']}" in milter_log and "concatenated_to" in milter_log
    assert "customer5@" not in milter_log                          # counts in the log, never addresses

    # The control headers are gone from what left the MTA.
    assert b"X-Mailaudit" not in mp.sink.find(news[0])[0]["content"]

    events = mp.events([normal, *news, leak_enforced, leak_monitored])
    (e,) = events[normal]
    assert e["service"] == "billing" and e["envelope_to"] == ["alice@example.com"]
    assert e["envelope_from"] == "invoices@billing.shop.example"
    assert e["to"] == "Alice <alice@example.com>" and e["inline_action"] == "accept"
    for mid, rcpt in zip(news, readers):
        (e,) = events[mid]
        assert (e["service"], e["campaign"], e["envelope_to"], e["to"]) == ("newsletter", "nl-42", [rcpt], rcpt)
    (e,) = events[leak_enforced]
    assert e["envelope_to"] == ["customer0@d0.example"] and e["to"].count("@") == 40
    assert e["inline_action"] == "quarantine" and e["campaign"] == "nl-43"
    (e,) = events[leak_monitored]
    assert e["service"] == "crm" and e["inline_action"] == "accept"

    m = mp.metrics()
    assert m['mailaudit_milter_decisions_total{action="quarantine",cause="disclosure",service="newsletter",would="quarantine"}'] == 1
    assert m['mailaudit_milter_decisions_total{action="accept",cause="disclosure",service="crm",would="quarantine"}'] == 1
    assert m["mailaudit_milter_message_overhead_ms_count"] >= 6


def test_held_campaign_is_quarantined_then_delivered_after_release(mailpath):
    mp = mailpath
    send_control(mp.cfg.kafka, "hold", "newsletter", "spring", reason="test hold")
    wait_until(lambda: mp.metrics()["mailaudit_milter_holds_in_force"] == 1, 15, what="hold seen by the milter")

    held_mid = mp.send("news@shop.example", ["spring1@example.net"], "spring1@example.net",
                       service="newsletter", campaign="spring")
    other_mid = mp.send("news@shop.example", ["autumn1@example.net"], "autumn1@example.net",
                        service="newsletter", campaign="autumn")
    mp.wait_delivered(other_mid)                                   # only the held campaign stops
    entry = wait_until(lambda: mp.queue_entry("spring1@example.net"), 10, what="held copy in the queue")
    assert entry["queue_name"] == "hold"
    assert not mp.sink.find(held_mid)

    send_control(mp.cfg.kafka, "release", "newsletter", "spring", reason="fixed")
    delivered = mp.wait_delivered(held_mid, timeout=20)            # auto-release: postsuper -H
    assert delivered["rcpt_tos"] == ["spring1@example.net"]
    assert mp.queue_entry("spring1@example.net") is None
    assert "released 1 message(s) from the hold queue" in mp.milter_log.read_text()


def test_held_service_in_tempfail_mode_is_deferred_until_release(mailpath):
    mp = mailpath
    send_control(mp.cfg.kafka, "hold", "digest", None, reason="test hold")
    wait_until(lambda: mp.metrics()["mailaudit_milter_holds_in_force"] >= 1, 15, what="hold seen by the milter")
    with pytest.raises(smtplib.SMTPDataError) as err:
        mp.send("digest@shop.example", ["d1@example.com"], "d1@example.com", service="digest")
    assert err.value.smtp_code == 451 and b"mailaudit hold on service digest" in err.value.smtp_error

    send_control(mp.cfg.kafka, "release", "digest", None)
    wait_until(lambda: mp.metrics()["mailaudit_milter_holds_in_force"] == 0, 15, what="release seen")
    mid = mp.send("digest@shop.example", ["d1@example.com"], "d1@example.com", service="digest")
    mp.wait_delivered(mid)
    # The deferred attempt is not an event (the client retried; the retry is the one that counts).
    events = mp.events([mid])
    assert len(events[mid]) == 1
    assert sum(1 for e in sum(events.values(), []) if e["service"] == "digest") == 1
