"""Transport security: Kafka PLAINTEXT/SSL/SASL_PLAINTEXT/SASL_SSL (PLAIN, SCRAM-SHA-256/512, client
certificates) and ClickHouse over TLS with a CA generated here; the whole ingest pipeline over both.

The local broker cannot do SASL or TLS itself (tansu 0.6.0: see kafka_auth_proxy.py and
docs/security.md), so Kafka security is exercised through ``KafkaAuthProxy``, which performs the
broker side of the TLS and SASL handshakes in front of tansu; the clients are mailaudit's own,
built by ``ingest/kafka_io.py`` from ``KafkaConfig.client_kwargs()``. ClickHouse 18.16 serves TLS
itself (``LocalStack(clickhouse_tls=True)``).
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import ssl
import signal
import subprocess
import sys
import time

import pytest
from kafka import TopicPartition

from helpers import ConsumerThread, make_event, wait_until
from kafka_auth_proxy import KafkaAuthProxy, _free_port, server_ssl_context
from mailaudit.config import ClickHouseConfig, ConfigError, KafkaConfig, Secret, load_config
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_admin, make_consumer, make_producer
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.topics import create_topics
from mailaudit.stack import LocalStack, make_tls_material, stop_process, tansu_binary


USERS = {"mailaudit-ingest": "pw-" + secrets.token_hex(8), "mailaudit-mailer": "pw-" + secrets.token_hex(8)}


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls_material(tmp_path_factory.mktemp("tls"), client=True)


@pytest.fixture(scope="module")
def broker_behind(tmp_path_factory):
    """Factory: a fresh tansu whose advertised address is a new KafkaAuthProxy in front of it."""
    made = []

    def factory(users=None, ssl_context=None) -> KafkaAuthProxy:
        upstream, front = _free_port(), _free_port()
        log = open(tmp_path_factory.mktemp("tansu") / "tansu.log", "wb")
        proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{upstream}",
                                 "--advertised-listener-url", f"tcp://localhost:{front}",
                                 "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        proxy = KafkaAuthProxy(upstream, users, ssl_context, port=front)
        proxy.start()
        made.append((proc, proxy, log))
        deadline = time.monotonic() + 10
        import socket
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", upstream)) == 0:
                    break
            time.sleep(0.05)
        return proxy

    yield factory
    for proc, proxy, log in made:
        proxy.stop()
        stop_process(proc.pid, 5, signal.SIGKILL)          # memory storage: nothing to flush
        log.close()


@pytest.fixture(scope="module")
def tls_clickhouse(tmp_path_factory):
    s = LocalStack(tmp_path_factory.mktemp("tlsstack") / "stack", clickhouse_tls=True, tied=True)
    info = s.up()
    yield info
    s.down()


def _read(k: KafkaConfig, topic: str, partitions: int, n: int, timeout_s: float = 10.0) -> list[bytes]:
    """Group-less read of the first ``n`` messages (polling, no idle timeout to sit out)."""
    c = make_consumer(k, None)
    try:
        c.assign([TopicPartition(topic, p) for p in range(partitions)])
        c.seek_to_beginning()
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out.extend(r.value for r in recs)
        return out
    finally:
        c.close()


FAIL_FAST = {"bootstrap_timeout_ms": 1000, "request_timeout_ms": 1000}


def _kcfg(port: int, protocol: str, mech: str | None = None, user: str = "mailaudit-ingest",
          password: str | None = None, **kw) -> KafkaConfig:
    return KafkaConfig(bootstrap=f"localhost:{port}", security_protocol=protocol, sasl_mechanism=mech,
                       sasl_username=user if mech else None,
                       sasl_password=(password or USERS[user]) if mech else None, **kw)


# --- config -----------------------------------------------------------------------------------------

def test_client_kwargs_for_every_protocol():
    plain = KafkaConfig(bootstrap="a:1, b:2").client_kwargs()
    assert plain == {"bootstrap_servers": ["a:1", "b:2"], "security_protocol": "PLAINTEXT"}
    ssl_kw = KafkaConfig(security_protocol="SSL", ssl_cafile="/ca", ssl_certfile="/c", ssl_keyfile="/k",
                         ssl_password="kp", ssl_check_hostname=False).client_kwargs()
    assert ssl_kw["ssl_cafile"] == "/ca" and ssl_kw["ssl_certfile"] == "/c" and ssl_kw["ssl_keyfile"] == "/k"
    assert ssl_kw["ssl_check_hostname"] is False and ssl_kw["ssl_password"] == "kp"
    assert "sasl_mechanism" not in ssl_kw
    for mech in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        kw = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mech.lower(), sasl_username="u",
                         sasl_password="p").client_kwargs()
        assert kw["sasl_mechanism"] == mech and kw["sasl_plain_username"] == "u" and kw["sasl_plain_password"] == "p"
        assert isinstance(kw["sasl_plain_password"], Secret) and repr(kw["sasl_plain_password"]) == "'***'"
        assert "ssl_cafile" not in kw
        kw = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism=mech, sasl_username="u", sasl_password="p",
                         ssl_cafile="/ca").client_kwargs()
        assert kw["ssl_cafile"] == "/ca" and kw["ssl_check_hostname"] is True
    for bad in (dict(security_protocol="TLS"), dict(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p"),
                dict(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI", sasl_username="u", sasl_password="p"),
                dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u")):
        with pytest.raises(ConfigError):
            KafkaConfig(**bad).client_kwargs()


def test_secrets_come_from_env_or_files_and_config_show_redacts_them(tmp_path):
    secret = {"kafka": "kafka-" + secrets.token_hex(8), "ch": "ch-" + secrets.token_hex(8),
              "hash": "hash-" + secrets.token_hex(8), "old": "k0:old-" + secrets.token_hex(8),
              "url": "url-" + secrets.token_hex(8), "keypass": "kp-" + secrets.token_hex(8)}
    (tmp_path / "kafka_pw").write_text(secret["kafka"] + "\n")
    (tmp_path / "ch_pw").write_text(secret["ch"])
    env = {"MAILAUDIT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MAILAUDIT_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "MAILAUDIT_KAFKA_SASL_USERNAME": "mailaudit-ingest",
           "MAILAUDIT_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "kafka_pw"),
           "MAILAUDIT_KAFKA_SSL_PASSWORD": secret["keypass"],
           "MAILAUDIT_CLICKHOUSE_URL": f"clickhouses://mailaudit_ingest:{secret['url']}@db.internal:9440/mailaudit",
           "MAILAUDIT_CLICKHOUSE_PASSWORD_FILE": str(tmp_path / "ch_pw"),
           "MAILAUDIT_HASH_KEY": secret["hash"], "MAILAUDIT_OLD_HASH_KEYS": secret["old"], "PATH": "/usr/bin:/bin"}
    cfg = load_config(env=env)
    assert cfg.kafka.sasl_password == secret["kafka"] and cfg.clickhouse.parts()["password"] == secret["ch"]
    assert cfg.clickhouse.parts()["secure"] is True and cfg.clickhouse.parts()["port"] == 9440
    for fmt in ([], ["--json"]):
        out = subprocess.run([sys.executable, "-m", "mailaudit", "config", "show", *fmt], capture_output=True,
                             text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        for v in secret.values():
            assert v.split(":")[-1] not in out.stdout + out.stderr
        assert "***" in out.stdout and "mailaudit-ingest" in out.stdout


# --- Kafka ------------------------------------------------------------------------------------------

@pytest.mark.servers
@pytest.mark.parametrize("mech", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_reaches_every_client_and_a_wrong_password_is_refused(broker_behind, mech):
    proxy = broker_behind(users=USERS)
    k = _kcfg(proxy.port, "SASL_PLAINTEXT", mech, topic_events="t.sasl")
    create_topics(k)                                                        # admin client
    p = make_producer(k)                                                    # producer
    p.send("t.sasl", key=b"billing", value=b"hello").get(10)
    p.close()
    assert _read(k, "t.sasl", k.partitions, 1) == [b"hello"]              # consumer
    assert proxy.authenticated[(mech, "mailaudit-ingest")] >= 3
    assert proxy.failures == 0
    bad = _kcfg(proxy.port, "SASL_PLAINTEXT", mech, password="not-the-password")
    with pytest.raises(Exception):
        make_admin(bad, **FAIL_FAST).list_topics()
    assert proxy.failures >= 1
    # A client that does not authenticate at all is cut off before it can ask for anything.
    with pytest.raises(Exception):
        make_admin(KafkaConfig(bootstrap=f"localhost:{proxy.port}"), **FAIL_FAST).list_topics()
    assert proxy.refused_unauthenticated >= 1


@pytest.mark.servers
def test_kafka_debug_log_never_shows_the_sasl_password(broker_behind):
    """With the root logger at DEBUG, nothing a Kafka client logs carries the SASL password."""
    proxy = broker_behind(users=USERS)
    k = _kcfg(proxy.port, "SASL_PLAINTEXT", "SCRAM-SHA-256")
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        a = make_admin(k)
        a.list_topics()
        a.close()
        p = make_producer(k)
        p.close()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = buf.getvalue()
    assert "bootstrap" in text                                # the clients' own log lines were captured...
    assert USERS["mailaudit-ingest"] not in text              # ...without the password
    # The kafka logger is held at INFO while mailaudit builds clients (kafka-python's DEBUG lines carry
    # whole records and its configuration), even though the root logger asked for DEBUG.
    assert logging.getLogger("kafka").getEffectiveLevel() >= logging.INFO


@pytest.mark.servers
def test_ssl_with_a_client_certificate(broker_behind, tls):
    proxy = broker_behind(ssl_context=server_ssl_context(tls["cert"], tls["key"], client_ca=tls["ca"]))
    good = KafkaConfig(bootstrap=f"localhost:{proxy.port}", security_protocol="SSL", ssl_cafile=tls["ca"],
                       ssl_certfile=tls["client_cert"], ssl_keyfile=tls["client_key"])
    a = make_admin(good, bootstrap_timeout_ms=5000)
    assert isinstance(a.list_topics(), list)
    a.close()
    no_cert = KafkaConfig(bootstrap=f"localhost:{proxy.port}", security_protocol="SSL", ssl_cafile=tls["ca"])
    unknown_ca = KafkaConfig(bootstrap=f"localhost:{proxy.port}", security_protocol="SSL",
                             ssl_certfile=tls["client_cert"], ssl_keyfile=tls["client_key"])
    plaintext = KafkaConfig(bootstrap=f"localhost:{proxy.port}")
    for bad in (no_cert, unknown_ca, plaintext):
        with pytest.raises(Exception):
            make_admin(bad, **FAIL_FAST).list_topics()


# --- ClickHouse --------------------------------------------------------------------------------------

@pytest.mark.servers
def test_clickhouse_tls_is_verified_against_the_configured_ca(tls_clickhouse, tls):
    good = ClickHouseConfig(url=tls_clickhouse.clickhouse_secure_url, ca_certs=tls_clickhouse.ca_file)
    db = Database(good)
    assert db.execute("SELECT version()")[0][0].startswith("18.16")
    db.disconnect()
    # The default trust store does not know the test CA; another CA is not this server's either.
    for bad in (ClickHouseConfig(url=tls_clickhouse.clickhouse_secure_url),
                ClickHouseConfig(url=tls_clickhouse.clickhouse_secure_url, ca_certs=tls["ca"]),
                ClickHouseConfig(url=f"clickhouses://default:@localhost:{tls_clickhouse.clickhouse_port}/x",
                                 ca_certs=tls_clickhouse.ca_file, connect_timeout_s=2)):
        with pytest.raises(Exception):
            Database(bad).execute("SELECT 1")


@pytest.mark.servers
def test_pipeline_end_to_end_over_sasl_ssl_and_clickhouse_tls(make_cfg, broker_behind, tls, tls_clickhouse):
    """Publisher → (SASL_SSL, SCRAM-SHA-512) → consumer group → DLQ producer → ClickHouse over TLS."""
    proxy = broker_behind(users=USERS, ssl_context=server_ssl_context(tls["cert"], tls["key"]))
    cfg = make_cfg()
    db_name = cfg.clickhouse.parts()["database"]
    cfg.clickhouse = ClickHouseConfig(url=f"clickhouses://default:@localhost:{tls_clickhouse.clickhouse_secure_port}/"
                                          f"{db_name}", ca_certs=tls_clickhouse.ca_file)
    kafka = _kcfg(proxy.port, "SASL_SSL", "SCRAM-SHA-512", ssl_cafile=tls["ca"])
    for name in ("topic_events", "topic_dlq", "topic_alerts", "topic_control", "ingest_group", "detect_group",
                 "session_timeout_ms", "heartbeat_interval_ms"):
        setattr(kafka, name, getattr(cfg.kafka, name))
    cfg.kafka = kafka
    db = Database(cfg.clickhouse)
    migrate(db)
    create_topics(cfg.kafka)
    mailer = _kcfg(proxy.port, "SASL_SSL", "SCRAM-SHA-512", user="mailaudit-mailer", ssl_cafile=tls["ca"])
    p = make_producer(mailer)
    events = [make_event(i) for i in range(20)]
    for e in events:
        p.send(cfg.kafka.topic_events, key=e.service.encode(), value=e.encode())
    p.send(cfg.kafka.topic_events, key=b"billing", value=b"{broken json")
    p.flush(30)
    p.close()
    with ConsumerThread(cfg) as consumer:
        wait_until(lambda: db.execute("SELECT count() FROM {db}.events")[0][0] == 20
                   and db.execute("SELECT count() FROM {db}.errors")[0][0] == 1, timeout=60, what="rows over TLS")
    # The consumer wrote over TLS: its live connection is an SSL socket to the TLS port.
    sock = consumer.db.client.connection.socket
    assert isinstance(sock, ssl.SSLSocket) and sock.getpeername()[1] == tls_clickhouse.clickhouse_secure_port
    consumer.db.disconnect()
    assert _read(cfg.kafka, cfg.kafka.topic_dlq, 1, 1) == [b"{broken json"]
    ids = {str(r[0]) for r in db.execute("SELECT event_id FROM {db}.events")}
    assert ids == {e.event_id for e in events}
    assert proxy.authenticated[("SCRAM-SHA-512", "mailaudit-mailer")] >= 1
    assert proxy.authenticated[("SCRAM-SHA-512", "mailaudit-ingest")] >= 2   # group consumer + DLQ producer
    assert proxy.failures == 0 and proxy.refused_unauthenticated == 0
    # The rows are on the TLS server only: the session's plain server never saw this database.
    plain = Database(make_cfg().clickhouse)
    try:
        assert plain.execute("SELECT count() FROM system.databases WHERE name = %(n)s", {"n": db_name}) == [(0,)]
    finally:
        plain.disconnect()
    assert json.dumps(cfg.redacted()).count(USERS["mailaudit-ingest"]) == 0
    db.disconnect()
