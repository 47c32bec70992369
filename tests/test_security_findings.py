"""Issue 14: regression tests of the smaller findings (10, 8, low: config show, control reasons)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mailaudit.commands.config_cmd import redact_webhook_url
from mailaudit.config import ConfigError, PrivacyConfig
from mailaudit.ingest.erasure import clean_free_text, erase_from_text
from mailaudit.ingest.keys import KeyRing, parse_old_keys
from mailaudit.ingest.publisher import control_record, parse_control

SECRET = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"


@pytest.mark.parametrize("value", [
    SECRET,                          # the id forgotten
    f"k1={SECRET}:x",                # a typo before the ':'
    f"{SECRET}:{SECRET}",            # the secret where the id belongs
    f"k1:{SECRET},{SECRET}",         # second entry without id
    f"k 1:{SECRET}",
])
def test_malformed_old_hash_keys_never_echo_the_secret(value):
    with pytest.raises(ConfigError) as e:
        parse_old_keys(value)
    assert SECRET not in str(e.value) and "entry" in str(e.value)
    with pytest.raises(ConfigError) as e:
        KeyRing.from_config(PrivacyConfig(hash_key="current-key", old_hash_keys=value))
    assert SECRET not in str(e.value)


def test_search_page_error_does_not_echo_the_secret():
    from mailaudit.dashboard import lookup
    with pytest.raises(Exception) as e:
        lookup.address_hashes(PrivacyConfig(hash_key="k", old_hash_keys=f"k1={SECRET}:x"), "a@b.example")
    assert SECRET not in str(e.value)


def test_config_show_hides_the_webhook_url(tmp_path):
    assert redact_webhook_url("https://hooks.slack.com/services/T000/B000/XXXXSECRET") == "https://hooks.slack.com/***"
    env = {"MAILAUDIT_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
           "MAILAUDIT_HASH_KEY": SECRET, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "mailaudit", "config", "show", "--json"], env=env,
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "XXXXSECRET" not in out.stdout and SECRET not in out.stdout
    assert json.loads(out.stdout)["webhook"]["url"] == "https://hooks.slack.com/***"


def test_forget_reason_loses_the_erased_address_and_masks_others():
    text = erase_from_text("DSR-42: erase Jane.Canary@Clinic.example\nalso bob.quux@x.org", ["jane.canary@clinic.example"])
    assert text == "DSR-42: erase [erased] also b***@x.org"
    assert clean_free_text("a\r\nBcc: x@y.org " + "z" * 900).startswith("a Bcc: ***@y.org")
    assert len(clean_free_text("z" * 900)) == 500


def test_control_reason_is_redacted_and_one_line():
    _, value = control_record("hold", "news", "c1", "jane.canary@clinic.example wrote\r\n550 fake reply")
    cmd = parse_control(value)
    assert cmd.reason == "j***@clinic.example wrote 550 fake reply"
    assert "\r" not in cmd.reason and "\n" not in cmd.reason


def test_alerts_topic_has_a_retention():
    from mailaudit.config import KafkaConfig
    from mailaudit.ingest.topics import ALERTS_RETENTION_MS, topic_specs
    k = KafkaConfig()
    _, configs = topic_specs(k)
    assert configs[k.topic_alerts]["retention.ms"] == str(ALERTS_RETENTION_MS) and ALERTS_RETENTION_MS <= 90 * 86400_000
    assert int(configs[k.topic_dlq]["retention.ms"]) == k.dlq_retention_ms


def test_outbox_files_are_owner_only_whatever_the_umask(tmp_path):
    import os
    import stat

    from mailaudit.detect.outbox import Outbox
    old = os.umask(0o022)
    try:
        box = Outbox(tmp_path / "detect" / "outbox", ["clickhouse"], segment_bytes=100)
        box.append([{"hash": "ab" * 16, "masked": "j***@x.com", "n": i} for i in range(5)])
        box.close()
    finally:
        os.umask(old)
    d = tmp_path / "detect" / "outbox"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = list(d.glob("*.jsonl"))
    assert len(files) >= 2 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


def test_slack_text_escapes_names():
    from mailaudit.detect.sinks import slack_text
    a = {"severity": "critical", "kind": "visible_disclosure", "status": "open", "service": "news<!here>",
         "campaign": "<!channel> <https://evil.example|click> & co", "summary": "x <@U123>", "copies": 1,
         "exposed": 2, "incident_id": "i"}
    text = slack_text(a)
    assert "<" not in text and ">" not in text and "&lt;!channel&gt;" in text and "&amp; co" in text


def test_search_queries_carrying_hashes_are_not_query_logged():
    """On 18.16 parameters are inlined into the SQL text: the hashes must not reach system.query_log."""
    import pandas as pd

    from mailaudit.dashboard import queries

    class Recorder:
        name = "db"
        _has_address_index = True

        def __init__(self):
            self.sql = []

        def execute(self, sql, params=None):
            self.sql.append(sql)
            return []

    for index in (True, False):
        db = Recorder()
        db._has_address_index = index
        f = queries.SearchFilters(since_s=0, until_s=10, address_hashes=("ab" * 16,), campaign=None if index else "c")
        queries.search_ids(db, f)
        queries.search_rows(db, pd.DataFrame({"event_id": ["9b1c1f7e-0000-4000-8000-000000000001"],
                                              "sent_ms": [1000], "service": ["s"]}), f.address_hashes)
        searches = [s for s in db.sql if "%(h_" in s or "h_tuple" in s or "address_hash" in s]
        assert searches and all("log_queries = 0" in s for s in searches), db.sql


def test_short_hash_keys_are_refused():
    from mailaudit.config import Config, ConfigError as CE
    cfg = Config()
    for short in ("k", "secret", "x" * 31):
        cfg.privacy.hash_key = short
        with pytest.raises(CE, match="at least 32"):
            cfg.require_hash_key()
    cfg.privacy.hash_key = "a" * 32
    assert cfg.require_hash_key() == b"a" * 32
