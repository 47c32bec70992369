"""Hash-key rotation end to end on the 18.16 server: new key → new rows carry it, forget and lookups
see both keys during the overlap, the old key cannot be retired while rows use it, and can once
retention has removed them. Secrets only ever travel through 0600 files, never through output."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys

import pytest

from helpers import make_event, write_config
from mailaudit.config import ConfigError, PrivacyConfig, load_config
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.erasure import forget
from mailaudit.ingest.keys import KeyRing, parse_old_keys
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.retention import run_retention
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.schema import migrate

PERSON = "rita@rotation.example"


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "mailaudit", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=120)


def _ingest(db, cfg, events):
    ring = KeyRing.from_config(cfg.privacy)
    rows = EventRows(cfg.privacy, ring.current)          # exactly what the consumer builds
    for e in events:
        rows.add(parse_event(e))
    db.insert("events", rows.columns())


def test_key_ring_parsing_and_guards():
    p = PrivacyConfig(hash_key="new", hash_key_id="k2", old_hash_keys="k1:old, k0:older")
    ring = KeyRing.from_config(p)
    assert ring.ids == ["k2", "k1", "k0"] and ring.old_ids == ["k1", "k0"]
    hs = ring.hashes("A@X.com")
    assert [k for k, _ in hs] == ["k2", "k1", "k0"] and len({h for _, h in hs}) == 3
    assert hs[0][1] == ring.current.hash("a@x.com")
    assert "old" not in repr(ring) and "new" not in repr(ring)
    for bad in ("k1", "k1:", ":x", "k 1:x"):
        with pytest.raises(ConfigError):
            parse_old_keys(bad)
    with pytest.raises(ConfigError):
        KeyRing.from_config(PrivacyConfig(hash_key="s", hash_key_id="k1", old_hash_keys="k1:t"))
    with pytest.raises(ConfigError):
        KeyRing.from_config(PrivacyConfig(hash_key="s", hash_key_id="k2", old_hash_keys="k1:s"))
    with pytest.raises(ConfigError) as e:
        parse_old_keys("k1:topsecret,broken")
    assert "topsecret" not in str(e.value)


@pytest.mark.servers
def test_rotation_procedure_end_to_end(make_cfg, tmp_path):
    cfg = make_cfg()
    cfg.privacy.hash_key_id = "k1"
    db = Database(cfg.clickhouse)
    migrate(db)
    old_secret = cfg.privacy.hash_key
    path = write_config(cfg, tmp_path / "c.toml")
    base = {"MAILAUDIT_CONFIG": str(path)}
    # Before the rotation: an old event (2020) and a recent one, both with k1.
    _ingest(db, cfg, [make_event(1, to=PERSON, envelope=[PERSON], sent_at_ms=1_577_880_000_000),
                      make_event(2, to=PERSON, envelope=[PERSON], sent_at_ms=int(dt.datetime.now().timestamp() * 1000))])

    keys = tmp_path / "keys"
    out = _cli(["rotate-key", "new", "--dir", str(keys), "--actor", "ops"], base)
    assert out.returncode == 0, out.stderr
    key_file, old_file = keys / "hash_key.k2", keys / "old_hash_keys"
    for f in (key_file, old_file):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert old_file.read_text().strip() == f"k1:{old_secret}"
    new_secret = key_file.read_text().strip()
    assert old_secret not in out.stdout + out.stderr and new_secret not in out.stdout + out.stderr
    assert f"MAILAUDIT_HASH_KEY_FILE={key_file}" in out.stdout

    # The processes restart with the printed settings (secrets from files, TOML values overridden).
    env2 = {**base, "MAILAUDIT_HASH_KEY_FILE": str(key_file), "MAILAUDIT_HASH_KEY_ID": "k2",
            "MAILAUDIT_OLD_HASH_KEYS_FILE": str(old_file)}
    cfg2 = load_config(env=env2)
    assert KeyRing.from_config(cfg2.privacy).ids == ["k2", "k1"]
    _ingest(db, cfg2, [make_event(3, to=PERSON, envelope=[PERSON])])
    by_key = dict(db.execute("SELECT key_id, count() FROM {db}.events GROUP BY key_id"))
    assert by_key == {"k1": 2, "k2": 1}
    # An address lookup during the overlap must try both keys: the current key alone misses the old rows.
    ring2 = KeyRing.from_config(cfg2.privacy)
    only_current = db.execute("SELECT count() FROM {db}.events WHERE has(to_hashes, %(h)s)",
                              {"h": ring2.current.hash(PERSON)})[0][0]
    every_key = db.execute("SELECT count() FROM {db}.events WHERE hasAny(to_hashes, %(h)s)",
                           {"h": ring2.all_hashes(PERSON)})[0][0]
    assert (only_current, every_key) == (1, 3)

    status = _cli(["rotate-key", "status", "--json"], env2)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["current"] == "k2" and doc["old"] == ["k1"] and doc["rows"]["k1"]["events"]["rows"] == 2
    assert old_secret not in status.stdout and new_secret not in status.stdout

    refused = _cli(["rotate-key", "retire", "k1", "--dir", str(keys)], env2)
    assert refused.returncode == 1 and "not retiring k1" in refused.stdout
    assert old_file.read_text().strip() == f"k1:{old_secret}"
    assert _cli(["rotate-key", "retire", "k2", "--dir", str(keys)], env2).returncode == 2   # the current key

    # Retention removes the old 2020 row; forget takes the recent k1 row (the overlap): then k1 is unused.
    run_retention(db, cfg2.retention)
    res = forget(db, ring2, [PERSON], mode="delete")
    assert res.rows["events"] == 2 and res.verified
    ok = _cli(["rotate-key", "retire", "k1", "--dir", str(keys), "--actor", "ops"], env2)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert old_file.read_text().strip() == ""
    assert KeyRing.from_config(load_config(env=env2).privacy).ids == ["k2"]
    steps = [json.loads(d)["step"] for (d,) in db.execute(
        "SELECT detail FROM {db}.audit_log WHERE action = 'rotate-key' ORDER BY at, detail")]
    assert sorted(steps) == ["new", "retire"]
    for (d,) in db.execute("SELECT detail FROM {db}.audit_log"):
        assert old_secret not in d and new_secret not in d
    db.disconnect()
