"""A ZooKeeper (Debian's package) and two ClickHouse servers as replicas of one shard, on loopback.

Started by the cluster tests only (a Java runtime and ZooKeeper cost ~3 s and ~100 MB); each node can
be stopped and started again to test a replica that was down.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from mailaudit.stack import _CH_CONFIG, _CH_USERS, _spawn, clickhouse_binary, free_port, port_open, stop_process

ZK_JAR = "/usr/share/java/zookeeper.jar"

_CLUSTER_XML = """  <interserver_http_port>{inter}</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <zookeeper><node><host>127.0.0.1</host><port>{zk}</port></node><session_timeout_ms>20000</session_timeout_ms></zookeeper>
  <remote_servers><{cluster}><shard><internal_replication>true</internal_replication>
{replicas}  </shard></{cluster}></remote_servers>
  <macros><shard>01</shard><replica>{replica}</replica></macros>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
"""


def zookeeper_available() -> str | None:
    """Why the cluster cannot start here, or None."""
    if not os.path.exists(ZK_JAR):
        return "ZooKeeper not installed (apt-get install zookeeper)"
    if not shutil.which("java"):
        return "no Java runtime (apt-get install default-jre-headless)"
    return None


class ZkCluster:
    def __init__(self, directory: Path, cluster: str = "mailaudit", nodes: int = 2):
        self.dir = Path(directory)
        self.cluster = cluster
        self.zk_port = free_port()
        self.ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]   # tcp, http, interserver
        self.pids: list[int] = [0] * nodes
        self.zk: subprocess.Popen | None = None

    # -- ZooKeeper ------------------------------------------------------------------------------
    def start_zookeeper(self) -> None:
        zdir = self.dir / "zookeeper"
        (zdir / "data").mkdir(parents=True, exist_ok=True)
        (zdir / "zoo.cfg").write_text(
            f"tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={zdir / 'data'}\nclientPort={self.zk_port}\n"
            "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=ruok,srvr\n"
            # A throw-away test server: no fsync per session/transaction. Under load an fsync'd session
            # creation can outlast 18.16's first connection attempt, after which its DDL worker crashes.
            "forceSync=no\n")
        log = open(zdir / "zookeeper.log", "ab")
        self.zk = subprocess.Popen(
            ["java", "-Xmx256m", "-cp", f"{ZK_JAR}:/etc/zookeeper/conf", "-Dzookeeper.admin.enableServer=false",
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(zdir / "zoo.cfg")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                # `ruok` answers before the server takes sessions; `srvr` says "Mode:" once it does
                # (a ClickHouse 18.16 whose first ZooKeeper handshake is dropped later crashes).
                with socket.create_connection(("127.0.0.1", self.zk_port), 1) as s:
                    s.sendall(b"srvr")
                    if b"Mode:" in s.recv(4096):
                        return
            except OSError:
                pass
            if self.zk.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"ZooKeeper did not start: {(zdir / 'zookeeper.log').read_text()[-2000:]}")

    # -- ClickHouse nodes -----------------------------------------------------------------------
    def start_node(self, i: int, timeout_s: float = 60.0) -> None:
        tcp, http, inter = self.ports[i]
        conf = self.dir / f"ch{i}"
        data = conf / "data"
        for sub in ("tmp", "user_files", "format_schemas"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        logs = conf / "logs"
        logs.mkdir(exist_ok=True)
        replicas = "".join(f"    <replica><host>127.0.0.1</host><port>{p[0]}</port></replica>\n" for p in self.ports)
        xml = _CH_CONFIG.format(log=logs, tcp=tcp, http=http, data=data).replace(
            "</yandex>\n", _CLUSTER_XML.format(inter=inter, zk=self.zk_port, cluster=self.cluster,
                                               replicas=replicas, replica=f"r{i + 1}"))
        (conf / "config.xml").write_text(xml)
        (conf / "users.xml").write_text(_CH_USERS)
        self.pids[i] = _spawn(clickhouse_binary() + [f"--config-file={conf / 'config.xml'}"],
                              logs / "stdout.log", cwd=conf)
        # Ready = it has a ZooKeeper session: 18.16 crashes (null session) on ON CLUSTER DDL sent
        # before its first connection to ZooKeeper is up.
        from clickhouse_driver import Client

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if port_open(tcp):
                try:
                    c = Client(host="127.0.0.1", port=tcp, connect_timeout=2, send_receive_timeout=5)
                    c.execute("SELECT count() FROM system.zookeeper WHERE path = '/'")
                    c.disconnect()
                    return
                except Exception:  # noqa: BLE001 - not ready yet
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"ClickHouse node {i} did not start: {self.log_tail(i)}")

    def stop_node(self, i: int, sig: int = signal.SIGKILL) -> None:
        stop_process(self.pids[i], 20.0, sig)
        self.pids[i] = 0

    def url(self, i: int, database: str) -> str:
        return f"clickhouse://default:@127.0.0.1:{self.ports[i][0]}/{database}"

    def log_tail(self, i: int, n: int = 3000) -> str:
        out = ""
        for f in glob.glob(str(self.dir / f"ch{i}" / "logs" / "*err*")):
            out += Path(f).read_text(errors="replace")[-n:]
        return out

    def up(self) -> "ZkCluster":
        self.start_zookeeper()
        for i in range(len(self.ports)):
            self.start_node(i)
        return self

    def down(self) -> None:
        for i in range(len(self.ports)):
            if self.pids[i]:
                self.stop_node(i, signal.SIGTERM)
        if self.zk is not None and self.zk.poll() is None:
            self.zk.terminate()
            try:
                self.zk.wait(20)
            except subprocess.TimeoutExpired:
                self.zk.kill()
                self.zk.wait(5)
