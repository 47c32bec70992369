"""Ingest layer: wire format, header parsing, privacy, Kafka -> ClickHouse."""
