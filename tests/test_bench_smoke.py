"""Every bench suite at a tiny size on the session servers: a figure that breaks (a wrong key, a
division by zero, a run that stores nothing, a run dropped from the list) fails CI, not the report."""

from __future__ import annotations

import pytest



def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def _load(x) -> bool:
    return isinstance(x, list) and len(x) == 3 and all(isinstance(v, float) and v >= 0 for v in x)


@pytest.mark.servers
def test_bench_ingest_tiny(stack):
    from mailaudit.bench.ingest import bench_ingest

    out = bench_ingest(n=1500, runs=1, batch_size=500, info=stack, scaling_runs=1)
    for k in ("events_per_s", "raw_consume_msgs_per_s", "raw_insert_rows_per_s", "raw_limit_events_per_s", "ratio",
              "events_per_s_in_process", "ratio_in_process"):
        assert _positive(out[k]), (k, out[k])
    assert len(out["per_run"]) == 1 and out["workers"] == 2
    for run in out["per_run"]:
        assert run["stored"] == 1500
        # CPU per event by role over the timed interval: the workers did the decoding, not the loop.
        assert _positive(run["cpu_us_per_event_workers"]) and 0 < run["cpu_busy_pct"] <= 100
        assert run["raw_limit_events_per_s"] == min(run["raw_consume_msgs_per_s"], run["raw_insert_rows_per_s"])
        assert _load(run["loadavg_before"]) and _load(run["loadavg_after"])
        # before each side: the consume, the bare insert's clock, the in-process and the workers' consumer
        assert len(run["quiet_server_waits_s"]) == 4 and all(0 <= w < 120 for w in run["quiet_server_waits_s"])
    assert sorted(out["per_run"], key=lambda r: r["ratio"])[0]["ratio"] <= out["ratio"]
    for k in ("1_process", "2_process"):
        assert len(out["scaling_runs"][k]) == 1 and _positive(out["scaling_events_per_s"][k])
    assert _positive(out["bytes_per_event_on_disk_18_16"]) and _positive(out["bytes_per_event_on_disk_modern_chdb"])


@pytest.mark.servers
def test_bench_latency_tiny(stack):
    from mailaudit.bench.latency import bench_latency

    out = bench_latency(rates=(300,), duration_s=4.0, leak_every_s=0.5, runs=2, info=stack)
    (r,) = out["by_rate"]
    assert len(r["runs"]) == 2                                   # every run attempted is reported
    assert r["leaks"] >= 10 and r["alerted"] == r["leaks"], r
    for run in r["runs"]:
        assert 0.8 * 300 <= run["rate_achieved"] <= 1.2 * 300, run
        assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
        assert _load(run["loadavg_before"]) and _load(run["loadavg_after"])
    assert r["p99_worst_ms"] == max(run["p99_ms"] for run in r["runs"]) >= r["p99_ms"]
    for run in r["runs"]:
        # every leak in send order, each with its latency; and the detector did the work (its CPU)
        assert run["reader"] == "detect" and len(run["series"]) == run["leaks"]
        assert [t for t, _ in run["series"]] == sorted(t for t, _ in run["series"])
        assert sorted(ms for _, ms in run["series"])[-1] == round(run["max_ms"])
        assert run["cpu_s"]["detector"] > 0 and run["cpu_s"]["bench_process"] > 0
        # the servers' share of the same cores over the stream (the stack's own broker and ClickHouse)
        assert set(run["servers_cpu_s"]) == {"broker", "clickhouse"}
        assert run["servers_cpu_s"]["broker"] > 0 and run["servers_cpu_s"]["clickhouse"] >= 0
        # the detector's own split, from its /metrics: every fetched batch and every alert is counted
        st = run["detector_stages"]
        assert st["read_delay"]["count"] > 0 and st["read_delay"]["p50_le_ms"] <= st["read_delay"]["p99_le_ms"]
        assert st["raise"]["count"] >= run["alerted"] and st["delivery_kafka"]["count"] >= run["alerted"], st
    # the other rule paths: group wait and merge slip wait 5 s of event time, a recipient spike none
    # (a volume spike needs a run of minutes: not in a tiny run)
    for name, wait in (("group_wait_disclosure", 5000), ("merge_slip", 5000), ("recipient_spike", 0)):
        p = r["paths"][name]
        assert len(p["latency_ms_runs"]) == 2 and p["event_time_wait_ms"] == wait
        assert all(x is not None and x >= wait for x in p["latency_ms_runs"]), (name, p)
    assert "volume_spike" not in r["paths"]


