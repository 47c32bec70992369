"""The stateless half of ingest in worker processes (``ingest.workers`` > 0).

One Python process spends ~25 µs per event decoding, parsing and hashing, and ~16 µs serialising its
columns for clickhouse-driver, all under one GIL: that, not Kafka or ClickHouse, caps a single
consumer (bench/README.md). Ingest has no state across events (a batch's rows depend only on its
records and the key), so that work can run in other processes, as getsentry/arroyo's
``run_task_with_multiprocessing`` step does: the consumer's loop keeps only what must stay in one
place (Kafka polling, the order of commits, the DLQ producer), and hands each batch's raw records to a
worker that builds the rows and inserts them itself.

A worker holds two batches: while one is being inserted (most of that time is ClickHouse's, with
the worker's GIL released), the next one is decoded, as the issue's "insert of batch N overlapped with
decode of N+1" asks. Never more than two: the decode of a third waits for the insert slot, so a
worker's memory is bounded at two batches of rows, and the loop hands a worker at most two batches.

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
import itertools
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
import types
from concurrent.futures import Future
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

# A worker runs with the cyclic collector off: a batch's rows are alive from its decode to the end of
# its insert, and with two batches overlapping one always is, so a collection at any moment would
# re-scan a whole batch (~20 ms). Rows hold no cycles and are freed by reference counting; the little
# garbage with cycles (a failed insert's exception, the driver's reconnects) is collected every this
# many batches, and after each failure.
COLLECT_EVERY = 16


class _Worker:
    def __init__(self, cfg: Config, datetime64: bool):
        from mailaudit.ingest.clickhouse import Database
        from mailaudit.ingest.privacy import AddressHasher

        self.cfg = cfg
        self.datetime64 = datetime64
        self.hasher = AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id)
        self.db = Database(cfg.clickhouse)


def _exit_with_parent(parent: int) -> None:
    """A worker must not outlive its consumer: a SIGKILLed consumer cannot stop it, and it would wait
    for work forever."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def build(w: _Worker, segments: list[tuple]):
    """Decode, parse and hash a ``RawBatch``'s segments into an ``ingest.batch.Batch`` (rows and
    rejects); offsets are the loop's business."""
    from mailaudit.ingest.batch import Batch

    batch = Batch(w.cfg, w.hasher, datetime64=w.datetime64)
    add = batch.add_record
    for topic, partition, offsets, timestamps, keys, values in segments:
        for offset, ts, key, value in zip(offsets, timestamps, keys, values):
            add(topic, partition, offset, ts, key, value)
    return batch


def insert(w: _Worker, batch) -> int:
    """Insert a built batch (events + address index); a failure becomes ``WorkerWriteFailed``."""
    from mailaudit.ingest.writer import insert_events

    try:
        insert_events(w.db, batch.rows)
    except Exception as e:  # noqa: BLE001 - reported to the loop, which retries the batch
        w.db.disconnect()
        raise WorkerWriteFailed(_error_text(e)) from None
    return len(batch.rows)


def _error_text(e: BaseException) -> str:
    """An exception as the plain text a reply carries (driver exceptions do not all pickle)."""
    first = str(e).splitlines()[0][:300] if str(e) else ""
    return f"{type(e).__name__}: {first}"


class WorkerLoop:
    """One worker process's work: this thread receives and decodes batches, an ``ingest-insert``
    thread inserts them; replies ``(seq, True, (rows, rejected))`` or ``(seq, False, message)`` in the
    order the inserts finish. Runs until the task pipe closes (its consumer is gone or closing)."""

    def __init__(self, w: _Worker, tasks, results, collect_every: int = COLLECT_EVERY):
        self.w = w
        self.tasks = tasks
        self.results = results
        self.collect_every = collect_every
        self._slot = threading.Semaphore(1)        # one batch being inserted
        self._handoff: queue.SimpleQueue = queue.SimpleQueue()
        self._send_lock = threading.Lock()
        self._done = 0

    def _reply(self, msg) -> None:
        with self._send_lock:
            self.results.send(msg)

    def run(self) -> None:
        inserter = threading.Thread(target=self._insert_loop, name="ingest-insert", daemon=True)
        inserter.start()
        try:
            while True:
                try:
                    seq, segments = self.tasks.recv()
                except (EOFError, OSError):
                    return
                try:
                    batch = build(self.w, segments)
                except Exception as e:  # noqa: BLE001 - a bug in decoding must fail the batch, not the worker
                    log.exception("building a batch failed")
                    self._reply((seq, False, _error_text(e)))
                    continue
                finally:
                    del segments
                self._slot.acquire()               # the previous batch's insert has returned
                self._handoff.put((seq, batch))
                del batch
        finally:
            self._handoff.put(None)
            inserter.join()

    def _insert_loop(self) -> None:
        while True:
            item = self._handoff.get()
            if item is None:
                return
            seq, batch = item
            del item
            try:
                n = insert(self.w, batch)
                reply = (seq, True, (n, batch.rejected))
                failed = False
            except WorkerWriteFailed as e:
                reply = (seq, False, str(e))
                failed = True
            # The rows are freed before the reply: once the loop hears of this batch, the worker holds
            # at most the one being decoded.
            del batch
            self._slot.release()
            self._done += 1
            if failed or self._done % self.collect_every == 0:
                gc.collect()
            try:
                self._reply(reply)
            except (BrokenPipeError, OSError):
                return                             # the consumer is gone


