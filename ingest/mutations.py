"""Where ``ALTER ... UPDATE/DELETE`` and partition drops go, single node or cluster, and waiting for them.

On a cluster (``clickhouse.cluster``, the schema made by ``mailaudit migrate --cluster``, see
``ingest/cluster.py``) the plain table names are ``Distributed`` tables, which take no mutation: the
mutation goes to ``T_local ON CLUSTER NAME`` (every shard; ZooKeeper hands it to each replica), while
reads keep using the plain names (every shard, through Distributed). On a single node both are ``T``.

Waiting: 18.16 has no ``mutations_sync``. This node's ``system.mutations`` says when its replica is done;
the other replicas of the shard are followed in ZooKeeper (``system.zookeeper``): a replica is done
when it has pulled the mutation (``mutation_pointer``), read the whole replication log (``log_pointer``)
and its queue is empty. Other shards are checked by the caller's read-back through Distributed.
"""

from __future__ import annotations

import time

from mailaudit.ingest.clickhouse import Database, ident

LOCAL = "_local"


def mutation_target(table: str, cluster: str | None) -> str:
    """``{db}.T`` or ``{db}.T_local ON CLUSTER NAME``: the table clause of an ALTER/DELETE."""
    if not cluster:
        return f"{{db}}.{ident(table)}"
    return f"{{db}}.{ident(table + LOCAL)} ON CLUSTER {ident(cluster)}"


def storage_table(table: str, cluster: str | None) -> str:
    """The table that holds the parts (``system.parts``/``system.mutations``/``SHOW CREATE``)."""
    return ident(table + LOCAL) if cluster else ident(table)


def cluster_nodes(db: Database, cluster: str) -> int:
    n = db.execute("SELECT count() FROM system.clusters WHERE cluster = %(c)s", {"c": cluster})[0][0]
    if not n:
        raise ValueError(f"clickhouse.cluster = {cluster!r}: no such cluster in this server's remote_servers")
    return int(n)


def _zk_children(db: Database, path: str) -> dict[str, str]:
    return dict(db.execute("SELECT name, value FROM system.zookeeper WHERE path = %(p)s", {"p": path}))


def _replicas_done(db: Database, table: str) -> bool:
    rows = db.execute("SELECT zookeeper_path FROM system.replicas WHERE database = %(d)s AND table = %(t)s",
                      {"d": db.name, "t": table})
    if not rows:
        return True                                 # not replicated: this node's system.mutations is all
    zk = rows[0][0]
    mutations = sorted(_zk_children(db, zk + "/mutations"))
    log = sorted(_zk_children(db, zk + "/log"))
    last_log = int(log[-1].split("-")[-1]) if log else -1
    for replica in _zk_children(db, zk + "/replicas"):
        r = _zk_children(db, f"{zk}/replicas/{replica}")
        if mutations and r.get("mutation_pointer", "") < mutations[-1]:
            return False
        if int(r.get("log_pointer") or 0) <= last_log:
            return False
        if db.execute("SELECT count() FROM system.zookeeper WHERE path = %(p)s",
                      {"p": f"{zk}/replicas/{replica}/queue"})[0][0]:
            return False
    return True


def wait_mutations(db: Database, table: str, cluster: str | None = None, timeout_s: float = 300.0) -> None:
    """Block until ``table``'s mutations are done here (and, on a cluster, on every replica of the shard)."""
    t = storage_table(table, cluster)
    deadline = time.monotonic() + timeout_s
    while True:
        left = db.execute("SELECT count() FROM system.mutations WHERE database = %(d)s AND table = %(t)s "
                          "AND is_done = 0", {"d": db.name, "t": t})[0][0]
        if not left and (not cluster or _replicas_done(db, t)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{t}: mutation still running after {timeout_s:.0f}s "
                               f"(see system.mutations{' on every replica' if cluster else ''})")
        time.sleep(0.1)


def wait_replicated(db: Database, table: str, cluster: str, timeout_s: float = 60.0) -> None:
    """Block until every node of the cluster holds a part of ``table`` (a small table just written
    once through one node, replicated under one cluster-wide ZooKeeper path)."""
    nodes = cluster_nodes(db, cluster)
    zk = db.execute("SELECT zookeeper_path FROM system.replicas WHERE database = %(d)s AND table = %(t)s",
                    {"d": db.name, "t": table})[0][0]
    deadline = time.monotonic() + timeout_s
    while True:
        replicas = _zk_children(db, zk + "/replicas")
        if len(replicas) >= nodes and all(
                db.execute("SELECT count() FROM system.zookeeper WHERE path = %(p)s",
                           {"p": f"{zk}/replicas/{r}/parts"})[0][0] for r in replicas):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{table}: not on every replica after {timeout_s:.0f}s")
        time.sleep(0.1)
