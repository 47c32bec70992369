"""`migrate --print-grants`: the 18.16 users.d fragment applied to a real 18.16 server (each role can do
its job and nothing more that 18.16 can forbid), the modern SQL parsed by and applied to the access
control of a modern ClickHouse (chdb), and the Kafka ACL commands."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import textwrap

import pytest

from helpers import make_event
from mailaudit.config import Config, ClickHouseConfig, load_config
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.grants import CH_ROLES, PLACEHOLDER, clickhouse_sql, clickhouse_statements, kafka_acls, users_xml
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.schema import migrate
from mailaudit.stack import LocalStack


DB = "mailaudit_g"
USERS = ("mailaudit_ingest", "mailaudit_detect", "mailaudit_dashboard", "mailaudit_operator", "mailaudit_admin")
PASSWORDS = {u: "pw-" + secrets.token_hex(8) for u in USERS}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An 18.16 server whose users.d holds exactly what --print-grants emits (with real hashes)."""
    stack = LocalStack(tmp_path_factory.mktemp("grants") / "stack", tied=True)
    users_d = stack.dir / "clickhouse" / "users.d"
    users_d.mkdir(parents=True)
    (users_d / "mailaudit.xml").write_text(
        users_xml(DB, {u: hashlib.sha256(p.encode()).hexdigest() for u, p in PASSWORDS.items()}))
    info = stack.up()
    admin = Database(ClickHouseConfig(url=f"clickhouse://default:@127.0.0.1:{info.clickhouse_port}/{DB}"))
    migrate(admin)
    admin.client.execute("CREATE DATABASE IF NOT EXISTS elsewhere")
    admin.client.execute("CREATE TABLE IF NOT EXISTS elsewhere.secrets (x String) ENGINE = Memory")
    yield info
    admin.disconnect()
    stack.down()


def _as(info, user: str, tmp_path) -> Database:
    """Connect the way a deployment would: user in the URL, password from a *_FILE secret."""
    pw = tmp_path / f"{user}.pw"
    pw.write_text(PASSWORDS[user] + "\n")
    cfg = load_config(env={"MAILAUDIT_CLICKHOUSE_URL": f"clickhouse://{user}@127.0.0.1:{info.clickhouse_port}/{DB}",
                           "MAILAUDIT_CLICKHOUSE_PASSWORD_FILE": str(pw)})
    assert PASSWORDS[user] not in json.dumps(cfg.redacted())
    return Database(cfg.clickhouse)


def _refused(db: Database, sql: str, params=None) -> bool:
    try:
        db.execute(sql, params)
    except Exception as e:  # noqa: BLE001 - any server refusal
        return "Code:" in str(e)
    return False


def _event_columns():
    rows = EventRows(Config().privacy, AddressHasher(b"k"))
    rows.add(parse_event(make_event(1)))
    return rows.columns()


@pytest.mark.servers
def test_18_16_users_can_do_their_job_and_no_more(server, tmp_path):
    ingest = _as(server, "mailaudit_ingest", tmp_path)
    assert ingest.insert("events", _event_columns()) == 1
    assert _refused(ingest, "CREATE TABLE {db}.x (a UInt8) ENGINE = Memory")
    assert _refused(ingest, "DROP TABLE {db}.events")
    assert _refused(ingest, "ALTER TABLE {db}.events DELETE WHERE 1")
    assert _refused(ingest, "SELECT * FROM elsewhere.secrets")

    dash = _as(server, "mailaudit_dashboard", tmp_path)
    assert dash.execute("SELECT count() FROM {db}.events")[0][0] == 1
    with pytest.raises(Exception):
        dash.insert("audit_log", {"at": [__import__("datetime").datetime(2026, 1, 1)], "actor": ["x"],
                                  "action": ["acknowledge"], "target": ["i"], "detail": ["{}"]})
    assert _refused(dash, "ALTER TABLE {db}.events DELETE WHERE 1")
    assert _refused(dash, "SELECT * FROM elsewhere.secrets")

    op = _as(server, "mailaudit_operator", tmp_path)
    assert op.insert("audit_log", {"at": [__import__("datetime").datetime(2026, 1, 1)], "actor": ["dashboard:operator"],
                                   "action": ["acknowledge"], "target": ["i"], "detail": ["{}"]}) == 1
    assert _refused(op, "TRUNCATE TABLE {db}.audit_log")

    admin = _as(server, "mailaudit_admin", tmp_path)
    admin.execute("ALTER TABLE {db}.audit_log DELETE WHERE actor = 'nobody'")     # forget/retention need this
    for db in (ingest, dash, op, admin):
        db.disconnect()

    wrong = Database(ClickHouseConfig(url=f"clickhouse://mailaudit_ingest:nope@127.0.0.1:{server.clickhouse_port}/{DB}"))
    assert _refused(wrong, "SELECT 1")


