"""The schema on a ClickHouse cluster (ingest/cluster.py, `mailaudit migrate --cluster`).

On 18.16: ZooKeeper (Debian's package) + two clickhouse-server replicas of one shard, started here on
loopback. Ingest runs through the Distributed table while one replica is down; when it comes back both
replicas converge, with nothing lost and nothing duplicated. The detector's checkpoints round-trip
through the Distributed table (FINAL). Modern servers: every cluster statement parses on chdb
(EXPLAIN AST); they cannot run there (no ZooKeeper/Keeper in-process).
"""

from __future__ import annotations

import pytest

from cluster_support import ZkCluster, zookeeper_available
from helpers import ConsumerThread, cli, wait_until, write_config
from mailaudit.config import ClickHouseConfig
from mailaudit.detect.checkpoints import Checkpoint, CheckpointStore
from mailaudit.ingest.clickhouse import Capabilities, Database
from mailaudit.ingest.cluster import SHARDING, cluster_ddl
from mailaudit.ingest.kafka_io import make_producer
from mailaudit.ingest.schema import MIGRATIONS, TABLES
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.topics import create_topics


@pytest.fixture(scope="module")
def zk_cluster(tmp_path_factory):
    """ZooKeeper + two 18.16 replicas of one shard, shared by this module's server tests (each its own
    database)."""
    why = zookeeper_available()
    assert why is None, why                     # scripts/setup.sh installs it: a missing one is a failure
    cluster = ZkCluster(tmp_path_factory.mktemp("cluster")).up()
    try:
        yield cluster
    finally:
        cluster.down()


def test_cluster_ddl_is_derived_from_the_single_node_schema():
    stmts = cluster_ddl(Capabilities((18, 16, 1)), "prod")
    assert all("ON CLUSTER prod" in s for s in stmts if not s.lstrip().startswith("INSERT"))
    for t in TABLES:
        local = [s for s in stmts if f"{{db}}.{t}_local ON CLUSTER" in s and "CREATE TABLE" in s]
        dist = [s for s in stmts if f"{{db}}.{t} ON CLUSTER prod AS {{db}}.{t}_local" in s]
        assert len(local) == 1 and "ENGINE = Replicated" in local[0], t
        assert f"/clickhouse/tables/{{shard}}/{{db}}/{t}_local" in local[0] and "'{replica}'" in local[0]
        assert len(dist) == 1 and f"Distributed(prod, {{db}}, {t}_local, {SHARDING.get(t, 'rand()')})" in dist[0]
    # Events are sharded by event_id: a redelivered event lands on the shard that deduplicates it.
    assert SHARDING["events"] == "cityHash64(toString(event_id))"
    # Views read the local table of their node and write the local target.
    for s in stmts:
        if "MATERIALIZED VIEW" in s:
            assert "_local AS" in s and "FROM {db}.events_local" in s
    # The version column of the checkpoints stays the ReplacingMergeTree version.
    assert any("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{db}/detect_checkpoints_local', "
               "'{replica}', version)" in s for s in stmts)


def test_modern_cluster_ddl_parses_on_chdb():
    from chdb_support import chdb_database

    db = chdb_database()
    assert db.capabilities.modern
    stmts = cluster_ddl(db.capabilities, "prod")
    modern = "".join(stmts)
    assert "LowCardinality" in modern and "CODEC(" in modern
    for s in stmts:
        ast = db.execute("EXPLAIN AST " + s)
        assert ast and ("CreateQuery" in ast[0][0] or "InsertQuery" in ast[0][0]), (s[:80], ast[:2])


@pytest.mark.servers
def test_replica_down_during_ingest_converges_nothing_lost_or_duplicated(make_cfg, zk_cluster, tmp_path):
    cluster = zk_cluster
    if True:
        cfg = make_cfg()
        database = Database(ClickHouseConfig(url=cfg.clickhouse.url)).name
        cfg.clickhouse.url = cluster.url(0, database)
        path = write_config(cfg, tmp_path / "mailaudit.toml")
        p = cli(["migrate", "--cluster", "mailaudit"], path)
        assert p.wait(120) == 0
        db = [Database(ClickHouseConfig(url=cluster.url(i, database))) for i in range(2)]
        for d in db:
            tables = dict(d.execute("SELECT name, engine FROM system.tables WHERE database = %(d)s", {"d": database}))
            assert tables["events"] == "Distributed" and tables["events_local"] == "ReplicatedReplacingMergeTree"
        assert sorted(r[0] for r in db[1].execute("SELECT version FROM {db}.schema_migrations FINAL")) == \
            [m.version for m in MIGRATIONS]

        create_topics(cfg.kafka)
        events = list(Simulator(seed=8, rate=20.0).events(120))
        ids = {e.event_id for e in events}
        cluster.stop_node(1)                                           # one replica down
        producer = make_producer(cfg.kafka)
        for e in events + events[:50]:                                 # 50 redelivered
            producer.send(cfg.kafka.topic_events, key=e.service.encode(), value=e.encode())
        producer.flush(60)
        producer.close()
        with ConsumerThread(cfg):
            wait_until(lambda: db[0].execute("SELECT uniqExact(event_id) FROM {db}.events")[0][0] == len(ids), 90,
                       what="every event through the Distributed table with one replica down")
        cluster.start_node(1)                                          # back: it fetches what it missed
        db[1].disconnect()

        def local(d):
            return d.execute("SELECT count(), uniqExact(event_id) FROM {db}.events_local FINAL")[0]

        wait_until(lambda: local(db[1]) == (len(ids), len(ids)), 90, what="the returning replica to converge")
        assert local(db[0]) == (len(ids), len(ids))
        for d in db:
            assert {r[0] for r in d.execute("SELECT toString(event_id) FROM {db}.events_local")} == ids
            assert d.execute("SELECT count() FROM {db}.events FINAL")[0][0] == len(ids)

        # The dashboard reads through the Distributed tables, on either node.
        from mailaudit.dashboard.queries import known_services, traffic

        t0 = min(e.sent_at_ms for e in events) // 1000
        for d in db:
            assert int(traffic(d, t0 - 60, t0 + 3600, 60)["messages"].sum()) == len(ids)
            assert known_services(d, t0 - 60) == sorted({e.service for e in events})

        # The detector's checkpoints through the Distributed table: the furthest wins (FINAL).
        store = CheckpointStore(db[0], "g", None)
        for pos in (10, 30, 20):
            _, shared = store.save([Checkpoint("t", 2, pos, {"format": "x", "n": pos}, [{"type": "alert", "p": ["t", 2]}])])
            assert shared
        store1 = CheckpointStore(db[1], "g", None)
        cp = wait_until(lambda: (c := store1.load_shared("t", 2)) is not None and c.position == 30 and c, 30,
                        what="the checkpoint on the other replica")
        assert cp.state == {"format": "x", "n": 30}


