"""`mailaudit backtest`: deterministic bytes, malformed lines survived, speed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

from mailaudit.config import DetectConfig
from mailaudit.detect.backtest import run_backtest
from mailaudit.ingest.wire import Event

T0 = 1_790_000_040_000


def _event(n, t, to, env, **kw):
    return Event(event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"bt-{n}")), sent_at_ms=T0 + t,
                 service=kw.pop("service", "svc"), message_id=kw.pop("mid", f"<bt{n}@acme.example>"),
                 from_="Acme <noreply@acme.example>", to=to, envelope_to=list(env), **kw)


def make_lines(n_benign=3000):
    """Benign one-To traffic with a Cc leak, a concatenated campaign and a lone group copy inside,
    a few events out of order within the lateness window, and malformed lines."""
    lines: list[bytes] = []
    k = 0
    leak_cc = ", ".join(f"cc{i}@x{i}.example" for i in range(30))
    audience = [f"r{i}@y{i % 7}.example" for i in range(120)]
    for i in range(n_benign):
        t = i * 50
        if 1000 <= i < 1120:
            a = audience[i - 1000]
            e = _event(k, t, ", ".join(audience), [a], service="newsletter", campaign="nl-leak")
        elif i % 500 == 7:
            e = _event(k, t, f"Cust <c{i}@z.example>", [f"c{i}@z.example"], cc=leak_cc, service="billing",
                       template="notice")
        elif i == 2000:
            g = ["p@a.example", "q@b.example", "r@c.example"]
            e = _event(k, t, ", ".join(g), [g[0]], service="support", mid="<lonely@acme.example>")
        else:
            u = f"u{i}@d{i % 13}.example"
            jitter = -3000 if i % 97 == 0 else 0         # a little disorder, inside the 60 s window
            e = _event(k, t + jitter, f"<{u}>", [u], service=("billing", "receipts", "auth")[i % 3],
                       template="receipt")
        k += 1
        lines.append(e.encode())
        if i == 1500:
            lines.append(b'{"v": 1, "event_id": "not json"')
        if i == 2500:
            lines.append(json.dumps({"v": 1, "event_id": str(uuid.uuid4()), "sent_at": "2026-11-02T07:30:00",
                                     "service": "s", "message_id": "m", "from": "f", "to": "t",
                                     "envelope_to": []}).encode())
    return lines


def test_backtest_output_is_identical_on_two_runs_and_survives_malformed_lines(tmp_path):
    f = tmp_path / "events.jsonl"
    f.write_bytes(b"\n".join(make_lines()) + b"\n")
    cmd = [sys.executable, "-m", "mailaudit", "backtest", str(f)]
    r1 = subprocess.run(cmd, capture_output=True, timeout=120)
    r2 = subprocess.run(cmd, capture_output=True, timeout=120)
    assert r1.returncode == 0, r1.stderr.decode()
    assert r1.stdout == r2.stdout and r1.stdout
    alerts = [json.loads(line) for line in r1.stdout.decode().splitlines()]
    assert all(a["v"] == 1 for a in alerts)
    opened = {(a["service"], a["kind"]) for a in alerts if a["status"] == "open"}
    assert opened == {("newsletter", "concatenated_to"), ("billing", "visible_disclosure"),
                      ("support", "visible_disclosure")}
    err = r1.stderr.decode().splitlines()
    assert err[0].startswith("line 1502: invalid_json")
    assert err[1].startswith("line 2503: bad_sent_at")
    assert "2 malformed" in err[-1] and "events/s" in err[-1]
    # stdin, and the sequential engine (no sharding by service), give the same bytes
    r3 = subprocess.run([sys.executable, "-m", "mailaudit", "backtest", "-", "--jobs", "1"],
                        input=f.read_bytes(), capture_output=True, timeout=120)
    assert r3.returncode == 0 and r3.stdout == r1.stdout
    assert r3.stderr.decode().splitlines()[:2] == err[:2]


def test_sharded_backtest_equals_sequential_on_many_services():
    from mailaudit.ingest.simulator import Simulator
    sim = Simulator(seed=31, rate=40.0)
    lines = [e.encode() for e in sim.events(600, incident=["cc_leak", "bcc_left", "run_together"],
                                            incident_at_s=300)]
    lines.insert(100, b"garbage")
    # Escaped service names and duplicate keys take the slow routing path, and must still match.
    lines.insert(200, lines[150].replace(b'"service":"', b'"service":"\\u0062', 1))
    lines.insert(300, b'{"x":{"service":"elsewhere"},' + lines[250][1:])
    outs = []
    for jobs in (1, 2, 3):
        out, err = io.StringIO(), io.StringIO()
        res = run_backtest(lines, DetectConfig(), out, err, jobs=jobs)
        outs.append((out.getvalue(), err.getvalue(), res.events, res.malformed, res.alerts))
    assert outs[0][0].count("\n") >= 6
    assert outs[0] == outs[1] == outs[2]


def test_backtest_missing_file_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mailaudit", "backtest", str(tmp_path / "nope.jsonl")],
                       capture_output=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.decode().strip().count("\n") == 0 and "cannot read" in r.stderr.decode()


def test_backtest_exposure_out_writes_hashed_rows_and_needs_the_key(tmp_path):
    import os
    from mailaudit.ingest.privacy import AddressHasher
    cc = [f"cc{i}@x{i}.example" for i in range(12)]
    lines = [_event(i, i * 100, f"<c{i}@z.example>", [f"c{i}@z.example"], cc=", ".join(cc), service="billing",
                    template="notice").encode() for i in range(3)]
    f = tmp_path / "e.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    rows_path = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILAUDIT_")}
    cmd = [sys.executable, "-m", "mailaudit", "backtest", str(f), "--exposure-out", str(rows_path)]
    r = subprocess.run(cmd, capture_output=True, timeout=60, env=env)
    assert r.returncode == 2 and "hash key" in r.stderr.decode() and r.stderr.decode().count("\n") == 1
    key = "exposure-test-key-0123456789abcd"
    r = subprocess.run(cmd, capture_output=True, timeout=60, env=dict(env, MAILAUDIT_HASH_KEY=key))
    assert r.returncode == 0, r.stderr.decode()
    rows = [json.loads(x) for x in rows_path.read_text().splitlines()]
    h = AddressHasher(key.encode())
    assert len(rows) == 36 and {x["address_hash"] for x in rows} == {h.hash(a) for a in cc}
    assert all(x["seen_by"] == 1 for x in rows)
    raw = rows_path.read_text()
    assert not any(a in raw for a in cc)


class _Broken:
    def update(self, ts, value):
        raise ValueError("detector exploded")


def test_a_failing_worker_is_reported_not_hung():
    import pytest
    lines = make_lines(6000)
    with pytest.raises(RuntimeError, match="detector exploded"):
        run_backtest(lines, DetectConfig(), io.StringIO(), io.StringIO(), jobs=2, spike_factory=_Broken)


def test_bad_service_override_is_one_line_exit_2(tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_bytes(b"\n".join(make_lines(10)) + b"\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[detect.services.billing.disclosure]\nstrangers_crit = 5\n")
    r = subprocess.run([sys.executable, "-m", "mailaudit", "backtest", str(f), "--config", str(cfg)],
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode().count("\n") == 1 and "strangers_crit" in r.stderr.decode()
