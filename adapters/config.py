"""Settings of the mail-path adapters: the ``[milter]`` and ``[adapt]`` tables of the mailaudit TOML file.

They live beside the main ``Config`` rather than inside it so that the adapters stay an optional layer;
``load_adapter_config`` reads the same file the main config reads. Per-service policy sits under
``[milter.services.NAME]`` so an operator can switch one service to ``enforce`` while the rest only
report.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mailaudit.config import ConfigError, _apply, read_toml, replace_fields

MONITOR, ENFORCE = "monitor", "enforce"
MODES = (MONITOR, ENFORCE)
QUARANTINE, TEMPFAIL = "quarantine", "tempfail"
HOLD_ACTIONS = (QUARANTINE, TEMPFAIL)
SEVERITIES = ("warning", "critical")
_LISTEN_RE = re.compile(r"^(inet6?:\d{1,5}(@\S+)?|(unix|local):/\S+)$")


@dataclass
class ServicePolicy:
    """What the milter may do to one service's mail (``[milter.services.NAME]`` overrides the defaults)."""

    mode: str = MONITOR                     # monitor: publish only, never touch mail | enforce: quarantine/defer
    on_hold: str = QUARANTINE               # a held service/campaign in enforce: quarantine | tempfail (4xx)
    quarantine_severity: str = "critical"   # lowest disclosure severity quarantined in enforce: critical | warning


@dataclass
class MilterConfig:
    listen: str = "inet:8894@127.0.0.1"     # libmilter socket spec: inet:PORT@HOST, inet6:..., unix:/path
    name: str = "mailaudit"
    timeout_s: int = 30                     # libmilter I/O timeout towards the MTA
    service_header: str = "X-Mailaudit-Service"
    campaign_header: str = "X-Mailaudit-Campaign"
    template_header: str = "X-Mailaudit-Template"
    strip_headers: bool = True              # remove the three headers above before the message leaves
    default_service: str = "mail"
    # MAIL FROM -> service: exact address ("billing@shop.example") or domain ("@news.shop.example").
    senders: dict[str, str] = field(default_factory=dict)
    include_subject: bool = True            # the consumer stores a keyed hash of it unless told otherwise
    envelope_from: bool = True              # add the MAIL FROM as extra field `envelope_from`
    policy: ServicePolicy = field(default_factory=ServicePolicy)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Kafka trouble never stops mail (fail open); the buffer holds this many unacknowledged events.
    fail_open: bool = True                  # false: tempfail while events cannot be buffered
    buffer_max: int = 10000
    hold_fail_closed: bool = False          # true: hold everything until mail.control has been read
    # Release held-campaign quarantines automatically when mail.control says `release` (needs the
    # right to run postsuper; disclosure quarantines are never released automatically).
    auto_release: bool = False
    postsuper: str = "postsuper"
    postfix_config_dir: str | None = None   # `postsuper -c DIR` for a non-default Postfix instance
    metrics_listen: str | None = None       # "127.0.0.1:9464": Prometheus text on GET /metrics
    stats_interval_s: float = 60.0          # log the counters this often (0: never)

    def policy_for(self, service: str) -> ServicePolicy:
        override = self.services.get(service)
        if not override:
            return self.policy
        if not isinstance(override, Mapping):
            raise ConfigError(f"milter.services.{service} must be a table")
        return replace_fields(self.policy, override, f"milter.services.{service}")

    def validate(self) -> "MilterConfig":
        _check_policy(self.policy, "milter.policy")
        for name in self.services:
            _check_policy(self.policy_for(name), f"milter.services.{name}")
        if not _LISTEN_RE.match(self.listen):
            raise ConfigError(f"milter.listen must be inet:PORT@HOST, inet6:PORT@HOST or unix:/path (got {self.listen!r})")
        if not self.default_service.strip():
            raise ConfigError("milter.default_service must not be empty")
        if self.buffer_max < 1:
            raise ConfigError("milter.buffer_max must be at least 1")
        for k, v in self.senders.items():
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"milter.senders.{k!r} must name a service")
        return self


@dataclass
class AdaptConfig:
    """The email-API adapters (``mailaudit adapt ses|sendgrid``)."""

    listen: str = "127.0.0.1:8025"
    secret: str | None = field(default=None, metadata={"secret": True})   # shared secret of the HTTP receiver
    default_service: str | None = None      # None: "ses" / "sendgrid"
    service_tag: str = "service"            # SES message tag / SendGrid custom arg naming the service
    campaign_tag: str = "campaign"
    template_tag: str = "template"
    include_subject: bool = True
    max_body_bytes: int = 8 * 1024 * 1024
    # Provider signatures (adapters/signatures.py). SES through SNS: an SNS envelope is always
    # verified (sns_verify); sns_required also refuses anything that is not a signed SNS message.
    sns_verify: bool = True
    sns_required: bool = False
    sns_topic_arns: list[str] = field(default_factory=list)   # empty: any topic
    # SendGrid Signed Event Webhook: the verification key (base64 DER) from the SendGrid console;
    # set, every post must carry a valid ECDSA signature.
    sendgrid_public_key: str | None = None
    # Hostile clients: per-read socket timeout, connections served at once.
    timeout_s: float = 10.0
    max_concurrent: int = 16


@dataclass
class AdapterConfig:
    milter: MilterConfig = field(default_factory=MilterConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)


ENV_VARS = {
    "MAILAUDIT_MILTER_LISTEN": ("milter", "listen"),
    "MAILAUDIT_MILTER_MODE": ("milter.policy", "mode"),
    "MAILAUDIT_ADAPT_SECRET": ("adapt", "secret"),
}


def load_adapter_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> AdapterConfig:
    """The ``[milter]`` and ``[adapt]`` tables of the TOML file (other tables are the main config's),
    then the environment. ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    out = AdapterConfig()
    path = path or env.get("MAILAUDIT_CONFIG")
    if path:
        p = Path(path)
        data = read_toml(p)
        for table in ("milter", "adapt"):
            if table in data:
                if not isinstance(data[table], Mapping):
                    raise ConfigError(f"{p}: '{table}' must be a table")
                _apply(getattr(out, table), data[table], f"{p}:{table}")
    for var, (where, name) in ENV_VARS.items():
        if env.get(var):
            target: Any = out
            for part in where.split("."):
                target = getattr(target, part)
            _apply(target, {name: env[var]}, var)
    secret_file = env.get("MAILAUDIT_ADAPT_SECRET_FILE")
    if secret_file:
        try:
            out.adapt.secret = Path(secret_file).read_text("utf-8").strip()
        except OSError as e:
            raise ConfigError(f"MAILAUDIT_ADAPT_SECRET_FILE: cannot read {secret_file}: {e.strerror}") from None
    out.milter.validate()
    return out


def _check_policy(p: ServicePolicy, where: str) -> None:
    if p.mode not in MODES:
        raise ConfigError(f"{where}.mode must be one of {', '.join(MODES)} (got {p.mode!r})")
    if p.on_hold not in HOLD_ACTIONS:
        raise ConfigError(f"{where}.on_hold must be one of {', '.join(HOLD_ACTIONS)} (got {p.on_hold!r})")
    if p.quarantine_severity not in SEVERITIES:
        raise ConfigError(f"{where}.quarantine_severity must be one of {', '.join(SEVERITIES)}")