@pytest.mark.servers
def test_forget_and_retention_on_the_cluster_reach_every_replica(make_cfg, zk_cluster, tmp_path):
    """clickhouse.cluster set: `forget` mutates T_local ON CLUSTER (no trace on either replica's own
    tables), `retention run` drops the expired partitions on both replicas."""
    import datetime as dt
    import json
    import subprocess

    from helpers import make_event
    from test_erasure import TARGET, _insert_events, _ring, populate
    from mailaudit.ingest.erasure import find_traces
    from mailaudit.ingest.schema import backfill_address_index

    cfg = make_cfg()
    database = Database(ClickHouseConfig(url=cfg.clickhouse.url)).name
    cfg.clickhouse.url = zk_cluster.url(0, database)
    cfg.clickhouse.cluster = zk_cluster.cluster
    ring, privacy = _ring()
    cfg.privacy = privacy
    path = write_config(cfg, tmp_path / "mailaudit.toml")
    assert cli(["migrate", "--skip-kafka"], path).wait(120) == 0          # the cluster comes from the config
    db = [Database(ClickHouseConfig(url=zk_cluster.url(i, database))) for i in range(2)]
    assert dict(db[1].execute("SELECT name, engine FROM system.tables WHERE database = %(d)s",
                              {"d": database}))["events"] == "Distributed"

    populate(db[0], ring, privacy)                  # through the Distributed tables of node 0
    now_ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    _insert_events(db[0], privacy, ring.hashers[0], [make_event(100, sent_at_ms=now_ms - 30 * 86_400_000),
                                                     make_event(101, sent_at_ms=now_ms - 3_600_000)])

    def local_events(d):
        return d.execute("SELECT count() FROM {db}.events_local")[0][0]

    for d in db:
        wait_until(lambda d=d: local_events(d) == 8, 60, what="the events on both replicas")
    backfill_address_index(db[0])                   # the search index (its rows are deleted by forget)
    hashes = ring.all_hashes(TARGET)
    for d in db:                                    # the person is on both replicas before
        wait_until(lambda d=d: "events_by_address_local.address_hash" in
                   find_traces(d, hashes, [TARGET], masks=False), 60, what="the index on both replicas")
        before = find_traces(d, hashes, [TARGET], masks=False)
        assert {"events_local.to_hashes", "events_local.subject", "exposures_local.exposed_hashes"} <= set(before), before
        assert not any(k.split(".")[0] in ("events", "exposures", "errors") for k in before)   # local tables only

    p = cli(["forget", "--json", TARGET], path, stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=180)
    assert p.returncode == 0, out
    res = json.loads(out)
    assert res["verified"] and res["rows"]["events"] == 5 and res["rows"]["exposures"] == 1, res
    for d in db:                                    # each replica's own tables, read directly, right away
        assert find_traces(d, hashes, [TARGET], masks=False) == {}
        assert local_events(d) == 8                 # anonymised, not deleted: counts stay
        assert d.execute("SELECT count() FROM {db}.audit_log_local WHERE action = 'forget'")[0][0] == 1
        assert d.execute("SELECT count() FROM {db}.events_by_address_local")[0][0] > 0      # the others stay

    # rotate-key reads through Distributed (rows per key id) and writes only audit_log: unchanged.
    p = cli(["rotate-key", "status", "--json"], path, stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    usage = json.loads(out)["rows"]
    assert usage["k2"]["events"]["rows"] == 7 and usage["k1"]["events"]["rows"] == 1, usage

    def partitions(d):
        return {r[0] for r in d.execute("SELECT DISTINCT partition_id FROM system.parts WHERE database = %(d)s "
                                        "AND table = 'events_local' AND active", {"d": database})}

    old_day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)).strftime("%Y%m%d")
    assert all(old_day in partitions(d) for d in db)
    cfg.retention.events_days = 10
    write_config(cfg, path)
    p = cli(["retention", "run", "--table", "events", "--json"], path, stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=180)
    assert p.returncode == 0, out
    (r,) = json.loads(out)
    assert old_day in r["dropped_partitions"], r
    for d in db:
        left = partitions(d)
        assert not any(pid <= old_day for pid in left), left           # gone from both replicas
        assert d.execute("SELECT count() FROM {db}.events_local WHERE sent_at >= now() - 86400")[0][0] == 1
        assert d.execute("SELECT count() FROM {db}.events_local WHERE sent_at < now() - 10 * 86400")[0][0] == 0
