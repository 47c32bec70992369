"""The new user's path, as processes from a fresh directory with no MAILAUDIT_* variable set:
`mailaudit run` prints the leak as it opens, and the verbs it names work as printed
(exposure CSV, --resolve, hold/release) because they find the stack `run` left up; `stack
status|env|down`; and verbs talking to a configured address never fall back to the local stack."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import wait_until
from mailaudit.config import KafkaConfig
from mailaudit.ingest.publisher import HoldGuard
from mailaudit.ingest.simulator import Simulator
from mailaudit.stack import LocalStack, free_port

pytestmark = pytest.mark.servers

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILAUDIT_")}


def mailaudit(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "mailaudit", *args], cwd=cwd, env=_env() | (env or {}),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def new_user(tmp_path_factory):
    """A fresh directory where `mailaudit run` ran once (leak early, no dashboard); its stack stays up
    for the module's tests and is stopped at the end."""
    home = tmp_path_factory.mktemp("newuser")
    try:
        r = mailaudit(home, "run", "--max-seconds", "30", "--history", "20", "--rate", "20", "--incident-at", "2",
                      "--no-dashboard", timeout=240)
        yield home, r
    finally:
        LocalStack(home / ".mailaudit" / "stack").down()


def _opened(stdout: str) -> re.Match:
    m = re.search(rf"^\d\d:\d\d:\d\d (\w+) +OPEN +(\w+) +(\S+)/(\S+) +copies (\d+) +exposed (\d+) +incident ({UUID})$",
                  stdout, re.M)
    assert m, stdout
    return m


def test_run_prints_the_leak_as_it_opens_with_the_next_command_and_a_summary(new_user):
    home, r = new_user
    assert r.returncode == 0, r.stdout + r.stderr
    m = _opened(r.stdout)
    severity, kind, service, campaign, copies, exposed, iid = m.groups()
    assert (severity, kind, service) == ("CRITICAL", "concatenated_to", "newsletter")
    assert campaign.endswith("-leak") and int(copies) >= 1 and int(exposed) >= 100
    assert f"next       mailaudit exposure {iid} --format csv" in r.stdout
    assert f"contain    mailaudit hold newsletter --campaign {campaign}" in r.stdout     # containment = notify
    summary = re.search(r"^summary: (\d+) incident\(s\) \((.*?)\), (\d+) alert\(s\), (\d+) events stored$", r.stdout, re.M)
    assert summary, r.stdout
    assert int(summary.group(1)) >= 1 and "critical" in summary.group(2) and int(summary.group(4)) > 0
    assert re.search(rf"^  CRITICAL concatenated_to  newsletter .* incident {iid}$", r.stdout, re.M)
    assert "Traceback" not in r.stdout + r.stderr


def test_the_printed_exposure_command_works_with_no_environment(new_user):
    home, r = new_user
    iid = _opened(r.stdout).group(7)
    out = mailaudit(home, "exposure", iid, "--format", "csv")
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[0].startswith("mailaudit exposure: using the local stack in ")
    lines = out.stdout.splitlines()
    assert lines[0] == "address_hash,address_masked,domain,copies,seen_by,first_seen,last_seen,side"
    rows = [ln.split(",") for ln in lines[1:]]
    assert len(rows) >= int(_opened(r.stdout).group(6))
    assert all(re.fullmatch(r"[0-9a-f]{32}", row[0]) and "***@" in row[1] and int(row[3]) >= 1 for row in rows)

    # --resolve with the operator's own user list (here: every customer of the simulated population,
    # plus one address that is nobody's): every exposed address is named, with the stack's hash key.
    pop = Simulator().population
    users = home / "users.csv"
    users.write_text("email\n" + "\n".join(pop.user(i)[0] for i in range(pop.n_users)) + "\nnobody@example.net\n")
    res = mailaudit(home, "exposure", iid, "--format", "csv", "--resolve", str(users))
    assert res.returncode == 0, res.stderr
    assert f"resolved {len(rows)} of {len(rows)} exposed addresses" in res.stderr
    resolved = res.stdout.splitlines()
    assert resolved[0].startswith("address,address_hash,")
    known = {pop.user(i)[0] for i in range(pop.n_users)}
    assert len(resolved) == len(lines) and all(ln.split(",")[0] in known for ln in resolved[1:])


def test_hold_then_release_reach_the_control_topic(new_user):
    home, r = new_user
    campaign = _opened(r.stdout).group(4)
    info = LocalStack(home / ".mailaudit" / "stack").info()
    guard = HoldGuard(KafkaConfig(bootstrap=info.kafka_bootstrap)).start()
    try:
        assert guard.wait_ready(20)
        assert not guard.is_held("newsletter", campaign)          # containment is notify: nobody held it yet
        h = mailaudit(home, "hold", "newsletter", "--campaign", campaign, "--reason", "leak")
        assert h.returncode == 0, h.stderr
        assert h.stdout.strip() == f"hold: newsletter/{campaign} on mail.control"
        wait_until(lambda: guard.is_held("newsletter", campaign), 20, what="the hold")
        rel = mailaudit(home, "release", "newsletter", "--campaign", campaign)
        assert rel.returncode == 0 and rel.stdout.strip() == f"release: newsletter/{campaign} on mail.control"
        wait_until(lambda: not guard.is_held("newsletter", campaign), 20, what="the release")
    finally:
        guard.close()