def _worker_main(cfg: Config, datetime64: bool, parent: int, tasks, results) -> None:
    _exit_with_parent(parent)
    gc.disable()
    w = _Worker(cfg, datetime64)
    results.send(("ready", os.getpid()))
    WorkerLoop(w, tasks, results).run()


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


class _Proc:
    """The consumer's end of one worker process: its pipes and the batches handed to it."""

    def __init__(self, process, tasks, results):
        self.process = process
        self.tasks = tasks                   # consumer -> worker
        self.results = results               # worker -> consumer
        self.pending: dict[int, Future] = {}
        self.send_lock = threading.Lock()
        self.alive = True


class BuildPool:
    """The worker processes. ``run(segments)`` blocks the calling thread (one of the consumer's writer
    threads) until a worker stored them. A worker takes at most two batches (``PER_WORKER``): one being
    inserted, one being decoded; further callers wait for a free place. A worker that dies fails the
    batches it held and is replaced; the failed ones are retried by the consumer."""

    PER_WORKER = 2

    def __init__(self, cfg: Config, datetime64: bool, workers: int):
        self.cfg = cfg
        self.datetime64 = datetime64
        self.workers = max(1, int(workers))
        self._ctx = multiprocessing.get_context("spawn")   # fork would copy the consumer's threads' locks
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._procs: list[_Proc] = [self._start() for _ in range(self.workers)]

    def pids(self) -> list[int]:
        with self._cond:
            return [p.process.pid for p in self._procs]

    def _start(self) -> _Proc:
        task_r, task_w = self._ctx.Pipe(duplex=False)
        res_r, res_w = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_worker_main, name="mailaudit-ingest-worker", daemon=True,
                                    args=(self.cfg, self.datetime64, os.getpid(), task_r, res_w))
        with _no_main_reimport():
            process.start()
        # Only the worker holds these ends now: its death closes them, and our reads see EOF.
        task_r.close()
        res_w.close()
        proc = _Proc(process, task_w, res_r)
        # Ready before the first batch (imports take ~1 s). A worker that dies while starting closes
        # its end: that reads as EOF, reported as the same failure to start.
        try:
            ready = res_r.poll(120) and res_r.recv()[0] == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            process.kill()
            task_w.close()
            res_r.close()
            raise RuntimeError("an ingest worker process did not start")
        threading.Thread(target=self._read_results, args=(proc,), name="ingest-worker-results", daemon=True).start()
        return proc

    def _read_results(self, proc: _Proc) -> None:
        while True:
            try:
                seq, ok, payload = proc.results.recv()
            except (EOFError, OSError):
                break
            with self._cond:
                fut = proc.pending.pop(seq, None)
                self._cond.notify_all()
            if fut is not None:
                if ok:
                    fut.set_result(payload)
                else:
                    fut.set_exception(WorkerWriteFailed(payload))
        self._lost(proc)

    def _lost(self, proc: _Proc) -> None:
        """The worker's pipe closed: unless closing, start its replacement, then fail what it held (so
        the consumer's retry of those batches finds a worker)."""
        with self._cond:
            proc.alive = False
            failed = list(proc.pending.values())
            proc.pending.clear()
            closing = self._closed
        proc.process.join(5)
        # Not under a sender's feet: a send to the dead worker fails at once (broken pipe) and lets go
        # of the lock; closing the end during that send would let its writes reach whatever pipe the
        # descriptor number is given to next (the replacement's).
        with proc.send_lock:
            proc.tasks.close()
        proc.results.close()
        new = None
        if not closing:
            log.error("an ingest worker process died; starting a new one (its %d batches will be retried)",
                      len(failed))
            try:
                new = self._start()
            except Exception:  # noqa: BLE001 - tried again below; batches wait for a worker meanwhile
                log.exception("starting a replacement ingest worker failed")
            with self._cond:
                if new is not None and self._closed:
                    new.tasks.close()               # closed meanwhile: this worker ends at once
                    new.process.join(5)
                elif new is not None:
                    self._procs[self._procs.index(proc)] = new
                self._cond.notify_all()
        for fut in failed:
            fut.set_exception(WorkerWriteFailed("ingest worker process died"))
        if not closing and new is None:
            threading.Timer(self.cfg.ingest.retry_initial_s, self._lost, args=(proc,)).start()

    def run(self, segments: list[tuple]) -> tuple[int, list[Rejected]]:
        """``segments``: a ``RawBatch``'s. Returns (rows stored, rejected records)."""
        fut: Future = Future()
        with self._cond:
            while True:
                if self._closed:
                    raise WorkerWriteFailed("ingest workers are closed")
                free = [p for p in self._procs if p.alive and len(p.pending) < self.PER_WORKER]
                if free:
                    break
                self._cond.wait()
            proc = min(free, key=lambda p: len(p.pending))
            seq = next(self._seq)
            proc.pending[seq] = fut
        try:
            with proc.send_lock:
                proc.tasks.send((seq, segments))
        except OSError:
            pass        # the worker died (or its pipe was closed): its reader fails ``fut``, pending there
        except Exception as e:  # noqa: BLE001 - nothing was sent (pickling comes first): not the worker's
            with self._cond:
                proc.pending.pop(seq, None)
                self._cond.notify_all()
            raise WorkerWriteFailed(f"could not hand a batch to a worker: {type(e).__name__}: {e}") from None
        return fut.result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            procs = list(self._procs)
            self._cond.notify_all()
        for p in procs:
            with p.send_lock, contextlib.suppress(OSError):
                p.tasks.close()        # the worker finishes what it holds, then its loop ends
        for p in procs:
            p.process.join(30)
            if p.process.is_alive():
                p.process.kill()
                p.process.join(5)
