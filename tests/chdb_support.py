"""chdb for the tests: the adapter lives in ``mailaudit.bench.chdb_client`` (the benchmarks use it too)."""

from mailaudit.bench.chdb_client import ChdbClient, chdb_database  # noqa: F401
