"""Issue 14, findings 1 and 11: the compose deployment exposes no unauthenticated Kafka listener beyond the
host's loopback, and each service reaches ClickHouse as its own least-privilege user."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mailaudit.ingest import grants

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
INIT = DEPLOY / "clickhouse-init"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _env(svc: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (svc.get("environment") or {}).items()}


def test_no_published_port_reaches_beyond_loopback(compose):
    for name, svc in compose["services"].items():
        for port in svc.get("ports") or []:
            spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port['published']}:{port['target']}"
            host = spec.rsplit(":", 2)[0] if spec.count(":") >= 2 else ""
            assert host in ("127.0.0.1", "[::1]"), f"{name} publishes {spec} on every interface"


def test_every_plaintext_kafka_listener_is_loopback_or_internal(compose):
    kafka = compose["services"]["kafka"]
    env = _env(kafka)
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    published = {str(p).rsplit(":", 1)[-1] for p in kafka.get("ports") or []}
    for listener in env["KAFKA_LISTENERS"].split(","):
        name, _, port = listener.partition("://")[0], None, listener.rsplit(":", 1)[1]
        if port in published and protocols[name] in ("PLAINTEXT", "SASL_PLAINTEXT"):
            assert all(str(p).startswith("127.0.0.1:") for p in kafka["ports"] if str(p).endswith(":" + port)), \
                f"listener {listener} is plaintext and published beyond loopback"


def test_each_service_has_its_own_clickhouse_user_and_secret(compose):
    services = compose["services"]
    users, secrets = {}, {}
    for name in ("migrate", "consume", "detect", "dashboard"):
        env = _env(services[name])
        users[name] = env["MAILAUDIT_CLICKHOUSE_URL"].split("//")[1].split("@")[0]
        secret = env["MAILAUDIT_CLICKHOUSE_PASSWORD_FILE"].removeprefix("/run/secrets/")
        assert secret in services[name]["secrets"]
        secrets[name] = secret
        # No service but the ClickHouse container holds another service's password.
        others = {s for s in services[name]["secrets"] if s.startswith("clickhouse_")} - {secret}
        assert not others, f"{name} also gets {others}"
    assert users == {"migrate": "mailaudit_admin", "consume": "mailaudit_ingest", "detect": "mailaudit_detect",
                     "dashboard": "mailaudit_dashboard"}
    assert len(set(secrets.values())) == 4
    role_names = {r.name for r in grants.CH_ROLES}
    assert set(users.values()) <= role_names
    ch_env = _env(services["clickhouse"])
    assert ch_env["CLICKHOUSE_USER"] not in role_names, "the access-managing bootstrap user is no service's user"
    assert any(v.endswith(":/docker-entrypoint-initdb.d:ro") and v.startswith("./clickhouse-init")
               for v in services["clickhouse"]["volumes"])


def test_init_sql_is_the_print_grants_sql():
    assert (INIT / "mailaudit-users.sql.in").read_text() == grants.clickhouse_sql("mailaudit")
    assert not list(INIT.glob("*.sql")), "the image would run a .sql file with placeholders itself"


def test_init_script_sets_each_users_password_hash(tmp_path):
    for role in ("admin", "ingest", "detect", "dashboard"):
        (tmp_path / f"clickhouse_{role}_password").write_text(f"pw-{role}\n")
    env = dict(os.environ, MAILAUDIT_SECRETS_DIR=str(tmp_path), MAILAUDIT_CH_CLIENT="cat")
    out = subprocess.run(["bash", str(INIT / "10-mailaudit-users.sh")], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert grants.PLACEHOLDER not in out
    for role in ("admin", "ingest", "detect", "dashboard"):
        digest = hashlib.sha256(f"pw-{role}".encode()).hexdigest()
        assert f"CREATE USER IF NOT EXISTS mailaudit_{role} IDENTIFIED WITH sha256_hash BY '{digest}'" in out
        assert f"pw-{role}" not in out
    # A missing secret stops the init (no user created without a password).
    (tmp_path / "clickhouse_detect_password").unlink()
    r = subprocess.run(["bash", str(INIT / "10-mailaudit-users.sh")], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "clickhouse_detect_password" in r.stderr and r.stdout == ""


def test_broker_takes_the_largest_event_the_publisher_sends(compose):
    from mailaudit.ingest.publisher import MAX_REQUEST_BYTES
    assert int(_env(compose["services"]["kafka"])["KAFKA_MESSAGE_MAX_BYTES"]) >= MAX_REQUEST_BYTES
