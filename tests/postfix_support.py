"""A private Postfix instance and an SMTP sink for the milter's end-to-end tests.

Postfix runs with its own ``config_directory``, queue and data directories in a temp dir, listens on
a free loopback port, calls the milter, and relays everything to an ``aiosmtpd`` sink on another free
loopback port: the machine's own mail system is never touched. Needs root (Postfix's master starts
as root and drops to the ``postfix`` user), as in CI here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mailaudit.stack import free_port, port_open

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{smtp_listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def main_cf(base: Path, milter_port: int, sink_port: int) -> str:
    return f"""\
compatibility_level = 3.6
config_directory = {base / 'etc'}
queue_directory = {base / 'spool'}
data_directory = {base / 'data'}
maillog_file = {base / 'maillog'}
maillog_file_prefixes = {base}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.mailaudit.test
mydomain = mailaudit.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink_port}
default_transport = smtp
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_milters = inet:127.0.0.1:{milter_port}
milter_default_action = accept
milter_protocol = 6
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
biff = no
smtputf8_enable = no
"""


@dataclass
class Postfix:
    base: Path
    milter_port: int
    sink_port: int
    smtp_port: int = field(default_factory=free_port)

    @property
    def config_dir(self) -> Path:
        return self.base / "etc"

    def write_config(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        for parent in self.base.parents:       # Postfix daemons run as `postfix` and must reach the queue
            if not parent.stat().st_mode & 0o001:
                raise RuntimeError(f"{parent} is not searchable by the postfix user (chmod o+x)")
        for d in ("etc", "spool", "data"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        (self.base / "etc" / "main.cf").write_text(main_cf(self.base, self.milter_port, self.sink_port))
        (self.base / "etc" / "master.cf").write_text(MASTER_CF.format(smtp_listen=f"127.0.0.1:{self.smtp_port}"))

    def cmd(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, check=check, input=input, timeout=60)

    def start(self) -> None:
        self.write_config()
        self.cmd(POSTFIX, "-c", str(self.config_dir), "set-permissions", check=False)
        # script(1) gives postfix a terminal, so a fatal configuration error reaches our stderr
        r = self.cmd("script", "-qec", f"{POSTFIX} -c {self.config_dir} start", "/dev/null", check=False)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stdout.strip()} {r.stderr.strip()}\n{self.log()}")
        deadline = time.monotonic() + 20
        while not port_open(self.smtp_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix does not listen on {self.smtp_port}:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """``postfix stop``; if the master is still there after 10 s, SIGKILL it."""
        self.cmd(POSTFIX, "-c", str(self.config_dir), "stop", check=False)
        pid_file = self.base / "spool" / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (ValueError, OSError):
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass

    def queue(self) -> list[dict]:
        """``postqueue -j``: one JSON object per queued message (queue_name: hold, active, deferred...)."""
        r = self.cmd("postqueue", "-c", str(self.config_dir), "-j")
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def held(self) -> list[dict]:
        return [m for m in self.queue() if m.get("queue_name") == "hold"]

    def release_all(self) -> None:
        self.cmd("postsuper", "-c", str(self.config_dir), "-H", "ALL")

    def log(self) -> str:
        p = self.base / "maillog"
        return p.read_text(errors="replace") if p.exists() else ""


class Sink:
    """An aiosmtpd server that keeps every message it receives (envelope + raw content)."""

    def __init__(self, port: int | None = None):
        from aiosmtpd.controller import Controller

        self.port = port or free_port()
        self.messages: list[dict] = []
        self._lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                with sink._lock:
                    sink.messages.append({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                                          "content": envelope.original_content or envelope.content})
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> "Sink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def find(self, needle: str) -> list[dict]:
        with self._lock:
            return [m for m in self.messages if needle.encode() in m["content"]]


# --- in-process stand-ins for the adapter unit tests (the Postfix test above uses the real ones) ---

class RecordingPublisher:
    """Publisher stand-in: keeps events; ``capacity`` simulates a full buffer (Kafka down)."""

    def __init__(self, capacity: int | None = None):
        self.events: list = []
        self.capacity = capacity
        self.dropped = 0

    def publish_event(self, event):
        if self.capacity is not None and len(self.events) >= self.capacity:
            self.dropped += 1
            return None
        self.events.append(event)
        return event.event_id

    def stats(self):
        return {"published": len(self.events), "failed": 0, "dropped": self.dropped, "buffered": 0}

    def close(self, timeout=0):
        pass


class StateGuard:
    """HoldGuard stand-in over the real pure ``HoldState``: holds are applied by the test."""

    ready = True

    def __init__(self):
        from mailaudit.ingest.publisher import HoldState

        self.state = HoldState()

    def hold(self, service, campaign=None, action="hold", at_ms=None):
        from mailaudit.ingest.publisher import ControlCommand

        self.state.apply(ControlCommand(action, service, campaign, "test", at_ms or int(time.time() * 1000), "test"))

    def is_held(self, service, campaign=None):
        return self.state.is_held(service, campaign)

    def holds(self):
        return self.state.holds()

    def close(self, timeout=0):
        pass
