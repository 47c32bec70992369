"""The milter benchmark runs and measures what it says (small n, no broker: the figures themselves
are reported by `mailaudit bench milter`, not asserted here)."""

from __future__ import annotations

from mailaudit.bench.milter import bench_milter


def test_bench_milter_measures_every_message_and_quarantines_the_leaks():
    out = bench_milter(n=1500, kafka=False, rates=(0.0,))
    r = out["rates"]["saturated"]
    assert r["messages"] == 1500 == sum(k["n"] for k in r["by_kind"].values())
    assert r["quarantined"] == r["by_kind"]["leak"]["n"] > 0          # enforce: every leak, nothing else
    assert 0 < r["wall_p50_ms"] <= r["wall_p99_ms"] <= r["wall_max_ms"]
    assert r["self_p99_ms"] <= r["wall_max_ms"] and out["p99_ms"] == r["wall_p99_ms"]