def test_modern_sql_parses_and_its_grants_are_accepted_by_modern_access_control(tmp_path):
    """chdb cannot CREATE USER (clickhouse-local has no writable access storage), so: every statement
    goes through the modern parser (formatQuery), and each role's GRANTs are loaded by the modern
    access-control code as a users.xml user (``<grants><query>``) and read back with SHOW GRANTS."""
    stmts = clickhouse_statements(DB)
    assert stmts[0].startswith("CREATE ROLE") and any(s.startswith("CREATE USER") for s in stmts)
    grants = {r.name: [s.rsplit(" TO ", 1)[0] for s in stmts
                       if s.startswith("GRANT ") and s.endswith(f" TO {r.name}_role")] for r in CH_ROLES}
    users = "".join(
        f"<{u}><password></password><networks><ip>::/0</ip></networks><profile>default</profile>"
        f"<quota>default</quota><grants>{''.join(f'<query>{g}</query>' for g in gs)}</grants></{u}>"
        for u, gs in grants.items())
    (tmp_path / "users.xml").write_text(
        "<clickhouse><profiles><default/></profiles><quotas><default/></quotas><users>"
        "<default><password></password><networks><ip>::/0</ip></networks><profile>default</profile>"
        f"<quota>default</quota><access_management>1</access_management></default>{users}</users></clickhouse>")
    (tmp_path / "config.xml").write_text(
        f"<clickhouse><user_directories><users_xml><path>{tmp_path / 'users.xml'}</path></users_xml>"
        "</user_directories></clickhouse>")
    script = textwrap.dedent(f"""
        import json, sys
        from chdb import session
        s = session.Session({str(tmp_path / 'data') + '?config-file=' + str(tmp_path / 'config.xml')!r})
        stmts = json.loads(sys.stdin.read())
        out = {{"parsed": [], "grants": {{}}}}
        for q in stmts:
            r = s.query("SELECT formatQuery('" + q.replace("\\\\", "\\\\\\\\").replace("'", "\\\\'") + "')", "JSONCompact")
            out["parsed"].append(json.loads(r.bytes())["data"][0][0])
        for u in {list(grants)!r}:
            r = s.query("SHOW GRANTS FOR " + u, "JSONCompact")
            out["grants"][u] = [row[0] for row in json.loads(r.bytes())["data"]]
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script], input=json.dumps(stmts), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out["parsed"]) == len(stmts)
    for q, parsed in zip(stmts, out["parsed"]):
        assert parsed.split()[:2] == q.split()[:2]                  # same statement kind, normalised
    assert set(out["grants"]["mailaudit_ingest"]) == {
        f"GRANT INSERT ON {DB}.events TO mailaudit_ingest", f"GRANT INSERT ON {DB}.errors TO mailaudit_ingest",
        f"GRANT INSERT ON {DB}.events_minutely TO mailaudit_ingest", f"GRANT INSERT ON {DB}.events_by_address TO mailaudit_ingest"}
    assert f"GRANT SELECT ON {DB}.* TO mailaudit_dashboard" in out["grants"]["mailaudit_dashboard"]
    assert f"GRANT INSERT ON {DB}.audit_log TO mailaudit_dashboard" in out["grants"]["mailaudit_dashboard"]
    assert not any("DELETE" in g or "ALTER" in g for g in out["grants"]["mailaudit_detect"])
    admin = " ".join(out["grants"]["mailaudit_admin"])
    assert "ALTER UPDATE" in admin or "ALTER TABLE" in admin or "ALTER," in admin
    assert "DROP TABLE" in admin and "CREATE TABLE" in admin
    assert "CREATE USER" not in admin and "IMPERSONATE" not in admin and "ROLE" not in admin


def test_print_grants_cli_and_kafka_acls(tmp_path):
    env = {"MAILAUDIT_CLICKHOUSE_URL": "clickhouse://x@db:9000/audit", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "mailaudit", "migrate", "--print-grants"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "GRANT INSERT ON audit.events TO mailaudit_ingest_role;" in text
    assert "<allow_databases><database>audit</database></allow_databases>" in text
    assert PLACEHOLDER in text and "kafka-acls.sh" in text
    acls = kafka_acls(Config().kafka)
    ops = {(role, a.resource, a.name): set(a.operations) for role, lst in acls.items() for a in lst}
    assert ops[("ingest", "topic", "mail.headers")] == {"Read", "Describe"}
    assert ops[("ingest", "group", "mailaudit-ingest")] == {"Read"}
    assert ops[("ingest", "topic", "mail.headers.dlq")] == {"Write", "Describe"}
    assert ("ingest", "topic", "mail.alerts") not in ops                  # least privilege
    assert ops[("mailer", "topic", "mail.headers")] == {"Write", "Describe"}
    assert ("mailer", "group", "mailaudit-ingest") not in ops
    assert ops[("detect", "topic", "mail.control")] == {"Write", "Describe"}
    assert not any(("Write" in o) for (role, res, name), o in ops.items() if role == "dashboard" and name != "mail.control"
                   and res == "topic")
    assert "--allow-principal 'User:mailaudit-ingest' --operation Read --operation Describe --topic 'mail.headers'" \
        in text
    with pytest.raises(ValueError):
        clickhouse_sql(DB, {"mailaudit_ingest": "not-hex"})
