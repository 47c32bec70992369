"""The stateless half of ingest in worker processes (``ingest.workers`` > 0).

One Python process spends ~25 µs per event decoding, parsing and hashing, and ~16 µs serialising its
columns for clickhouse-driver, all under one GIL: that, not Kafka or ClickHouse, caps a single
consumer (bench/README.md). Ingest has no state across events (a batch's rows depend only on its
records and the key), so that work can run in other processes, as getsentry/arroyo's
``run_task_with_multiprocessing`` step does: the consumer's loop keeps only what must stay in one
place (Kafka polling, the order of commits, the DLQ producer), and hands each batch's raw records to a
worker that builds the rows and inserts them itself.

Nothing about the guarantees changes: a batch's offsets are committed by the loop, in order, only
after its worker returned from a successful insert; a failed or lost worker (an exception, a killed
process) makes the write fail, and the consumer retries the whole batch as it retries any failed
write (the tables collapse repeats). Rejected records come back to the loop's writer, which sends
them to the DLQ and the errors table before the commit, as the in-process path does.

Workers get the configuration (hash key included) as a pickled argument through the pipe
multiprocessing's spawn opens between the consumer and its own children: not through the environment,
the command line or a file.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import sys
import threading
import time
import types
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable

from mailaudit.config import Config
from mailaudit.ingest.dlq import Rejected

log = logging.getLogger("mailaudit.ingest")


class WorkerWriteFailed(RuntimeError):
    """A worker could not build or insert a batch. Raised with a plain message: driver exceptions do
    not all survive pickling between processes, and the retry loop only needs to know it failed."""


class RawBatch:
    """A batch whose records are kept as received; a worker decodes them. Same interface as
    ``ingest.batch.Batch`` for the consumer (size-or-age readiness, offsets, rejects, row count).

    Records are kept by column, one segment per partition's run of records: pickled to a worker, a
    list of values costs a third of a list of per-record tuples (~0.4 vs ~1.3 µs per record, both
    ends), and the consumer's loop and a worker share two cores with everything else."""

    def __init__(self, cfg: Config, clock=time.monotonic):
        self.cfg = cfg
        # (topic, partition, offsets, timestamps, keys, values), lists in offset order
        self.segments: list[tuple[str, int, list, list, list, list]] = []
        self.n = 0
        self.rejected: list[Rejected] = []          # filled in by the write
        self.n_rows = 0                             # rows stored, filled in by the write
        self.offsets: dict[tuple[str, int], int] = {}
        self.first_offsets: dict[tuple[str, int], int] = {}
        self._clock = clock
        self.started = clock()

    def submit_many(self, records: Iterable) -> None:
        """``records``: consumer records in offset order (one poll's records of one partition, as
        kafka-python returns them; any mix works, split into segments here)."""
        records = list(records)
        start = 0
        n = len(records)
        while start < n:
            r0 = records[start]
            topic, partition = r0.topic, r0.partition
            end = start + 1
            while end < n and records[end].partition == partition and records[end].topic == topic:
                end += 1
            run = records[start:end] if start or end < n else records
            tp = (topic, partition)
            self.first_offsets.setdefault(tp, r0.offset)
            self.offsets[tp] = run[-1].offset
            self.segments.append((topic, partition, [r.offset for r in run], [r.timestamp for r in run],
                                  [r.key for r in run], [r.value for r in run]))
            self.n += len(run)
            start = end

    def ready(self) -> bool:
        n = self.n
        if n >= self.cfg.ingest.batch_size:
            return True
        return n > 0 and self._clock() - self.started >= self.cfg.ingest.batch_time_s

    def __len__(self) -> int:
        return self.n

    def row_count(self) -> int:
        return self.n_rows

    def commit_offsets(self) -> dict[tuple[str, int], int]:
        return {tp: off + 1 for tp, off in self.offsets.items()}


# -- the worker process ------------------------------------------------------------------------------

_worker = None


class _Worker:
    def __init__(self, cfg: Config, datetime64: bool):
        from mailaudit.ingest.clickhouse import Database
        from mailaudit.ingest.privacy import AddressHasher

        self.cfg = cfg
        self.datetime64 = datetime64
        self.hasher = AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id)
        self.db = Database(cfg.clickhouse)


