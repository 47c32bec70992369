"""One detection engine per Kafka partition, behind the single engine's interface.

A service lives on one partition (key = service), and every piece of engine state belongs to one
service, so a partition's engine holds exactly the state that must move with the partition when the
consumer group rebalances: ``state_dict(tp)`` / ``load(tp, doc)`` / ``drop(tp)``. Splitting by
partition changes no alert: each service still sees its own events in order (the backtest's sharding
by service relies on the same independence).

The consumer calls ``select(tp)`` before feeding a partition's records; ``partition_of(service)``
says which partition an alert's records belong to (for the outbox handover).
"""

from __future__ import annotations

from typing import Any, Callable

from mailaudit.detect.alerts import Alert
from mailaudit.detect.engine import DetectionEngine
from mailaudit.detect.exposure import ExposureRow

TP = tuple[str, int]


class PartitionedEngine:
    def __init__(self, make_engine: Callable[[], DetectionEngine]):
        self._make = make_engine
        self.engines: dict[TP, DetectionEngine] = {}
        self._service_tp: dict[str, TP] = {}
        self._current: DetectionEngine | None = None
        self._current_tp: TP | None = None

    # -- routing ----------------------------------------------------------------------------------
    def engine(self, tp: TP) -> DetectionEngine:
        e = self.engines.get(tp)
        if e is None:
            e = self.engines[tp] = self._make()
            for name in e.services:
                self._service_tp[name] = tp
        return e

    def select(self, tp: TP) -> None:
        if tp != self._current_tp:
            self._current, self._current_tp = self.engine(tp), tp

    def partition_of(self, service: str) -> TP | None:
        return self._service_tp.get(service)

    # -- the engine interface ---------------------------------------------------------------------
    def process(self, event, parsed=None) -> list[Alert]:
        if self._current is None:
            self.select(("", 0))
        self._service_tp[event.service] = self._current_tp
        return self._current.process(event, parsed)

    def advance(self, watermark_ms: int) -> list[Alert]:
        out: list[Alert] = []
        for tp in sorted(self.engines):
            out.extend(self.engines[tp].advance(watermark_ms))
        return out

    def flush(self) -> list[Alert]:
        out: list[Alert] = []
        for tp in sorted(self.engines):
            out.extend(self.engines[tp].flush())
        return out

    def take_exposures(self) -> list[ExposureRow]:
        return [row for _, row in self.take_exposures_by_partition()]

    def take_exposures_by_partition(self) -> list[tuple[TP, ExposureRow]]:
        """Each row with the partition whose engine raised it: a row about a copy this replica never
        read (state restored from another's checkpoint) has no other way to its partition."""
        return [(tp, row) for tp in sorted(self.engines) for row in self.engines[tp].take_exposures()]

    def open_incidents(self):
        return [i for tp in sorted(self.engines) for i in self.engines[tp].open_incidents()]

    @property
    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for e in self.engines.values():
            for k, v in e.stats.items():
                total[k] = total.get(k, 0) + v
        return total

    # -- moving a partition -----------------------------------------------------------------------
    def state_dict(self, tp: TP) -> dict[str, Any]:
        return self.engine(tp).state_dict()

    def load(self, tp: TP, doc: dict[str, Any]) -> None:
        """Replace the partition's state by a checkpoint (a bad one raises; the partition is then cold)."""
        self.drop(tp)
        e = self._make()
        e.load_state(doc)
        self.engines[tp] = e
        for name in e.services:
            self._service_tp[name] = tp

    def drop(self, tp: TP) -> None:
        e = self.engines.pop(tp, None)
        if e is not None:
            for name in e.services:
                if self._service_tp.get(name) == tp:
                    del self._service_tp[name]
        if self._current_tp == tp:
            self._current, self._current_tp = None, None
