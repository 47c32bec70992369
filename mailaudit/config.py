"""One typed configuration object: defaults < TOML file < environment variables.

Everything that needs a setting receives the ``Config`` (or one of its sections) as an argument;
nothing reads the environment deep inside the code, so a test or a library user can build a
``Config`` by hand and know exactly what the code will do.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlparse


class ConfigError(ValueError):
    """A setting is missing or has the wrong shape; the message names it."""


class Secret(str):
    """A str that hides itself in ``repr``: kafka-python logs its whole configuration dict at DEBUG
    (``Starting KafkaAdminClient with configuration: {...}``), which would print a SASL password."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"
    topic_events: str = "mail.headers"
    topic_dlq: str = "mail.headers.dlq"
    topic_alerts: str = "mail.alerts"
    topic_control: str = "mail.control"
    partitions: int = 4
    dlq_retention_ms: int = 7 * 24 * 3600 * 1000
    ingest_group: str = "mailaudit-ingest"
    detect_group: str = "mailaudit-detect"
    session_timeout_ms: int = 10000
    heartbeat_interval_ms: int = 3000
    max_poll_records: int = 5000
    # How long the broker may hold a fetch of the detection consumer waiting for data: detection
    # latency is bounded below by it (kafka-python's default is 500 ms).
    fetch_max_wait_ms: int = 50
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, metadata={"secret": True})
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, metadata={"secret": True})   # passphrase of ssl_keyfile
    ssl_check_hostname: bool = True

    def client_kwargs(self) -> dict[str, Any]:
        """Connection settings shared by every kafka-python client we build."""
        protocol = (self.security_protocol or "PLAINTEXT").upper()
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ConfigError(f"kafka.security_protocol must be one of {', '.join(KAFKA_SECURITY_PROTOCOLS)} "
                              f"(got {self.security_protocol!r})")
        kw: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap.split(",") if s.strip()],
            "security_protocol": protocol,
        }
        if protocol.startswith("SASL_"):
            mech = (self.sasl_mechanism or "").upper()
            if mech not in KAFKA_SASL_MECHANISMS:
                raise ConfigError(f"kafka.sasl_mechanism must be one of {', '.join(KAFKA_SASL_MECHANISMS)} "
                                  f"with security_protocol {protocol} (got {self.sasl_mechanism!r})")
            if not self.sasl_username or not self.sasl_password:
                raise ConfigError(f"kafka.sasl_username and kafka.sasl_password are required with {protocol} "
                                  "(the password from MAILAUDIT_KAFKA_SASL_PASSWORD or ..._FILE)")
            kw["sasl_mechanism"] = mech
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = Secret(self.sasl_password)
        if protocol in ("SSL", "SASL_SSL"):
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name):
                    kw[name] = getattr(self, name)
            if self.ssl_password:
                kw["ssl_password"] = Secret(self.ssl_password)
            kw["ssl_check_hostname"] = bool(self.ssl_check_hostname)
        return kw


@dataclass
class ClickHouseConfig:
    url: str = "clickhouse://default:@127.0.0.1:9000/mailaudit"
    secure: bool = False
    ca_certs: str | None = None
    verify: bool = True
    connect_timeout_s: float = 5.0
    # A server that accepts connections but never answers must not block a write for the driver's
    # default 300 s (= Kafka's max.poll.interval): the write fails and is retried instead.
    send_receive_timeout_s: float = 30.0
    # Overrides the URL's password, so the URL (often logged, shown, copied) need not hold a secret.
    password: str | None = field(default=None, metadata={"secret": True})
    certfile: str | None = None           # client certificate (mutual TLS), with keyfile
    keyfile: str | None = None
    # The ClickHouse cluster (remote_servers) the schema was made on by `migrate --cluster NAME`: the plain
    # tables are Distributed, so forget / retention run send their mutations to T_local ON CLUSTER.
    cluster: str | None = None

    def parts(self) -> dict[str, Any]:
        """Split the URL into clickhouse-driver ``Client`` arguments."""
        u = urlparse(self.url)
        if u.scheme not in ("clickhouse", "clickhouses"):
            raise ConfigError(f"clickhouse.url must start with clickhouse:// (got {u.scheme or 'nothing'}://)")
        database = (u.path or "/").lstrip("/") or "default"
        secure = self.secure or u.scheme == "clickhouses"
        return {
            "host": u.hostname or "127.0.0.1",
            "port": u.port or (9440 if secure else 9000),
            "user": unquote(u.username) if u.username else "default",
            "password": self.password if self.password else (unquote(u.password) if u.password else ""),
            "database": database,
            "secure": secure,
            "ca_certs": self.ca_certs,
            "verify": self.verify,
            "connect_timeout": self.connect_timeout_s,
            "send_receive_timeout": self.send_receive_timeout_s,
            **({"certfile": self.certfile, "keyfile": self.keyfile} if secure and self.certfile else {}),
        }