def _exit_with_parent(parent: int) -> None:
    """A worker must not outlive its consumer: a SIGKILLed consumer cannot stop it, and the worker
    holds both ends of its task pipe, so it would wait for work forever."""
    import os
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _init_worker(cfg: Config, datetime64: bool, parent: int) -> None:
    from mailaudit.ingest.consumer import GC_THRESHOLDS

    global _worker
    _exit_with_parent(parent)
    gc.set_threshold(*GC_THRESHOLDS)
    _worker = _Worker(cfg, datetime64)


def _ping() -> bool:
    return _worker is not None


def _build_and_insert(segments: list[tuple]) -> tuple[int, list[Rejected]]:
    """Decode, parse and hash a ``RawBatch``'s segments into rows and insert them (events + address
    index)."""
    from mailaudit.ingest.batch import Batch
    from mailaudit.ingest.writer import insert_events

    w = _worker
    # No cyclic collection while a batch is built and sent: everything it allocates is alive until
    # the insert returned (the collector could only re-scan it, ~7 % of a worker's time), and is freed
    # by reference counting when this returns. Re-enabled with the batch gone, so only garbage that
    # outlives a batch is ever counted towards a collection.
    with paused_gc():
        batch = Batch(w.cfg, w.hasher, datetime64=w.datetime64)
        add = batch.add_record          # offsets are the loop's business (RawBatch)
        for topic, partition, offsets, timestamps, keys, values in segments:
            for offset, ts, key, value in zip(offsets, timestamps, keys, values):
                add(topic, partition, offset, ts, key, value)
        try:
            insert_events(w.db, batch.rows)
        except Exception as e:  # noqa: BLE001 - reported to the loop, which retries the batch
            w.db.disconnect()
            first = str(e).splitlines()[0][:300] if str(e) else ""
            raise WorkerWriteFailed(f"{type(e).__name__}: {first}") from None
        n, rejected = len(batch.rows), batch.rejected
        # Every reference to the batch goes here (the bound ``add`` is one): a batch still alive when
        # the collector comes back is scanned whole by the collection its allocations have already
        # made due, ~20 ms every other batch (~2 us per event) spent on rows about to be freed.
        del batch, add
    return n, rejected


@contextlib.contextmanager
def paused_gc():
    """The cyclic collector off for the block, then back as it was (also when the block raises)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def _no_main_reimport():
    """spawn re-runs the parent's ``__main__`` in every child unless it is a package's ``__main__``
    (``python -m mailaudit``). A consumer embedded in a script without a main guard — or in a process
    whose ``__main__`` another library replaced (Streamlit's script runner does) — would run that
    script again in each worker. Workers need nothing from it: while they are started, ``__main__``
    is a bare module (the preparation data is taken in ``Process.start``, within this block)."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if main is None or name.endswith("__main__") or (not name and not getattr(main, "__file__", None)):
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class BuildPool:
    """The worker processes. ``run(records)`` blocks the calling thread (the consumer's writer thread)
    until a worker stored them; a lost worker is replaced and the call fails, to be retried."""

    def __init__(self, cfg: Config, datetime64: bool, workers: int):
        self.cfg = cfg
        self.datetime64 = datetime64
        self.workers = max(1, int(workers))
        self._lock = threading.Lock()
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn: the consumer has threads (kafka-python's, the writer), and fork would copy their locks.
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.cfg, self.datetime64, os.getpid()))
        # Start every worker now (imports take ~1 s), not on the first batch. The processes are started
        # by these submits (a pool never replaces a dead worker: a broken pool is rebuilt here).
        with _no_main_reimport():
            futures = [pool.submit(_ping) for _ in range(self.workers)]
        for f in futures:
            f.result(timeout=120)
        return pool

    def run(self, segments: list[tuple]) -> tuple[int, list[Rejected]]:
        """``segments``: a ``RawBatch``'s."""
        pool = self._pool
        try:
            return pool.submit(_build_and_insert, segments).result()
        except BrokenProcessPool:
            # Every batch in flight sees the same broken pool (one writer thread each): the first one
            # here replaces it, the others only fail and are retried on the new one (without the check
            # each would start a pool; the unused ones' workers stop when their executor is collected).
            with self._lock:
                if self._pool is pool:
                    log.error("an ingest worker process died; starting new ones (its batches will be retried)")
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._start()
            raise WorkerWriteFailed("ingest worker process died") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
