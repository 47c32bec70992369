"""One module per CLI verb: HELP, configure(parser), run(args, cfg) -> exit code."""

import logging


def guarded_clickhouse(fn, args, cfg) -> int:
    """An unreachable or refusing ClickHouse is an operator's problem to fix: one line, no traceback."""
    from clickhouse_driver.errors import Error as ClickHouseError

    from mailaudit.cli import UserError

    # clickhouse-driver logs each failed connect with a traceback; the one line below says it all.
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.CRITICAL)
    try:
        return fn(args, cfg)
    except (ClickHouseError, OSError, EOFError) as e:
        from mailaudit.failures import explain

        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(explain(e, cfg) or f"ClickHouse: {first[:300]}") from None


def require_topic(cfg, topic: str) -> None:
    """Fail fast and clearly when the broker or the topic is missing, rather than buffering into the void."""
    from kafka.errors import KafkaError

    from mailaudit.cli import UserError
    from mailaudit.ingest.kafka_io import missing_topics

    try:
        missing = missing_topics(cfg.kafka, [topic])
    except KafkaError as e:
        raise UserError(f"cannot reach Kafka at {cfg.kafka.bootstrap} ({e}); start the local stack "
                        "(`mailaudit stack up`) or point MAILAUDIT_KAFKA_BOOTSTRAP at a running server") from None
    if missing:
        raise UserError(f"topic {topic} does not exist; run `mailaudit migrate` first")