@dataclass
class PrivacyConfig:
    hash_key: str | None = field(default=None, metadata={"secret": True})
    hash_key_id: str = "k1"
    # Previous keys stay usable for searches during a rotation overlap: "id:secret,id:secret".
    old_hash_keys: str | None = field(default=None, metadata={"secret": True})
    store_subject: bool = False
    extra_fields: list[str] = field(default_factory=list)


@dataclass
class IngestConfig:
    batch_size: int = 5000
    batch_time_s: float = 1.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    max_record_bytes: int = 4 * 1024 * 1024   # larger records are rejected as too_large
    # A DLQ copy is cut to this size (header mailaudit.truncated = original size): Kafka's default
    # message limit is ~1 MB, and a record the DLQ refuses would block its batch forever.
    dlq_max_bytes: int = 900_000
    # Worker processes that decode, hash and insert batches (ingest/pool.py); 0 = all in the consumer's
    # own process. One Python process tops out at ~13k events/s here; workers use more cores.
    workers: int = 0


@dataclass
class DisclosureRules:
    """Per-message disclosure rules; every field is overridable per service
    (``[detect.services.billing.disclosure] strangers_critical = 5``). See docs/detection.md.

    A *stranger* is a visible (To/Cc) address that is not an envelope recipient of the copy: the
    copy shows it to people it was not sent to.
    """

    strangers_critical: int = 10          # strangers on one copy that fire visible_disclosure at once (critical)
    strangers_min: int = 2                # fewer strangers than this is never suspicious (e.g. a Cc'd own mailbox)
    group_wait_s: float = 5.0             # event-time wait for sibling submissions of one Message-ID
    visible_max: int = 50                 # a To/Cc header this long with >= strangers_min strangers is concatenated_to
    open_list_domains: int = 10           # external parties visible on one copy (each consumer-mailbox person, each
                                          # other organisation's domain) that make an open list on any mail; 0 disables
    campaign_list_parties: int = 4        # the same on a copy of a bulk campaign (wire `campaign` set); 0 disables
    org_domains: list[str] = field(default_factory=list)     # the operator's staff domains (and subdomains): "us"
    role_addresses: list[str] = field(default_factory=list)  # the service's own role/list addresses: "us"
    role_learn_copies: int = 5            # own-domain address shown on copies to this many envelopes of one campaign
                                          # becomes a learned role address ("us"); 0 disables learning
    role_max: int = 3                     # only copies showing at most this many such addresses teach roles
    slip_copies: int = 3                  # per-copy slip: copies of one campaign each showing a different external
                                          # non-recipient, within slip_window_s; 0 disables
    slip_window_s: float = 60.0
    repeat_copies: int = 3                # a campaign's copies (distinct Message-IDs) repeating one visible list with
                                          # strangers: fire without waiting once seen this many times; 0 disables
    run_together: bool = True             # alert on addresses written with no separator
    bcc_header: bool = True               # alert on a Bcc: header left in the sent copy


@dataclass
class SpikeRules:
    """Streaming spike rules; overridable per service (``[detect.services.X.spikes]``)."""

    enabled: bool = True
    bucket_s: int = 60                    # volume is counted per bucket of event time
    min_messages_per_bucket: float = 20.0 # a volume spike needs at least this many messages in the bucket
    min_recipients: float = 20.0          # a recipient spike needs a message with at least this many recipients
    min_ratio: float = 2.0                # ... and a value at least this multiple of the detector's baseline
    per_campaign: bool = True             # also count volume per campaign (or template when no campaign)
    max_keys: int = 1000                  # campaign/template volume series kept per service (least recent evicted)
    key_idle_s: float = 86400.0           # a campaign/template series idle this long (event time) is dropped
    fill_gap_buckets: int = 60            # empty service buckets fed as zeros after a lull, at most this many


