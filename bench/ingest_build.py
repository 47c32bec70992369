"""The ingest worker's own work, alone: decode + parse + hash + row building of the bench's records.

``mailaudit bench ingest`` says what the whole consumer does on a shared machine, where one run's
figure moves by more than a change of a few microseconds per event. This times only the part the bare
sides of its ratio do not share, in this process, as an ingest worker runs it (``Batch.add_record`` in
batches, columns and index rows built, the collector off), so two versions can be compared by
interleaving runs of each. CPU time, the best of ``passes`` (the hasher's cache is cleared between
passes: every address is new, as in a first pass over a population).

``python -m mailaudit.bench.ingest_build [events] [passes]`` (default 50,000 events, 3 passes, ~15 s
here) prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
import uuid

from mailaudit.bench.ingest import _events
from mailaudit.config import Config
from mailaudit.ingest.batch import Batch
from mailaudit.ingest.pool import paused_gc
from mailaudit.ingest.privacy import AddressHasher


def ingest_build(n: int = 50_000, passes: int = 3, batch_size: int = 5000) -> dict:
    msgs = _events(n, seed=7)
    cfg = Config()
    cfg.privacy.hash_key = uuid.uuid4().hex
    hasher = AddressHasher(cfg.require_hash_key())
    per_pass = []
    for _ in range(passes):
        hasher.clear()
        rows = 0
        t0 = time.process_time()
        for i in range(0, len(msgs), batch_size):
            with paused_gc():
                batch = Batch(cfg, hasher, datetime64=True)
                for j, (key, value) in enumerate(msgs[i:i + batch_size]):
                    batch.add_record("t", 0, i + j, 0, key, value)
                batch.rows.columns()
                batch.rows.index_columns()
                rows += len(batch.rows)
                del batch
        per_pass.append((time.process_time() - t0) / len(msgs) * 1e6)
    return {"events": len(msgs), "rows": rows, "batch_size": batch_size,
            "cpu_us_per_event": min(per_pass), "cpu_us_per_event_passes": [round(x, 2) for x in per_pass]}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(ingest_build(*args), indent=2))
