"""Checkpoint states encoded by a forked child (``detect.checkpoint_child``, issue 16).

The child encodes the state as it was at the fork, whatever the parent does next; a partition it cannot
encode comes back as an error for that partition only; a child that dies leaves every missing partition
as an error, never a hang or a crash of the parent. Pure engine and real processes, no servers.
"""

from __future__ import annotations

import json
import os
import signal
import threading

from mailaudit.config import DetectConfig
from mailaudit.detect import checkpoint_child
from mailaudit.detect import state as st
from mailaudit.detect.partitions import PartitionedEngine
from mailaudit.detect.engine import DetectionEngine
from mailaudit.ingest.simulator import Simulator


def _engines():
    cfg = DetectConfig()
    pe = PartitionedEngine(lambda: DetectionEngine(cfg))
    events = list(Simulator(seed=4, rate=40.0).events(240, incident=["concatenated_to"], incident_at_s=120))
    return pe, events


def test_the_child_encodes_the_state_at_the_fork_while_the_parent_goes_on():
    pe, events = _engines()
    keys = [("mail.headers", p) for p in range(3)]
    half = len(events) // 2
    for i, e in enumerate(events[:half]):
        pe.engine(keys[i % 3]).process(e)
    want = {k: json.dumps(pe.state_dict(k)) for k in keys}
    gate_r, gate_w = os.pipe()

    def encode(k):
        if k == keys[0]:
            os.read(gate_r, 1)            # the child waits until the parent has changed its state
        return st.dumps(pe.state_dict(k))

    child = checkpoint_child.start(encode, keys)
    assert child is not None
    for i, e in enumerate(events[half:]):  # the parent goes on (the child's copy must not see this)
        pe.engine(keys[i % 3]).process(e)
    assert all(json.dumps(pe.state_dict(k)) != want[k] for k in keys)
    os.write(gate_w, b"x")
    got = child.result()
    assert set(got) == set(keys)
    assert {k: json.dumps(st.loads(v)) for k, v in got.items()} == want
    assert child.cpu_s > 0                 # the child's CPU is counted (the checkpoint's cost)


def test_a_partition_that_cannot_be_encoded_is_an_error_for_it_alone():
    keys = [("t", 0), ("t", 1), ("t", 2)]

    def encode(k):
        if k[1] == 1:
            raise TypeError("cannot store a Odd in detection state (not registered)")
        if k[1] == 2:
            raise st.StateTooLarge("detection state is 99 bytes, over the 10-byte limit")
        return st.dumps({"k": k[1]})

    got = checkpoint_child.start(encode, keys).result()
    assert st.loads(got[("t", 0)]) == {"k": 0}
    assert isinstance(got[("t", 1)], RuntimeError) and "not registered" in str(got[("t", 1)])
    assert isinstance(got[("t", 2)], st.StateTooLarge)


def test_a_child_that_dies_leaves_its_partitions_as_errors_not_a_hang():
    keys = [("t", 0), ("t", 1)]

    def encode(k):
        if k[1] == 1:
            os.kill(os.getpid(), signal.SIGKILL)      # killed mid-way (the OOM killer, an operator)
        return st.dumps({"k": k[1]})

    got = checkpoint_child.start(encode, keys).result()
    assert st.loads(got[("t", 0)]) == {"k": 0}
    assert isinstance(got[("t", 1)], checkpoint_child.ChildFailed)


def test_forking_beside_busy_threads_holding_locks_still_encodes():
    """The detector forks with kafka-python's and the sinks' threads running, maybe inside a lock: the
    child takes none of their locks, so it finishes."""
    lock = threading.Lock()
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            with lock:
                sum(range(1000))

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            got = checkpoint_child.start(lambda k: st.dumps({"p": k[1]}), [("t", 0), ("t", 1)]).result()
            assert [st.loads(got[("t", p)]) for p in (0, 1)] == [{"p": 0}, {"p": 1}]
    finally:
        stop.set()
        for t in threads:
            t.join()
