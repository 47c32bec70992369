"""Turn a failure into one line that names what failed and how to fix it.

The CLI's last line of defence: an unreachable server, a missing schema, a bad setting or a local
stack that will not start are the operator's to fix, and a traceback only hides the one fact they
need. ``mailaudit --debug VERB`` still shows the traceback.
"""

from __future__ import annotations

import errno
import re

from mailaudit.config import Config

# ClickHouse server error codes with a known fix.
_CH_FIXES = {
    60: "the table is missing: run `mailaudit migrate`",              # UNKNOWN_TABLE
    81: "the database is missing: run `mailaudit migrate`",           # UNKNOWN_DATABASE
    192: "unknown user: check the user in MAILAUDIT_CLICKHOUSE_URL",   # UNKNOWN_USER
    193: "wrong password: check MAILAUDIT_CLICKHOUSE_PASSWORD or the URL",  # WRONG_PASSWORD
    194: "the user is not allowed from this address",                 # IP_ADDRESS_NOT_ALLOWED
    497: "the user lacks a grant: see `mailaudit migrate --print-grants`",   # ACCESS_DENIED
    516: "authentication failed: check the user and password",        # AUTHENTICATION_FAILED
}

_SETTING = re.compile(r"^[a-z_]+\.[a-z_.]+ (must|is|should) ")

_SERVERS_FIX = "start the local stack (`mailaudit stack up`) or point {var} at a running server"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:300]


def _clickhouse_where(cfg: Config | None) -> str:
    if cfg is None:
        return "ClickHouse"
    try:
        p = cfg.clickhouse.parts()
        return f"ClickHouse at {p['host']}:{p['port']}"
    except Exception:  # noqa: BLE001 - a bad URL is reported by its own error
        return "ClickHouse"


def explain(e: BaseException, cfg: Config | None) -> str | None:
    """One line for a known failure, or None when ``e`` is not one we can explain."""
    try:
        return _explain(e, cfg)
    except Exception:  # noqa: BLE001 - explaining must never be the second failure
        return None


def _explain(e: BaseException, cfg: Config | None) -> str | None:
    try:
        from clickhouse_driver import errors as ch
    except ImportError:  # pragma: no cover - a hard dependency
        ch = None
    try:
        from kafka import errors as kafka
    except ImportError:  # pragma: no cover
        kafka = None
    from mailaudit.stack import StackError

    kafka_at = f"Kafka at {cfg.kafka.bootstrap}" if cfg is not None else "Kafka"
    if isinstance(e, StackError):
        return f"local stack: {_first_line(e)}"
    if ch is not None and isinstance(e, (ch.NetworkError, ch.SocketTimeoutError)):
        return (f"cannot reach {_clickhouse_where(cfg)} ({_first_line(e)}); "
                + _SERVERS_FIX.format(var="MAILAUDIT_CLICKHOUSE_URL"))
    if ch is not None and isinstance(e, ch.ServerException):
        fix = _CH_FIXES.get(getattr(e, "code", None))
        return f"{_clickhouse_where(cfg)}: {_first_line(e)}" + (f"; {fix}" if fix else "")
    if ch is not None and isinstance(e, ch.Error):
        return f"{_clickhouse_where(cfg)}: {_first_line(e)}"
    unreachable = tuple(getattr(kafka, n) for n in ("NoBrokersAvailable", "KafkaConnectionError",
                                                     "KafkaTimeoutError", "BrokerNotAvailableError",
                                                     "MetadataEmptyBrokerList") if hasattr(kafka, n))
    if kafka is not None and isinstance(e, unreachable):
        return (f"cannot reach {kafka_at} ({type(e).__name__}); "
                + _SERVERS_FIX.format(var="MAILAUDIT_KAFKA_BOOTSTRAP"))
    if kafka is not None and isinstance(e, kafka.UnknownTopicOrPartitionError):
        return f"{kafka_at}: a topic is missing; run `mailaudit migrate`"
    if kafka is not None and isinstance(e, kafka.KafkaError):
        return f"{kafka_at}: {type(e).__name__}: {_first_line(e)}"
    if isinstance(e, ConnectionError) or (isinstance(e, OSError) and e.errno in (
            errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT)):
        return f"connection failed ({_first_line(e)}); is the server up? (`mailaudit stack status`)"
    if isinstance(e, ValueError) and _SETTING.match(_first_line(e)):
        # A setting checked where it is used (detect.containment, kafka.security_protocol, ...).
        return f"configuration: {_first_line(e)} (set it in the config file or its MAILAUDIT_* variable)"
    if isinstance(e, EOFError):
        return f"{_clickhouse_where(cfg)} closed the connection unexpectedly; check the server and its log"
    return None