@dataclass
class DetectConfig:
    lateness_s: float = 60.0              # event-time lateness accepted per service (watermark = max seen - this)
    disclosure: DisclosureRules = field(default_factory=DisclosureRules)
    spikes: SpikeRules = field(default_factory=SpikeRules)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    containment: str = "notify"           # off | notify | hold
    update_interval_s: float = 60.0       # at most one `update` alert per incident per this much event time
    resolve_after_s: float = 900.0        # an incident with no new trigger for this long is resolved
    exposed_exact_max: int = 100_000      # distinct exposed addresses counted exactly per incident, then HyperLogLog
    evidence_sample: int = 5              # masked addresses quoted in an alert's evidence
    max_pending: int = 100_000            # copies waiting for siblings per service; beyond it the oldest is decided early
    max_future_s: float = 300.0           # live only: an event dated further ahead of the wall clock does not move
                                          # its service's clock (one skewed mailer must not make all else "late")
    checkpoint_dir: str | None = None
    checkpoint_fork: bool = True          # encode checkpoints in a forked child (off: in-process, on a thread)

    def disclosure_for(self, service: str) -> DisclosureRules:
        """Per-service overrides on top of the defaults."""
        return _override(self.disclosure, self.services.get(service, {}).get("disclosure"), service, "disclosure")

    def spikes_for(self, service: str) -> SpikeRules:
        return _override(self.spikes, self.services.get(service, {}).get("spikes"), service, "spikes")


def _override(base: Any, override: Mapping[str, Any] | None, service: str, section: str) -> Any:
    if not override:
        return base
    if not isinstance(override, Mapping):
        raise ConfigError(f"detect.services.{service}.{section} must be a table")
    return replace_fields(base, override, f"detect.services.{service}.{section}")


def replace_fields(base: Any, override: Mapping[str, Any], where: str) -> Any:
    """A copy of dataclass ``base`` with ``override``'s settings, each coerced to its field's type."""
    names = {f.name: f for f in dataclasses.fields(base)}
    values = {}
    for k, v in override.items():
        if k not in names:
            raise ConfigError(f"{where}: unknown setting '{k}'")
        values[k] = _coerce(v, names[k].type, f"{where}.{k}")
    return dataclasses.replace(base, **values)


MIN_HASH_KEY_BYTES = 32     # issue 14: any non-empty key used to be accepted


@dataclass
class WebhookConfig:
    url: str | None = None
    secret: str | None = field(default=None, metadata={"secret": True})
    slack: bool = False
    timeout_s: float = 5.0
    max_attempts: int = 5


@dataclass
class DashboardConfig:
    host: str = "127.0.0.1"
    port: int = 8501
    # sha256 (hex) or "pbkdf2_sha256$iter$salt$hash" of the passwords; required when host is not loopback.
    reader_password_hash: str | None = field(default=None, metadata={"secret": True})
    operator_password_hash: str | None = field(default=None, metadata={"secret": True})
    refresh_s: int = 10


@dataclass
class RetentionConfig:
    events_days: int = 180
    errors_days: int = 30
    alerts_days: int = 730
    incidents_days: int = 730