@pytest.mark.servers
def test_bench_latency_baseline_tiny(stack):
    """The transport baseline: a plain consumer in the detector's group echoes each leak copy
    to the alert topic, timed by the same watcher; no rule paths."""
    from mailaudit.bench.latency import bench_latency

    # with the diagnostic CPU burn (bench/echo.py --burn-us) on, at a size that leaves it keeping up
    out = bench_latency(rates=(300,), duration_s=3.0, leak_every_s=0.5, runs=1, info=stack, baseline=True,
                        detect_args=("--burn-us", "20"))
    (r,) = out["by_rate"]
    (run,) = r["runs"]
    assert out["reader"] == run["reader"] == "echo"
    assert run["leaks"] >= 4 and run["alerted"] == run["leaks"], run
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"] and len(run["series"]) == run["leaks"]
    assert run["paths"] == {} and r["paths"] == {}
    assert run["detector_stages"] is None                        # no detector, no /metrics of its own


@pytest.mark.servers
def test_broker_probe_tiny(stack):
    from mailaudit.bench.broker_probe import broker_probe

    out = broker_probe(steps=2, step=500, probes=3, info=stack)
    sizes = out["by_log_size"]
    assert [s["log_messages"] for s in sizes] == [3, 506, 1009]          # probes and fill, all counted
    assert all(0 < s["median_ms"] <= s["max_ms"] < float("inf") for s in sizes), sizes


def test_ingest_build_tiny():
    from mailaudit.bench.ingest_build import ingest_build

    out = ingest_build(n=1200, passes=2, batch_size=500)
    assert out["events"] == 1200 and out["rows"] == 1200              # simulator traffic: every record stored
    assert len(out["cpu_us_per_event_passes"]) == 2 and _positive(out["cpu_us_per_event"])
    assert out["cpu_us_per_event"] <= max(out["cpu_us_per_event_passes"])


@pytest.mark.servers
def test_bench_dashboard_tiny(stack):
    from mailaudit.bench.dashboard import bench_dashboard

    out = bench_dashboard(n=30_000, runs=1, apptest=False, exposure_copies=10, exposure_width=10, info=stack,
                          log=lambda s: None)
    assert out["events"] == 30_000 and out["index_rows"] > 30_000
    assert all(_positive(t["median"]) for t in out["query_s"].values())
    for where in (out["address_search_s"], out["modern_chdb"]["query_s"]):
        assert set(where) == {f"search address, {span}, {how}" for span in ("7 days", "all time")
                              for how in ("index", "array scan")}
        assert all(_positive(t["median"]) for t in where.values())
    assert out["modern_chdb"]["events"] == 30_000 and out["modern_chdb"]["server"].startswith("chdb")


def test_bench_parser_and_backtest_tiny():
    from mailaudit.bench.backtest import bench_backtest
    from mailaudit.bench.parser import bench_parser

    p = bench_parser(repeats=1, n=300)
    assert p["repeats"] == 1 and len(p) > 3
    b = bench_backtest(duration_s=120.0, rate=20.0, runs=2)
    assert len(b["events_per_s_runs"]) == 2 and _positive(b["events_per_s"]) and b["alerts"] > 0
    assert b["identical_output_across_runs"] and len(b["loadavg_before_runs"]) == 2


def test_bench_scale_interval_cost():
    """CPU per event is the CPU between the two samples over the events timed between them; busy % is
    the machine's non-idle share of the jiffies between them."""
    from mailaudit.bench.scale import interval_cost

    a = {"procs": 1.0, "clickhouse": 2.0, "broker": 0.5, "total": 1000, "idle": 400}
    b = {"procs": 1.5, "clickhouse": 2.1, "broker": 0.5, "total": 1200, "idle": 420}
    assert interval_cost(a, b, 1000) == {"cpu_us_per_event": 500.0, "cpu_us_per_event_clickhouse": pytest.approx(100.0),
                                         "cpu_us_per_event_broker": 0.0, "cpu_busy_pct": 90.0}
    assert set(interval_cost(a, b, 0).values()) == {None}         # nothing timed: no figure, not a 0


