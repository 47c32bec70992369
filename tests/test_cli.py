"""The CLI's own behaviour without servers: which servers a verb picks, and one-line failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mailaudit.alert_feed import FeedSummary, format_alert
from mailaudit.config import Config, load_config, pick_servers
from mailaudit.failures import explain
from mailaudit.stack import free_port


def _dead_stack(state_dir):
    """A stack.json whose servers are gone (pids that do not exist, ports nobody listens on)."""
    d = state_dir / "stack"
    d.mkdir(parents=True)
    (d / "stack.json").write_text(json.dumps({
        "clickhouse_port": free_port(), "clickhouse_http_port": free_port(), "kafka_port": free_port(),
        "clickhouse_pid": 2**22 + 7, "kafka_pid": 2**22 + 9, "state_dir": str(d)}))
    (d / "hash_key").write_text("stack-key")


def test_configured_settings_are_used_alone_never_mixed_with_the_stack(tmp_path):
    _dead_stack(tmp_path)
    for var, value in [("MAILAUDIT_KAFKA_BOOTSTRAP", "kafka.prod:9092"),
                       ("MAILAUDIT_CLICKHOUSE_URL", "clickhouse://u:secret@ch.prod:9000/m"),
                       ("MAILAUDIT_HASH_KEY", "prod-key")]:
        env = {"MAILAUDIT_STATE_DIR": str(tmp_path), var: value}
        cfg = load_config(env=env)
        before = (cfg.kafka.bootstrap, cfg.clickhouse.url, cfg.privacy.hash_key)
        choice = pick_servers(cfg, env=env)
        assert choice.source == "config" and var in choice.line and choice.env == {}
        assert (cfg.kafka.bootstrap, cfg.clickhouse.url, cfg.privacy.hash_key) == before
        assert "secret" not in choice.line


def test_a_stopped_stack_is_not_used_and_the_line_says_how_to_start_one(tmp_path):
    _dead_stack(tmp_path)
    env = {"MAILAUDIT_STATE_DIR": str(tmp_path)}
    cfg = load_config(env=env)
    choice = pick_servers(cfg, env=env)
    assert choice.source == "defaults" and "mailaudit stack up" in choice.line
    assert cfg.privacy.hash_key is None and cfg.kafka.bootstrap == Config().kafka.bootstrap


def test_explain_names_the_server_and_the_fix():
    from clickhouse_driver.errors import NetworkError, ServerException
    from kafka.errors import KafkaTimeoutError

    cfg = Config()
    cfg.clickhouse.url = "clickhouse://default:@10.9.8.7:9123/x"
    line = explain(NetworkError("Code: 210. Connection refused (10.9.8.7:9123)"), cfg)
    assert "ClickHouse at 10.9.8.7:9123" in line and "mailaudit stack up" in line and "MAILAUDIT_CLICKHOUSE_URL" in line
    line = explain(ServerException("Code: 81. DB::Exception: Database x doesn't exist", code=81), cfg)
    assert "mailaudit migrate" in line
    line = explain(KafkaTimeoutError("Unable to bootstrap"), cfg)
    assert "Kafka at 127.0.0.1:9092" in line and "MAILAUDIT_KAFKA_BOOTSTRAP" in line
    assert explain(ZeroDivisionError("x"), cfg) is None
    line = explain(ValueError("detect.containment must be one of off, notify, hold (got 'x')"), cfg)
    assert line.startswith("configuration: detect.containment must be one of") and "MAILAUDIT_" in line
    assert explain(ValueError("something else broke"), cfg) is None


def _cli(args, env, cwd):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MAILAUDIT_")}
    return subprocess.run([sys.executable, "-m", "mailaudit", *args], env=base | env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_unreachable_servers_are_one_line_each_and_debug_shows_the_traceback(tmp_path):
    port = free_port()
    env = {"MAILAUDIT_CLICKHOUSE_URL": f"clickhouse://default:@127.0.0.1:{port}/m",
           "MAILAUDIT_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "MAILAUDIT_HASH_KEY": "k"}
    iid = "3f1c2a4e-0000-4000-8000-000000000001"
    r = _cli(["exposure", iid], env, tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 2, r.stderr
    assert "using the configured servers" in lines[0]
    assert lines[1].startswith(f"mailaudit exposure: cannot reach ClickHouse at 127.0.0.1:{port}")
    assert "mailaudit stack up" in lines[1] and "Traceback" not in r.stderr
    # (Kafka out of reach: tests/test_cli_newuser.py, with the local stack up beside it.)
    r = _cli(["--debug", "exposure", iid], env, tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "NetworkError" in r.stderr


def test_a_bad_setting_is_one_line(tmp_path):
    r = _cli(["exposure", "3f1c2a4e-0000-4000-8000-000000000001"],
             {"MAILAUDIT_CLICKHOUSE_URL": "http://x/y"}, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "mailaudit exposure: clickhouse.url must start with clickhouse:// (got http://)"


def test_stack_env_without_a_stack_says_how_to_start_one(tmp_path):
    r = _cli(["stack", "env"], {}, tmp_path)
    assert r.returncode == 3 and r.stdout == "" and "mailaudit stack up" in r.stderr


ALERT = {"v": 1, "alert_id": "a", "incident_id": "fd9a36a6-149a-5c18-9378-98d41486c199", "status": "open",
         "kind": "concatenated_to", "severity": "critical", "service": "newsletter", "campaign": "nl-1",
         "template": None, "copies": 3, "exposed": 199, "summary": "a copy's To lists 200 addresses",
         "evidence": {"containment": {"action": "recommend_hold", "service": "newsletter", "campaign": "nl-1"}}}


def test_an_opening_alert_reads_as_what_happened_and_what_to_do_next():
    lines = format_alert(ALERT, "http://127.0.0.1:8501", "")
    head = lines[0]
    for part in ("CRITICAL", "OPEN", "concatenated_to", "newsletter/nl-1", "copies 3", "exposed 199",
                 "incident fd9a36a6-149a-5c18-9378-98d41486c199"):
        assert part in head
    text = "\n".join(lines)
    assert "http://127.0.0.1:8501/incidents?incident=fd9a36a6-149a-5c18-9378-98d41486c199" in text
    assert "mailaudit exposure fd9a36a6-149a-5c18-9378-98d41486c199 --format csv" in text
    assert "mailaudit hold newsletter --campaign nl-1" in text
    update = format_alert({**ALERT, "status": "update", "copies": 40, "exposed": 210}, None)
    assert len(update) == 1 and "UPDATE" in update[0] and "copies 40" in update[0]
    s = FeedSummary()
    s.add(ALERT)
    s.add({**ALERT, "status": "update", "copies": 40, "exposed": 210})
    out = s.lines(1234)
    assert out[0] == "summary: 1 incident(s) (1 critical), 2 alert(s), 1234 events stored"
    assert "copies 40" in out[1] and "exposed 210" in out[1]


def _on_a_terminal(args, cwd) -> bytes:
    """Run ``mailaudit ARGS`` with stderr on a pseudo-terminal (120 columns); what the terminal got."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILAUDIT_")}
    p = subprocess.Popen([sys.executable, "-m", "mailaudit", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:                      # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(120) == 0, out[-2000:]
    return out


def test_long_work_shows_progress_on_a_terminal_and_nothing_in_a_pipe(tmp_path):
    events = tmp_path / "e.jsonl"
    sim = ["simulate", "--jsonl", str(events), "--duration", "900", "--rate", "20", "--seed", "4"]
    tty = _on_a_terminal(sim, tmp_path)
    assert b"traffic:" in tty and b"/900 [" in tty and b"%|" in tty          # a bar over event time
    piped = _cli(sim, {}, tmp_path)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "traffic:" not in piped.stderr
    assert piped.stderr.splitlines()[0].startswith("simulate: ")            # no server line: a file needs none
    tty = _on_a_terminal(["backtest", str(events), "--jobs", "1"], tmp_path)
    assert b"backtest:" in tty and b"B/s" in tty                              # a bar over the file's bytes
    piped = _cli(["backtest", str(events), "--jobs", "1"], {}, tmp_path)
    assert piped.returncode == 0 and "\r" not in piped.stderr and piped.stderr.count("\n") == 1


def test_ticker_shows_elapsed_time_on_a_terminal_only():
    import io
    import time

    from mailaudit.progress import ticker

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Terminal(), io.StringIO()
    with ticker("bench x", stream=tty), ticker("bench x", stream=pipe):
        time.sleep(1.3)
    assert "bench x: 00:00" in tty.getvalue() and "bench x: 00:01" in tty.getvalue()
    assert pipe.getvalue() == ""
