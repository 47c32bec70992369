"""The pattern catalogue (tests/corpus): deterministic, valid wire v1, split by the documented procedure."""

from __future__ import annotations

import collections
import json

import pytest

import corpus
from mailaudit.ingest.wire import decode_event

TINY = 0.05


def test_catalogue_size_and_classes():
    by = collections.Counter(p.cls for p in corpus.PATTERNS.values())
    assert by["benign"] >= 30
    assert sum(n for c, n in by.items() if c != "benign") >= 15
    assert set(by) == set(corpus.CLASSES)
    for p in corpus.PATTERNS.values():
        assert len(p.doc) > 60, p.name              # names the behaviour and its source
        assert (p.deadline is None) == (p.cls == "benign")


@pytest.mark.parametrize("name", sorted(corpus.PATTERNS))
def test_generator_is_deterministic_and_valid_wire(name):
    p = corpus.PATTERNS[name]
    a, b = p.generate(TINY), p.generate(TINY)
    assert a.events == b.events and a.leak_ids == b.leak_ids
    assert a.events, name
    times = []
    for e in a.events:
        ev = decode_event(json.dumps(e, ensure_ascii=False).encode("utf-8"))   # raises if malformed
        times.append(ev.sent_at_ms)
    assert times == sorted(times)                    # send order = event-time order
    assert len({e["event_id"] for e in a.events}) == len(a.events)
    if p.cls == "benign":
        assert not a.leak_ids
    else:
        assert a.leak_ids <= {e["event_id"] for e in a.events} and a.leak_ids
        first = next(i for i, e in enumerate(a.events) if e["event_id"] in a.leak_ids)
        assert first > 0                              # some history before the leak


def test_scale_changes_size_not_shape():
    p = corpus.PATTERNS["weekly_blast_tuesday"]
    assert len(p.generate(0.1).events) < len(p.generate(0.3).events)


# Batch 1 as committed before any tuning (40afa10): its assignment may never change.
BATCH1_TEST = {
    "announcement_own_list_and_support_cc", "auto_replies", "compromised_account_spam", "concatenated_to_idn",
    "daily_digest", "folded_header_group_message", "household_two_recipients", "idn_domains",
    "isp_customer_notices", "isp_customers_visible", "itip_invitation_single", "itip_per_attendee_copies",
    "list_mail_rfc2369_chunks", "mail_merge_cc_next_customer", "mass_visible_chunk_submissions",
    "mixed_case_and_angle_envelope", "reply_all_split_by_relay", "run_together_addresses",
    "semicolon_joined_list", "sms_style_alerts_burst_known", "transactional_daily_rhythm",
    "transactional_gradual_growth", "undisclosed_recipients_group", "user_share_invitation", "utf8_local_parts",
}


def test_split_file_matches_procedure_and_catalogue():
    split = corpus.load_split()
    assert split["classes"] == {n: p.cls for n, p in corpus.PATTERNS.items()}   # no pattern added or moved
    assert not set(split["tune"]) & set(split["test"])
    assert set(split["tune"]) | set(split["test"]) == set(corpus.PATTERNS)
    for batch, names in split["batches"].items():
        assert all(corpus.PATTERNS[n].batch == int(batch) for n in names)
        expect = corpus.make_split({n: split["classes"][n] for n in names}, int(batch))
        assert expect == {"tune": sorted(set(names) & set(split["tune"])),
                          "test": sorted(set(names) & set(split["test"]))}, batch
    assert {n for n in split["test"] if corpus.PATTERNS[n].batch == 1} == BATCH1_TEST


def test_split_is_stratified():
    split = corpus.load_split()
    for cls in corpus.CLASSES:
        names = [n for n, c in split["classes"].items() if c == cls]
        tune = [n for n in names if n in split["tune"]]
        test = [n for n in names if n in split["test"]]
        assert tune and test, cls                     # every class on both sides
        for batch in split["batches"].values():       # within a batch, halves differ by at most one
            b_tune, b_test = len(set(tune) & set(batch)), len(set(test) & set(batch))
            assert b_tune - b_test in (0, 1), (cls, batch)


def test_split_procedure_is_stable_under_reordering():
    classes = {n: c for n, c in corpus.load_split()["classes"].items() if corpus.PATTERNS[n].batch == 1}
    shuffled = dict(reversed(list(classes.items())))
    assert corpus.make_split(shuffled) == corpus.make_split(classes)


# --- bench detection ------------------------------------------------------------------------------