@pytest.mark.servers
def test_bench_scale_tiny(stack):
    from mailaudit.bench.scale import bench_scale

    # 12,000 events: a consume batch is 5,000 rows and the clock starts at the first one written.
    out = bench_scale(n=12_000, runs=1, rate=300.0, duration_s=4.0, info=stack)
    assert out["events"] == 12_000 and out["partitions"] == 4 and out["services"] > 4
    for verb in ("consume", "detect"):
        for k in (1, 2):
            fig = out[f"{verb}_{k}"]
            assert len(fig["runs"]) == 1, (verb, k)                  # every run attempted is reported
            run = fig["runs"][0]
            # 6,000 untimed events behind the 12,000: the clock stops at the first sample counting 12,000,
            # by when a batch or two of those may be counted too (never all, nor much twice)
            assert run["published"] == 18_000 and run["timed_s"] > 0, run
            assert run["processes"] == k and 0 < run["events_timed"] <= 18_000 * 1.05, run
            assert 1 / k <= run["busiest_share"] <= 1 and (k == 2 or run["busiest_share"] == 1), run
            assert _positive(run["events_per_s"]) and _positive(run["cpu_us_per_event"]), run
            assert run["cpu_us_per_event_clickhouse"] >= 0 and run["cpu_us_per_event_broker"] >= 0, run
            assert 0 < run["cpu_busy_pct"] <= 100, run
            assert _load(run["loadavg_before"]) and _load(run["loadavg_after"])
            assert fig["cpu_us_per_event"] == run["cpu_us_per_event"]   # the median of one run is that run
    assert _positive(out["consume_1"]["cpu_us_per_event_clickhouse"])   # consume's rows are inserted
    for k in (1, 2):
        lat = out[f"alert_latency_detect_{k}"]
        (run,) = lat["runs"]
        assert run["processes"] == k and run["leaks"] >= 5 and run["alerted"] == run["leaks"], run
        assert 0.8 * 300 <= run["rate_achieved"] <= 1.2 * 300, run
        # the stream starts after its encoding: no overdue seconds sent as a burst
        assert run["late_start_s"] <= 0.2, run
        assert 0 < run["p50_ms"] <= run["p99_ms"] == lat["p99_ms"], run
        assert _load(run["loadavg_before"]) and _load(run["loadavg_after"])
    worst = max(out["consume_1"]["cpu_us_per_event"], out["detect_1"]["cpu_us_per_event"])
    assert out["per_partition_ceiling_msgs_per_s"] == round(1e6 / worst)


@pytest.mark.servers
def test_bench_scale_clock_stops_before_a_batch_timer(stack, tmp_path):
    """12,000 events are 2 batches of 5,000 and 2,000 over: with nothing behind them the last 2,000
    would wait out the batch timer (30 s here) inside the timed interval; the untimed events published
    behind them make that batch a full one like the others."""
    from mailaudit.bench.ingest import _events
    from mailaudit.bench.scale import backlog

    run = backlog(stack, tmp_path, _events(12_000, seed=9), "consume", 1, tail=_events(6_000, seed=10),
                  batch_time_s=30.0)
    assert run["published"] == 18_000 and run["events_timed"] >= 7_000 and run["busiest_share"] == 1, run
    assert run["timed_s"] < 15, run


def test_bench_latency_servers_cpu_between_readings():
    """A server whose CPU could not be read (not ours, gone) is None in the report, not a crash or a 0."""
    from mailaudit.bench.latency import _cpu_between

    assert _cpu_between({"broker": 1.0, "clickhouse": 2.0}, {"broker": 4.5, "clickhouse": 2.0}) == {"broker": 3.5, "clickhouse": 0.0}
    assert _cpu_between({"broker": 1.0, "clickhouse": None}, {"broker": 1.5, "clickhouse": 3.0}) == {"broker": 0.5, "clickhouse": None}
    assert _cpu_between(None, {"broker": 1.0, "clickhouse": 1.0}) is None
