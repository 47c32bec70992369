"""A tied local stack (benches, the test session) goes when the process that started it goes, even
on SIGKILL; `stack up`'s servers stay on purpose (issue 16: benches killed by a signal had left
servers running and the next figures were taken beside them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from helpers import wait_until
from mailaudit.stack import pid_alive, stop_process


def _start_and_get_pids(code: str) -> tuple[subprocess.Popen, list[int]]:
    """Run ``code`` in a child Python that prints its servers' pids and then sleeps (to be killed)."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in child.stdout.readline().split()]
    assert pids and all(pid_alive(p) for p in pids)
    return child, pids


def _sigkill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_spawned_tied_dies_with_its_parent_and_untied_does_not(tmp_path):
    child, (tied, untied) = _start_and_get_pids(f"""
        import time
        from pathlib import Path
        from mailaudit.stack import _spawn
        d = Path({str(tmp_path)!r})
        a = _spawn(["sleep", "300"], d / "a.log", cwd=d, tied=True)
        b = _spawn(["sleep", "300"], d / "b.log", cwd=d)
        print(a, b, flush=True)
        time.sleep(300)
    """)
    try:
        # setpriv sets the parent-death signal and only then execs the command: kill the parent before
        # that and nothing is set (a server's start-up wait covers this; a bare sleep does not)
        wait_until(lambda: _comm(tied) == "sleep", 10, what="setpriv to exec the tied command")
        _sigkill(child)
        wait_until(lambda: not pid_alive(tied), 10, what="the tied process to go with its parent")
        time.sleep(0.5)
        assert pid_alive(untied)                 # `stack up`'s servers outlive the command
    finally:
        stop_process(tied, 5)
        stop_process(untied, 5)


def test_tied_local_stack_stops_when_its_owner_is_killed(tmp_path):
    child, pids = _start_and_get_pids(f"""
        import time
        from mailaudit.stack import LocalStack
        info = LocalStack({str(tmp_path / "stack")!r}, tied=True).up()
        print(info.clickhouse_pid, info.kafka_pid, flush=True)
        time.sleep(300)
    """)
    try:
        _sigkill(child)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 60,
                   what="ClickHouse and the broker to stop with the process that started them")
    finally:
        for p in pids:
            stop_process(p, 5)