def test_publish_finds_the_stack_it_once_said_was_down(new_user):
    home, _ = new_user
    f = home / "few.jsonl"
    sim = mailaudit(home, "simulate", "--jsonl", str(f), "--duration", "30", "--rate", "2", "--seed", "9")
    assert sim.returncode == 0, sim.stderr
    n = len(f.read_text().splitlines())
    r = mailaudit(home, "publish", str(f))
    assert r.returncode == 0, r.stderr
    assert f"publish: {n} lines to mail.headers: {n} acknowledged, 0 failed" in r.stderr


def test_a_configured_address_is_used_alone_even_with_the_stack_up(new_user):
    home, _ = new_user
    dead = free_port()
    r = mailaudit(home, "hold", "newsletter", env={"MAILAUDIT_KAFKA_BOOTSTRAP": f"127.0.0.1:{dead}"})
    assert r.returncode == 1
    first, last = r.stderr.strip().splitlines()
    assert first.startswith("mailaudit hold: using the configured servers (MAILAUDIT_KAFKA_BOOTSTRAP)")
    assert last.startswith(f"mailaudit hold: cannot reach Kafka at 127.0.0.1:{dead}")


def test_the_dashboard_is_handed_the_stack_it_found(new_user, tmp_path):
    """`mailaudit dashboard` execs Streamlit, whose app loads the config itself: it must get the same
    local stack (servers and key file) in its environment, not the defaults."""
    import signal

    home, _ = new_user
    info = LocalStack(home / ".mailaudit" / "stack").info()
    log = open(tmp_path / "dash.log", "wb")
    p = subprocess.Popen([sys.executable, "-m", "mailaudit", "dashboard", "--port", str(free_port())], cwd=home,
                         env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def streamlit_env():
            try:
                if b"streamlit" not in Path(f"/proc/{p.pid}/cmdline").read_bytes():
                    return None
                raw = Path(f"/proc/{p.pid}/environ").read_bytes()
            except OSError:
                return None
            return dict(kv.split("=", 1) for kv in raw.decode().split("\0") if "=" in kv)
        env = wait_until(streamlit_env, 60, what="the exec of streamlit")
        assert env["MAILAUDIT_KAFKA_BOOTSTRAP"] == info.kafka_bootstrap
        assert env["MAILAUDIT_CLICKHOUSE_URL"] == info.clickhouse_url
        assert env["MAILAUDIT_HASH_KEY_FILE"] == str(home / ".mailaudit" / "stack" / "hash_key")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        log.close()


def test_stack_status_env_and_down(new_user, tmp_path):
    home, _ = new_user
    st = mailaudit(home, "stack", "status")
    info = LocalStack(home / ".mailaudit" / "stack").info()
    assert st.returncode == 0 and f"up 127.0.0.1:{info.kafka_port}" in st.stdout
    env = mailaudit(home, "stack", "env")
    assert env.returncode == 0
    assert env.stdout.splitlines() == [
        f"export MAILAUDIT_KAFKA_BOOTSTRAP=127.0.0.1:{info.kafka_port}",
        f"export MAILAUDIT_CLICKHOUSE_URL=clickhouse://default:@127.0.0.1:{info.clickhouse_port}/mailaudit",
        f"export MAILAUDIT_HASH_KEY_FILE={home / '.mailaudit' / 'stack' / 'hash_key'}"]
    # Another directory (no stack of its own) reaches the same stack through the exports.
    sh = subprocess.run(["sh", "-c", f'eval "$({sys.executable} -m mailaudit stack env)" && cd {tmp_path} && '
                                     f'{sys.executable} -m mailaudit config show --json'],
                        cwd=home, env=_env(), capture_output=True, text=True, timeout=60)
    assert sh.returncode == 0, sh.stderr
    assert f'"bootstrap": "127.0.0.1:{info.kafka_port}"' in sh.stdout
    assert "using the configured servers (MAILAUDIT_KAFKA_BOOTSTRAP, MAILAUDIT_CLICKHOUSE_URL, MAILAUDIT_HASH_KEY_FILE)" \
        in sh.stderr
    down = mailaudit(home, "stack", "down")
    assert down.returncode == 0 and down.stdout.strip() == "stack stopped"
    assert mailaudit(home, "stack", "status").returncode == 3
    gone = mailaudit(home, "stack", "env")
    assert gone.returncode == 3 and gone.stdout == "" and "mailaudit stack up" in gone.stderr
    # Nothing running any more: a verb says so in one line and names the fix.
    r = mailaudit(home, "exposure", "3f1c2a4e-0000-4000-8000-000000000001")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "no local stack running" in r.stderr and "mailaudit stack up" in r.stderr.splitlines()[-1]