def test_bench_detection_tiny_is_well_formed():
    from mailaudit.bench.detection import bench_detection

    names = ["concatenated_to_2019", "mail_merge_cc_next_customer", "undisclosed_recipients_group",
             "reply_all_thread", "announcement_own_list_and_support_cc", "volume_surge_at_night"]
    r = bench_detection(scale=0.05, patterns=names, throughput=False)
    assert r["patterns"] == len(names) and r["events"] > 0
    rows = {p["pattern"]: p for p in r["per_pattern"]}
    assert set(rows) == set(names)
    split = corpus.load_split()
    for n, p in rows.items():
        assert p["half"] == ("tune" if n in split["tune"] else "test")
        assert p["class"] == corpus.PATTERNS[n].cls
        assert isinstance(p["ok"], bool)
        if p["class"] == "benign":
            assert p["ok"] == (p["false_alerts"] == 0)
        else:
            assert {"caught", "in_time", "delay_s", "history_alerts"} <= set(p)
            assert not p["in_time"] or p["caught"]
    # The 2019 concatenated To is caught on its very first copy by the shipped rules.
    assert rows["concatenated_to_2019"]["in_time"] and rows["concatenated_to_2019"]["on_first_copy"]
    assert r["halves"]["test"]["label"] == "team-built held-out"
    for h, t in r["halves"].items():
        n_leaks = sum(1 for p in rows.values() if p["half"] == h and p["class"] != "benign")
        assert t["leak_patterns"] == n_leaks
        assert 0 <= t["leaks_in_time"] <= t["leaks_caught"] <= n_leaks
        assert t["goal_met"] == (t["leaks_in_time"] == n_leaks and t["benign_alerts"] == 0
                                 and t["leak_history_alerts"] == 0)


def test_bench_detection_cli_json(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mailaudit", "bench", "detection", "--json", "--half", "test",
                          "--scale", "0.03"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    split = corpus.load_split()
    assert list(doc["halves"]) == ["test"]
    assert sorted(p["pattern"] for p in doc["per_pattern"]) == sorted(split["test"])
    assert doc["halves"]["test"]["label"] == "team-built held-out"
    cli = doc["cli_backtest"]                          # the whole half as one file through `mailaudit backtest`
    assert cli["events"] == doc["events"] and cli["events_per_s"] > 0
    assert cli["identical_output_across_runs"]


def test_readme_lists_every_pattern_with_its_half():
    from pathlib import Path

    text = (Path(corpus.__file__).parent / "README.md").read_text()
    split = corpus.load_split()
    for n, p in corpus.PATTERNS.items():
        half = "tune" if n in split["tune"] else "test"
        assert f"| `{n}` | {p.cls} |" in text and f"| {half} | {p.batch} |" in text.split(f"`{n}`")[1].split("\n")[0], n


def test_bench_judges_history_alerts_and_first_copy():
    """The judgement itself, on a stream built here: an unmarked leak in the history is a false alarm
    on the history; the marked one later is caught on its first copy."""
    from corpus.base import DAY_MS, HOUR_MS, T0_MS, Gen, Pattern, transactional

    from mailaudit.bench.detection import run_pattern
    from mailaudit.config import DetectConfig

    def two_leaks(g: Gen, s: float) -> None:
        """History with an unmarked concatenated To, then a marked one."""
        sender = "Svc <info@svc.example>"
        transactional(g, "svc", sender, T0_MS, 1.0, 200)
        for at, leak in ((T0_MS + 12 * HOUR_MS, False), (T0_MS + DAY_MS + HOUR_MS, True)):
            batch = g.people(80)
            for i, r in enumerate(batch[:5]):
                g.emit(at + i * 100, "svc", sender, ", ".join(batch), [r], campaign=f"c{int(leak)}", leak=leak)

    r = run_pattern(Pattern("two_leaks", "visible_list", two_leaks, 0), DetectConfig(), 1.0)
    assert r["history_alerts"] >= 1 and r["history_sample"]
    assert r["caught"] and r["on_first_copy"] and r["in_time"] and r["delay_s"] == 0.0
    assert r["copies_before_alert"] == 0
    assert r["ok"] is False                            # in time, but it alerted on the history too


def test_patterns_are_pinned():
    """A pattern's events never change once split (that would be tuning the data): digests at scale 0.1."""
    import hashlib
    from pathlib import Path

    pinned = json.loads((Path(corpus.__file__).parent / "digests.json").read_text())
    assert set(pinned) == set(corpus.PATTERNS)
    for n, p in corpus.PATTERNS.items():
        got = hashlib.sha256(json.dumps(p.generate(0.1).events, sort_keys=True, ensure_ascii=False).encode())
        assert got.hexdigest()[:32] == pinned[n], n
