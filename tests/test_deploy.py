"""deploy/: what can be checked without a Docker engine.

The compose file parses and is internally consistent (healthchecks behind every `service_healthy`,
the one-shot migrate before every consumer, secrets wired to real `_FILE` settings, pinned images);
each mailaudit container's environment, replayed through ``load_config`` with stand-in secret files,
gives the intended config (so an env name that the config does not know fails here, not at 3 a.m.);
the Dockerfile copies what exists and every package the project installs; the example TOML documents
every setting at its default; and the schema the deployed config applies works on modern ClickHouse.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from chdb_support import chdb_database
from mailaudit.cli import VERBS, build_parser
from mailaudit.config import ENV_VARS, Config, load_config
from mailaudit.dashboard.auth import access_policy, hash_password, is_loopback
from mailaudit.ingest.schema import MIGRATIONS, TABLES, migrate

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
EXAMPLE = DEPLOY / "mailaudit.example.toml"
KNOWN_ENV = set(ENV_VARS) | {v + "_FILE" for v in ENV_VARS} | {"MAILAUDIT_CONFIG"}
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _interpolate(value):
    """Compose's ``${VAR:-default}`` with nothing set in the environment (``$$`` is a literal ``$``)."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2) or "", value).replace("$$", "$")
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return _interpolate(yaml.safe_load(COMPOSE.read_text()))


def _is_mailaudit(svc: dict) -> bool:
    return "build" in svc


def _mailaudit_services(compose) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if _is_mailaudit(s)}


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def test_compose_has_the_stack_and_pinned_images(compose):
    services = compose["services"]
    assert {"kafka", "clickhouse", "migrate", "consume", "detect", "dashboard"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    env = _env(services["kafka"])
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert "zookeeper" not in COMPOSE.read_text().lower()
    for name in ("KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_QUORUM_VOTERS", "CLUSTER_ID"):
        assert env[name], name
    major = int(services["clickhouse"]["image"].split(":")[1].split(".")[0])
    assert major >= 24
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name}: no image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: image {image!r} is not pinned"
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            image = line.split()[1]
            assert ":" in image and not image.endswith(":latest"), line


def test_healthchecks_and_start_order(compose):
    services = compose["services"]
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"migrate"}
    for name, svc in services.items():
        if name not in one_shot:
            test = svc.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
            assert svc.get("restart") in ("unless-stopped", "always"), f"{name}: not restarted"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, which has no check"
            elif cond["condition"] == "service_completed_successfully":
                assert dep in one_shot
    for name in _mailaudit_services(compose):
        if name != "migrate":
            assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"}, "clickhouse": {"condition": "service_healthy"}}


def test_consumers_and_detectors_scale_without_a_shared_volume(compose):
    services = compose["services"]
    consume = services["consume"]
    assert "container_name" not in consume and not consume.get("ports"), "`--scale consume=N` needs neither"
    assert consume["deploy"]["replicas"] >= 1
    detect = services["detect"]
    assert detect["deploy"]["replicas"] >= 2 and "container_name" not in detect and not detect.get("ports")
    state = _env(detect)["MAILAUDIT_STATE_DIR"]
    # Each replica's own anonymous volume (outbox, local checkpoint cache): a named volume would be shared.
    assert state in detect["volumes"], "the detector's outbox dir is not on a per-container volume"
    assert not any(":" in v for v in detect["volumes"]), "detector replicas must not share a named volume"


def test_every_mailaudit_env_name_is_a_config_setting(compose):
    for name, svc in compose["services"].items():
        for var in _env(svc):
            if var.startswith("MAILAUDIT_"):
                assert var in KNOWN_ENV, f"{name}: {var} is not in mailaudit.config.ENV_VARS (nor its _FILE form)"


def test_secrets_come_from_files_that_git_ignores(compose):
    top = compose["secrets"]
    ignore = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert ignore[0] == "*"
    for name, svc in compose["services"].items():
        attached = set(svc.get("secrets") or [])
        assert attached <= set(top)
        for var, value in _env(svc).items():
            if var.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in attached, f"{name}: {var} points at {value}, not an attached secret"
            for word in ("PASSWORD", "KEY", "SECRET"):
                if word in var and not var.endswith(("_FILE", "_ID")):
                    assert not value, f"{name}: {var} holds a secret in the compose file"
    for name, spec in top.items():
        path = (DEPLOY / spec["file"]).resolve()
        assert path.parent == DEPLOY / "secrets", f"secret {name} lives outside deploy/secrets"


def _container_config(compose, name: str, tmp_path: Path) -> Config:
    """The config a container of ``name`` would load: its environment, with the secret files and the
    mounted config file replaced by local stand-ins."""
    svc = compose["services"][name]
    env = _env(svc)
    secrets = {
        "hash_key": "k" * 64,
        **{f"clickhouse_{u}_password": "pw-from-secret" for u in ("admin", "ingest", "detect", "dashboard")},
        "dashboard_operator_password_hash": hash_password("operator password", iterations=100_000),
        "dashboard_reader_password_hash": hash_password("reader password", iterations=100_000),
    }
    for var, value in list(env.items()):
        if var.endswith("_FILE"):
            secret = value.removeprefix("/run/secrets/")
            path = tmp_path / f"{name}-{secret}"
            path.write_text(secrets[secret] + "\n")
            env[var] = str(path)
    mounted = {c["target"]: compose["configs"][c["source"]]["file"] for c in svc.get("configs", [])}
    if "MAILAUDIT_CONFIG" in env:
        env["MAILAUDIT_CONFIG"] = str((DEPLOY / mounted[env["MAILAUDIT_CONFIG"]]).resolve())
    return load_config(env=env)


