"""Least privilege: the ClickHouse users/grants and Kafka ACLs of each mailaudit role, as text.

``mailaudit migrate --print-grants`` prints these for an operator to review and apply with their own
admin credentials; mailaudit never applies them itself (the process that would need the rights to
grant is exactly the one that should not have them).

Roles (ClickHouse user / Kafka principal):

- ``ingest``    the consumer: INSERT events and errors (and the dashboard's per-minute aggregate, which
                a materialized view fills on every events insert with the inserter's rights); Kafka:
                read mail.headers in its group, write the DLQ.
- ``detect``    the detector: SELECT exposures and its checkpoints, INSERT
                alerts, incidents, exposures; Kafka: read mail.headers in its group, write
                mail.alerts and mail.control (containment holds).
- ``dashboard`` SELECT on the database, plus INSERT on ``audit_log`` only: operators' acknowledge /
                hold / release must be recorded, and an append-only audit table is the one write that
                cannot alter or remove evidence. Kafka: describe offsets (lag page), write
                mail.control (hold / release).
- ``admin``     migrations, ``forget``, ``retention run``, ``rotate-key``: the database's data and DDL
                (ALTER UPDATE/DELETE, DROP PARTITION, CREATE/DROP TABLE and views), but no user or
                role management; Kafka: create topics.
- ``mailer``    Kafka only: the publisher SDK, milter and adapters write mail.headers and read
                mail.control (group-less, so no group ACL).

Modern ClickHouse gets roles + users in SQL; 18.16 has no CREATE USER/GRANT, so it gets a
``users.d`` XML fragment where a role is a user with a profile: ``readonly`` for the dashboard
reader (18.16 cannot grant one INSERT to a read-only user: the dashboard there needs the separate
``operator`` user for its recorded actions), ``allow_ddl = 0`` for the writers (they can INSERT but
not create, alter or drop), and ``allow_databases`` everywhere. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from mailaudit.config import Config, KafkaConfig
from mailaudit.ingest.clickhouse import ident

PLACEHOLDER = "REPLACE_WITH_SHA256_HEX_OF_PASSWORD"

# Tables written by someone else's migration that a role must also reach (created when present).
DASHBOARD_AGGREGATE = "events_minutely"
SEARCH_INDEX = "events_by_address"     # schema migration 5, also filled by a view on every events insert


@dataclass(frozen=True)
class ChRole:
    name: str                      # the ClickHouse user name; the role is f"{name}_role"
    purpose: str
    grants: tuple[tuple[str, str], ...]   # (privileges, table or "*")


CH_ROLES: tuple[ChRole, ...] = (
    ChRole("mailaudit_ingest", "ingest consumer (mailaudit consume)",
           (("INSERT", "events"), ("INSERT", "errors"), ("INSERT", DASHBOARD_AGGREGATE), ("INSERT", SEARCH_INDEX))),
    ChRole("mailaudit_detect", "detector (mailaudit detect)",
           (("SELECT", "exposures"), ("INSERT", "alerts"), ("INSERT", "incidents"),
            ("INSERT", "exposures"), ("SELECT", "detect_checkpoints"), ("INSERT", "detect_checkpoints"))),
    ChRole("mailaudit_dashboard", "dashboard: reads everything, records operator actions",
           (("SELECT", "*"), ("INSERT", "audit_log"))),
    # Not "ALL": on a modern server that also carries user/role management and IMPERSONATE.
    ChRole("mailaudit_admin", "migrate, forget, retention run, rotate-key",
           (("SELECT, INSERT, ALTER, CREATE TABLE, CREATE VIEW, DROP TABLE, DROP VIEW, TRUNCATE, OPTIMIZE, SHOW",
             "*"), ("CREATE DATABASE", "*"))),
)


def _check_hex(value: str) -> str:
    if value != PLACEHOLDER and (len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value)):
        raise ValueError("a password hash must be the 64-character hex SHA-256 of the password")
    return value


def clickhouse_sql(database: str, password_sha256: dict[str, str] | None = None) -> str:
    """Roles, users and grants for ClickHouse 20.5+ (SQL-driven access control enabled)."""
    db = ident(database)
    hashes = password_sha256 or {}
    out = [f"-- mailaudit roles for database {db}: ClickHouse 20.5+ with SQL access control.",
           "-- Review, set each password hash (sha256 hex), then run as an access-management admin."]
    for r in CH_ROLES:
        role = f"{r.name}_role"
        out.append(f"\n-- {r.name}: {r.purpose}")
        out.append(f"CREATE ROLE IF NOT EXISTS {role};")
        for priv, table in r.grants:
            target = f"{db}.*" if table == "*" else f"{db}.{ident(table)}"
            out.append(f"GRANT {priv} ON {target} TO {role};")
        if r.name == "mailaudit_admin":
            # forget/retention read system.parts, system.columns, system.mutations; ALL on the
            # database does not include the system tables' rows of other databases, which it does not need.
            out.append(f"GRANT SELECT ON system.parts TO {role};")
            out.append(f"GRANT SELECT ON system.columns TO {role};")
            out.append(f"GRANT SELECT ON system.mutations TO {role};")
        pw = _check_hex(hashes.get(r.name, PLACEHOLDER))
        out.append(f"CREATE USER IF NOT EXISTS {r.name} IDENTIFIED WITH sha256_hash BY '{pw}' "
                   f"DEFAULT DATABASE {db};")
        out.append(f"GRANT {role} TO {r.name};")
    return "\n".join(out) + "\n"


def clickhouse_statements(database: str, password_sha256: dict[str, str] | None = None) -> list[str]:
    """The same SQL as a list of statements (for tests and for tools that apply one at a time)."""
    text = clickhouse_sql(database, password_sha256)
    stmts = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("--"):
            stmts.append(line.rstrip(";"))
    return stmts


# ClickHouse 18.16: users.xml ------------------------------------------------------------------------

_XML_ROLES = (
    # user, profile, purpose
    ("mailaudit_ingest", "mailaudit_writer", "ingest consumer: INSERT (no DDL)"),
    ("mailaudit_detect", "mailaudit_writer", "detector: SELECT + INSERT (no DDL)"),
    ("mailaudit_dashboard", "mailaudit_reader", "dashboard: read-only (no operator actions on 18.16)"),
    ("mailaudit_operator", "mailaudit_writer", "dashboard operators' recorded actions (audit_log INSERT)"),
    ("mailaudit_admin", "default", "migrate, forget, retention run, rotate-key"),
)


def users_xml(database: str, password_sha256: dict[str, str] | None = None,
              networks: tuple[str, ...] = ("127.0.0.1", "::1")) -> str:
    """A ``users.d/mailaudit.xml`` fragment for ClickHouse 18.16 (no SQL access control there).

    18.16 cannot grant per table: ``allow_databases`` confines each user to the mailaudit database,
    the ``readonly`` profile makes the dashboard user read-only, ``allow_ddl = 0`` stops the writers
    from creating, altering or dropping anything. Edit ``networks`` to your hosts.
    """
    db = ident(database)
    hashes = password_sha256 or {}
    nets = "".join(f"<ip>{escape(n)}</ip>" for n in networks)
    users = []
    for name, profile, purpose in _XML_ROLES:
        pw = _check_hex(hashes.get(name, PLACEHOLDER))
        users.append(
            f"    <!-- {purpose} -->\n"
            f"    <{name}>\n"
            f"      <password_sha256_hex>{pw}</password_sha256_hex>\n"
            f"      <networks>{nets}</networks>\n"
            f"      <profile>{profile}</profile>\n"
            f"      <quota>default</quota>\n"
            f"      <allow_databases><database>{db}</database></allow_databases>\n"
            f"    </{name}>")
    return (
        "<?xml version=\"1.0\"?>\n"
        f"<!-- mailaudit users for database {db} on ClickHouse 18.16: put in users.d/, set the hashes. -->\n"
        "<yandex>\n"
        "  <profiles>\n"
        "    <mailaudit_reader><readonly>1</readonly></mailaudit_reader>\n"
        "    <mailaudit_writer><readonly>0</readonly><allow_ddl>0</allow_ddl></mailaudit_writer>\n"
        "  </profiles>\n"
        "  <users>\n" + "\n".join(users) + "\n  </users>\n"
        "</yandex>\n")


# Kafka ACLs --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Acl:
    principal: str
    operations: tuple[str, ...]
    resource: str          # "topic", "group", "cluster"
    name: str = ""

    def command(self, bootstrap: str = "$BOOTSTRAP", command_config: str = "admin.properties") -> str:
        ops = " ".join(f"--operation {o}" for o in self.operations)
        res = "--cluster" if self.resource == "cluster" else f"--{self.resource} '{self.name}'"
        return (f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config} --add "
                f"--allow-principal 'User:{self.principal}' {ops} {res}")


KAFKA_PRINCIPALS = {
    "mailer": "mailaudit-mailer",
    "ingest": "mailaudit-ingest",
    "detect": "mailaudit-detect",
    "dashboard": "mailaudit-dashboard",
    "admin": "mailaudit-admin",
}


def kafka_acls(k: KafkaConfig, principals: dict[str, str] | None = None) -> dict[str, list[Acl]]:
    """Role -> ACLs. Principals are the SASL user names (``User:<name>``)."""
    p = {**KAFKA_PRINCIPALS, **(principals or {})}
    rw = ("Read", "Describe")
    ww = ("Write", "Describe")
    return {
        "mailer": [Acl(p["mailer"], ww, "topic", k.topic_events),
                   Acl(p["mailer"], rw, "topic", k.topic_control),
                   # kafka-python producers are idempotent by default; brokers before 3.0 need this.
                   Acl(p["mailer"], ("IdempotentWrite",), "cluster")],
        "ingest": [Acl(p["ingest"], rw, "topic", k.topic_events),
                   Acl(p["ingest"], ("Read",), "group", k.ingest_group),
                   Acl(p["ingest"], ww, "topic", k.topic_dlq),
                   Acl(p["ingest"], ("IdempotentWrite",), "cluster")],
        "detect": [Acl(p["detect"], rw, "topic", k.topic_events),
                   Acl(p["detect"], ("Read",), "group", k.detect_group),
                   Acl(p["detect"], ww, "topic", k.topic_alerts),
                   Acl(p["detect"], ww, "topic", k.topic_control),
                   Acl(p["detect"], ("IdempotentWrite",), "cluster")],
        "dashboard": [Acl(p["dashboard"], ("Describe",), "topic", k.topic_events),
                      Acl(p["dashboard"], ("Describe",), "group", k.ingest_group),
                      Acl(p["dashboard"], ("Describe",), "group", k.detect_group),
                      Acl(p["dashboard"], ww, "topic", k.topic_control),
                      Acl(p["dashboard"], ("IdempotentWrite",), "cluster")],
        "admin": [Acl(p["admin"], ("Create", "Describe", "DescribeConfigs"), "topic", t)
                  for t in (k.topic_events, k.topic_dlq, k.topic_alerts, k.topic_control)]
                 + [Acl(p["admin"], ("Create",), "cluster")],
    }


def kafka_acl_script(k: KafkaConfig, principals: dict[str, str] | None = None) -> str:
    out = ["#!/bin/sh",
           "# mailaudit Kafka ACLs, one principal per role (SASL user names). Run with a Kafka admin's",
           "# client properties in admin.properties; BOOTSTRAP is your brokers' address.",
           'BOOTSTRAP="${BOOTSTRAP:?set BOOTSTRAP to the brokers}"']
    for role, acls in kafka_acls(k, principals).items():
        out.append(f"\n# {role}")
        out.extend(a.command() for a in acls)
    return "\n".join(out) + "\n"


def print_grants(cfg: Config, database: str) -> str:
    """Everything ``migrate --print-grants`` prints, in three marked sections."""
    return ("-- ===== ClickHouse 20.5+ (SQL) =====\n" + clickhouse_sql(database)
            + "\n<!-- ===== ClickHouse 18.16: users.d/mailaudit.xml ===== -->\n" + users_xml(database)
            + "\n# ===== Kafka ACLs =====\n" + kafka_acl_script(cfg.kafka))
