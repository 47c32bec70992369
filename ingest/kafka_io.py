"""Build kafka-python clients from ``KafkaConfig`` so connection and security settings live in one place.

Every producer, consumer and admin client of mailaudit goes through here: a TLS/SASL setting added to
``KafkaConfig.client_kwargs()`` then reaches all of them. Callers pass short timeouts as overrides
where they need them (tests, CLI probes); the defaults here are the production ones.
Nothing here is specific to one broker implementation.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from mailaudit.config import KafkaConfig

# Error code the broker returns for CreateTopics on a name that exists (a race with another creator).
_TOPIC_ALREADY_EXISTS = 36


def _no_payload_logs() -> None:
    """kafka-python's DEBUG logs print whole produce requests and fetch responses: the raw
    mail.headers records, addresses, display names and subjects in clear (found by the canary test,
    issue 14). A process that turns DEBUG on for itself must not turn that on with it, so the
    ``kafka`` logger is held at INFO at least whenever mailaudit builds a client."""
    import logging

    lg = logging.getLogger("kafka")
    if lg.getEffectiveLevel() < logging.INFO:
        lg.setLevel(logging.INFO)


def make_producer(kcfg: KafkaConfig, **overrides: Any) -> KafkaProducer:
    """A producer with acks from every in-sync replica and a small linger, so batches form under load
    without adding visible latency. Raises ``kafka.errors.NoBrokersAvailable`` if no broker answers
    within ``bootstrap_timeout_ms`` (pass it to fail fast)."""
    _no_payload_logs()
    kw: dict[str, Any] = {**kcfg.client_kwargs(), "acks": "all", "linger_ms": 5}
    kw.update(overrides)
    return KafkaProducer(**kw)


def make_consumer(kcfg: KafkaConfig, group_id: str | None, topics: Iterable[str] = (), **overrides: Any) -> KafkaConsumer:
    """A consumer that never commits on its own: mailaudit commits offsets only after the work for them
    is done. ``group_id=None`` gives a group-less consumer (assign partitions yourself); ``topics``
    subscribes through the group otherwise."""
    _no_payload_logs()
    kw: dict[str, Any] = {
        **kcfg.client_kwargs(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kcfg.session_timeout_ms,
        "heartbeat_interval_ms": kcfg.heartbeat_interval_ms,
        "max_poll_records": kcfg.max_poll_records,
    }
    kw.update(overrides)
    return KafkaConsumer(*list(topics), **kw)


def make_admin(kcfg: KafkaConfig, **overrides: Any) -> KafkaAdminClient:
    kw: dict[str, Any] = {**kcfg.client_kwargs(), "request_timeout_ms": 10000}
    kw.update(overrides)
    return KafkaAdminClient(**kw)


def ensure_topics(
    kcfg: KafkaConfig,
    topics: Mapping[str, int],
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    timeout_ms: int = 10000,
    **admin_overrides: Any,
) -> list[str]:
    """Create the topics that do not exist yet (``{name: partitions}``), with their topic configs
    (``{name: {"cleanup.policy": "compact"}}``); return the names created.

    Idempotent and safe against a concurrent creator. Existing topics are left exactly as they are:
    adding partitions would move services to other partitions (keys are service names), and changing
    retention on a live topic is an operator decision, not a side effect of ``migrate``.
    """
    _no_payload_logs()
    configs = configs or {}
    admin = make_admin(kcfg, **admin_overrides)
    try:
        existing = set(admin.list_topics())
        missing = {name: n for name, n in topics.items() if name not in existing}
        if not missing:
            return []
        # -1 = the broker's default replication factor (KIP-464); brokers before 2.4 need a number.
        version = getattr(getattr(admin, "_manager", None), "broker_version", None) or (2, 4)
        replication = -1 if tuple(version) >= (2, 4) else 1
        request = {
            name: {
                "num_partitions": int(n),
                "replication_factor": replication,
                "configs": {k: str(v) for k, v in configs.get(name, {}).items()},
            }
            for name, n in missing.items()
        }
        result = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False)
        created, errors = [], []
        for t in result.get("topics", []):
            code = t.get("error_code", 0)
            if code == 0:
                created.append(t["name"])
            elif code != _TOPIC_ALREADY_EXISTS:
                errors.append(f"{t['name']}: {t.get('error_message') or 'error code %s' % code}")
        if errors:
            raise KafkaError("cannot create topics: " + "; ".join(errors))
        if created:
            admin.wait_for_topics(created, timeout_ms=timeout_ms)
        return sorted(created)
    finally:
        admin.close()


def missing_topics(kcfg: KafkaConfig, topics: Iterable[str], timeout_ms: int = 5000) -> list[str]:
    """Which of ``topics`` do not exist. Raises a ``KafkaError`` (``NoBrokersAvailable``) when no broker
    answers within ``timeout_ms``: the quick probe a CLI verb runs before it starts to send."""
    admin = make_admin(kcfg, bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    return [t for t in topics if t not in existing]