@pytest.mark.parametrize("name", ["migrate", "consume", "detect", "dashboard"])
def test_each_container_environment_loads_the_intended_config(compose, name, tmp_path):
    cfg = _container_config(compose, name, tmp_path)
    assert cfg.kafka.bootstrap == "kafka:9092"
    parts = cfg.clickhouse.parts()
    # One ClickHouse user per service (least privilege, issue 14): migrate is the admin.
    user = {"migrate": "mailaudit_admin", "consume": "mailaudit_ingest"}.get(name, f"mailaudit_{name}")
    assert (parts["host"], parts["port"], parts["user"], parts["database"]) == ("clickhouse", 9000, user, "mailaudit")
    assert parts["password"] == "pw-from-secret"
    assert cfg.require_hash_key() == b"k" * 64
    assert cfg.state_dir == "/var/lib/mailaudit"
    assert cfg.kafka.client_kwargs()["bootstrap_servers"] == ["kafka:9092"]
    ch = compose["services"]["clickhouse"]
    assert _env(ch)["CLICKHOUSE_DB"] == parts["database"]
    if name == "dashboard":
        assert not is_loopback(cfg.dashboard.host)
        assert access_policy(cfg.dashboard).login_required


def test_commands_are_cli_verbs_with_valid_arguments(compose):
    parser = build_parser()
    for name, svc in _mailaudit_services(compose).items():
        command = svc["command"]
        assert command[0] in VERBS, f"{name}: {command[0]} is not a mailaudit verb"
        args = parser.parse_args(command)
        assert args.verb == command[0]
        if "--metrics-port" in command:
            port = str(args.metrics_port)
            assert port in svc["expose"]
            assert port in " ".join(svc["healthcheck"]["test"])


def test_dockerfile_copies_what_exists_and_every_installed_package(compose):
    build = compose["services"]["consume"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    dockerfile = context / build["dockerfile"]
    text = dockerfile.read_text()
    copied = set()
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            for src in words[1:-1]:
                assert (context / src).exists(), f"Dockerfile copies {src}, which does not exist"
                copied.add(src.rstrip("/"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["readme"] in copied
    for package_dir in set(pyproject["tool"]["setuptools"]["package-dir"].values()):
        assert package_dir in copied, f"the image would be built without {package_dir}/"
    assert re.search(r'^ENTRYPOINT \["mailaudit"\]$', text, re.M)
    assert re.search(r"^USER (?!0\b|root\b)\S+", text, re.M), "the image must not run as root"
    # The state dir the compose file mounts is the image's (owned by the non-root user).
    assert "MAILAUDIT_STATE_DIR=/var/lib/mailaudit" in text
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "deploy/secrets" in ignore and ".git" in ignore


def _documented(text: str) -> set[str]:
    """Dotted names of settings the example shows, set or commented out."""
    out, table = set(), ""
    for raw in text.splitlines():
        line = raw.lstrip("# ").rstrip()
        m = re.match(r"\[([a-z_.]+)\]", line)
        if m:
            table = m.group(1)
            continue
        m = re.match(r"([a-z_]+) = ", line)
        if m:
            out.add(f"{table}.{m.group(1)}" if table else m.group(1))
    return out


def _fields(obj, prefix="") -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_fields(v, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = v
    return out


def test_example_toml_documents_every_setting_at_its_default():
    text = EXAMPLE.read_text()
    cfg = load_config(EXAMPLE, env={})
    assert dataclasses.asdict(cfg) == dataclasses.asdict(Config()), "the example must show the defaults"
    documented = _documented(text)
    fields = _fields(Config())
    # Per-service override tables document `detect.services` by example.
    if "[detect.services." in text:
        documented.add("detect.services")
    missing = sorted(set(fields) - documented)
    assert not missing, f"add these settings to deploy/mailaudit.example.toml: {missing}"
    unknown = sorted(n for n in documented - set(fields) if not n.startswith("detect.services."))
    assert not unknown, f"deploy/mailaudit.example.toml shows settings that do not exist: {unknown}"
    # Secrets are never set in it.
    for f in _secret_fields(Config()):
        assert not re.search(rf"^{f.rsplit('.', 1)[1]} = ", text, re.M), f"{f} is set in the example"


def _secret_fields(obj, prefix="") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out += _secret_fields(v, f"{prefix}{f.name}.")
        elif f.metadata.get("secret"):
            out.append(prefix + f.name)
    return out


def test_deployed_retention_schema_applies_on_modern_clickhouse():
    cfg = load_config(EXAMPLE, env={})
    db = chdb_database()
    assert db.capabilities.modern
    assert migrate(db, cfg.retention) == [m.version for m in MIGRATIONS]
    for table, days in (("events", cfg.retention.events_days), ("errors", cfg.retention.errors_days),
                        ("alerts", cfg.retention.alerts_days), ("incidents", cfg.retention.incidents_days)):
        ddl = db.execute(f"SHOW CREATE TABLE {{db}}.{table}")[0][0]
        assert f"toIntervalDay({days})" in ddl, f"{table}: no TTL of {days} days"
    for table in TABLES:
        assert db.execute(f"SELECT count() FROM {{db}}.{table}") == [(0,)]