@dataclass
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    clickhouse: ClickHouseConfig = field(default_factory=ClickHouseConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    state_dir: str = ".mailaudit"

    def require_hash_key(self) -> bytes:
        if not self.privacy.hash_key:
            raise ConfigError("no hash key: set MAILAUDIT_HASH_KEY (or privacy.hash_key in the config file)")
        key = self.privacy.hash_key.encode("utf-8")
        if len(key) < MIN_HASH_KEY_BYTES:
            # A short key makes the pseudonyms guessable: hash a dictionary of addresses and compare.
            raise ConfigError(f"the hash key is {len(key)} bytes; at least {MIN_HASH_KEY_BYTES} are required "
                              "(e.g. `openssl rand -hex 32`)")
        return key

    def redacted(self) -> dict[str, Any]:
        """The effective config as a dict with every secret replaced, for ``config show`` and logs."""
        return _redact(self)


# Environment variables: the three of the contract, plus one per commonly-set field.
ENV_VARS: dict[str, tuple[str, str]] = {
    "MAILAUDIT_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "MAILAUDIT_CLICKHOUSE_URL": ("clickhouse", "url"),
    "MAILAUDIT_HASH_KEY": ("privacy", "hash_key"),
    "MAILAUDIT_HASH_KEY_ID": ("privacy", "hash_key_id"),
    "MAILAUDIT_OLD_HASH_KEYS": ("privacy", "old_hash_keys"),
    "MAILAUDIT_KAFKA_SECURITY_PROTOCOL": ("kafka", "security_protocol"),
    "MAILAUDIT_KAFKA_SASL_MECHANISM": ("kafka", "sasl_mechanism"),
    "MAILAUDIT_KAFKA_SASL_USERNAME": ("kafka", "sasl_username"),
    "MAILAUDIT_KAFKA_SASL_PASSWORD": ("kafka", "sasl_password"),
    "MAILAUDIT_KAFKA_SSL_CAFILE": ("kafka", "ssl_cafile"),
    "MAILAUDIT_KAFKA_SSL_CERTFILE": ("kafka", "ssl_certfile"),
    "MAILAUDIT_KAFKA_SSL_KEYFILE": ("kafka", "ssl_keyfile"),
    "MAILAUDIT_KAFKA_SSL_PASSWORD": ("kafka", "ssl_password"),
    "MAILAUDIT_KAFKA_SSL_CHECK_HOSTNAME": ("kafka", "ssl_check_hostname"),
    "MAILAUDIT_CLICKHOUSE_CA_CERTS": ("clickhouse", "ca_certs"),
    "MAILAUDIT_CLICKHOUSE_SECURE": ("clickhouse", "secure"),
    "MAILAUDIT_CLICKHOUSE_PASSWORD": ("clickhouse", "password"),
    "MAILAUDIT_CLICKHOUSE_CERTFILE": ("clickhouse", "certfile"),
    "MAILAUDIT_CLICKHOUSE_KEYFILE": ("clickhouse", "keyfile"),
    "MAILAUDIT_CLICKHOUSE_CLUSTER": ("clickhouse", "cluster"),
    "MAILAUDIT_WEBHOOK_URL": ("webhook", "url"),
    "MAILAUDIT_WEBHOOK_SECRET": ("webhook", "secret"),
    "MAILAUDIT_CONTAINMENT": ("detect", "containment"),
    "MAILAUDIT_INGEST_WORKERS": ("ingest", "workers"),
    "MAILAUDIT_DASHBOARD_HOST": ("dashboard", "host"),
    "MAILAUDIT_DASHBOARD_PORT": ("dashboard", "port"),
    "MAILAUDIT_DASHBOARD_READER_PASSWORD_HASH": ("dashboard", "reader_password_hash"),
    "MAILAUDIT_DASHBOARD_OPERATOR_PASSWORD_HASH": ("dashboard", "operator_password_hash"),
    "MAILAUDIT_STATE_DIR": (None, "state_dir"),
}


ADAPTER_TABLES = ("milter", "adapt")


def read_toml(p: Path) -> dict[str, Any]:
    """The config file as a dict, or one clear ConfigError (missing file, bad TOML)."""
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the effective config. ``env`` defaults to ``os.environ``; pass a dict in tests."""
    env = os.environ if env is None else env
    cfg = Config()
    path = path or env.get("MAILAUDIT_CONFIG")
    if path:
        p = Path(path)
        data = read_toml(p)
        # [milter] and [adapt] belong to the mail-path adapters, which read the same file with
        # their own typed loader (mailaudit.adapters.config.load_adapter_config).
        _apply(cfg, {k: v for k, v in data.items() if k not in ADAPTER_TABLES}, str(p))
    for var, (section, name) in ENV_VARS.items():
        if var in env and env[var] != "":
            target = cfg if section is None else getattr(cfg, section)
            _set_field(target, name, env[var], var)
    # A secret may also come from a file (Kubernetes/Docker secrets): MAILAUDIT_HASH_KEY_FILE etc.
    for var, (section, name) in ENV_VARS.items():
        fvar = var + "_FILE"
        if env.get(fvar):
            try:
                value = Path(env[fvar]).read_text("utf-8").strip()
            except OSError as e:
                raise ConfigError(f"{fvar}: cannot read {env[fvar]}: {e.strerror}") from None
            target = cfg if section is None else getattr(cfg, section)
            _set_field(target, name, value, fvar)
    if cfg.ingest.workers < 0:
        raise ConfigError(f"ingest.workers must be 0 (decode in the consumer's process) or more, not {cfg.ingest.workers}")
    return cfg


def _apply(obj: Any, data: Mapping[str, Any], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown setting '{key}'")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: '{key}' must be a table")
            _apply(current, value, f"{where}:{key}")
        else:
            _set_field(obj, key, value, f"{where}:{key}")


def _set_field(obj: Any, name: str, value: Any, where: str) -> None:
    f = {f.name: f for f in dataclasses.fields(obj)}[name]
    setattr(obj, name, _coerce(value, f.type, where))


def _coerce(value: Any, typ: Any, where: str) -> Any:
    t = str(typ)
    try:
        if t.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if t.startswith("int"):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if t.startswith("float"):
            return float(value)
        if t.startswith("list"):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return list(value)
        if t.startswith("dict"):
            if not isinstance(value, Mapping):
                raise ValueError(value)
            return dict(value)
        if t.startswith("str | None") or t == "str":
            return None if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {t}, got {value!r}") from None
    return value


def _redact(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.metadata.get("secret") and v:
                out[f.name] = "***"
            else:
                out[f.name] = _redact(v)
        return out
    if isinstance(obj, str) and "://" in obj and "@" in obj:
        u = urlparse(obj)
        if u.password:
            return obj.replace(":" + u.password + "@", ":***@", 1)
    return obj


# --- Which servers: the configured ones, or the running local stack -----------------------------
# Any of these says "I configured my servers": then the local stack is never consulted, so a
# production address is never paired with the local stack's other server or its hash key.
SERVER_SETTINGS = ("MAILAUDIT_CONFIG", "MAILAUDIT_KAFKA_BOOTSTRAP", "MAILAUDIT_CLICKHOUSE_URL",
                   "MAILAUDIT_HASH_KEY", "MAILAUDIT_HASH_KEY_FILE")


@dataclass
class ServerChoice:
    """What ``pick_servers`` chose: ``source`` is ``config``, ``local`` or ``defaults``; ``line`` says
    it in one sentence for stderr; ``env`` holds the variables a child process needs to make the
    same choice (set only for the local stack)."""

    source: str
    line: str
    env: dict[str, str] = field(default_factory=dict)


def configured_by(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    """The settings that name servers or the hash key explicitly (empty: nothing is configured)."""
    env = os.environ if env is None else env
    found = [f"--config {path}"] if path else []
    return found + [v for v in SERVER_SETTINGS if env.get(v)]


def pick_servers(cfg: Config, path: str | os.PathLike | None = None,
                 env: Mapping[str, str] | None = None) -> ServerChoice:
    """Point ``cfg`` at the running local stack (Kafka, ClickHouse and its hash key, all three) when
    nothing is configured; otherwise leave it alone. Returns what was chosen."""
    from mailaudit.stack import LocalStack

    sources = configured_by(path, env)
    servers = f"kafka {cfg.kafka.bootstrap}, clickhouse {_redact(cfg.clickhouse.url)}"
    if sources:
        return ServerChoice("config", f"using the configured servers ({', '.join(sources)}): {servers}")
    stack = LocalStack(Path(cfg.state_dir) / "stack")
    info = stack.info()
    if info is None or not stack.status()["running"]:
        return ServerChoice("defaults", f"nothing configured and no local stack running in {stack.dir}: "
                                        f"trying the defaults, {servers} (start one with `mailaudit stack up`)")
    key_file = stack.dir / "hash_key"
    cfg.kafka.bootstrap = info.kafka_bootstrap
    cfg.clickhouse.url = info.clickhouse_url
    try:
        cfg.privacy.hash_key = key_file.read_text("utf-8").strip() or None
    except OSError:
        cfg.privacy.hash_key = None
    env_out = {"MAILAUDIT_KAFKA_BOOTSTRAP": info.kafka_bootstrap, "MAILAUDIT_CLICKHOUSE_URL": info.clickhouse_url}
    if cfg.privacy.hash_key:
        env_out["MAILAUDIT_HASH_KEY_FILE"] = str(key_file)
    return ServerChoice("local", f"using the local stack in {stack.dir}: kafka {info.kafka_bootstrap}, clickhouse "
                                 f"{info.clickhouse_url}, hash key {key_file} (`mailaudit stack env` exports them)",
                        env_out)
