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


def test_split_file_matches_procedure_and_catalogue():
    split = corpus.load_split()
    assert split["classes"] == {n: p.cls for n, p in corpus.PATTERNS.items()}   # no pattern added or moved
    assert corpus.make_split(split["classes"]) == {"tune": split["tune"], "test": split["test"]}
    assert not set(split["tune"]) & set(split["test"])
    assert set(split["tune"]) | set(split["test"]) == set(corpus.PATTERNS)


def test_split_is_stratified():
    split = corpus.load_split()
    for cls in corpus.CLASSES:
        names = [n for n, c in split["classes"].items() if c == cls]
        tune = [n for n in names if n in split["tune"]]
        test = [n for n in names if n in split["test"]]
        assert tune and test, cls                     # every class on both sides
        assert len(tune) - len(test) in (0, 1), cls


def test_split_procedure_is_stable_under_reordering():
    classes = corpus.load_split()["classes"]
    shuffled = dict(reversed(list(classes.items())))
    assert corpus.make_split(shuffled) == corpus.make_split(classes)
