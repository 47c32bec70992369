"""Streaming spike detector for per-service volume and recipients-per-message series.

One instance per series; ``update(ts, value)`` once per observation in event-time order returns a
:class:`SpikeResult` with a continuous ``score`` in [0, 1], the ``alert`` decision and the figures
that explain it (``baseline``, ``threshold``, ...), learned from the past and the present only.
Pure standard library: no I/O, no clock, no randomness, picklable (the detection engine checkpoints
it), bounded memory (``state_size()`` stops growing once the history is full).

What it models (docs/spike-detector.md has the long version):

* **How rare is this value** for this series: the two-sided tail probability of the value among the
  last ``memory`` values, with an exponential tail fitted to the ``tail_k`` most extreme ones so a
  value far beyond anything seen still gets a finite, ordered probability. Runs of consecutive
  extreme values are stored once, as their peak (extreme-value *declustering*): a surge that lasted
  ten minutes counts as one past surge, not ten, so the next comparable surge is still rare. A run
  that goes on for longer than ``excursion_max`` updates is a new regime and is learned normally, so
  a level shift alerts once and is then the new normal.
* **How abrupt is it**: the same tail probability for the value minus the mean of the previous
  ``diff_lag`` values. A surge is both rare and abrupt; slow daily growth is neither.
  Its evidence is weighted by the autocorrelation of those deviations: for independent values
  (Poisson counts around a rhythm, per-message marks) the deviation *is* the value again.
* **Is it unusual for this time of day** (only when the series has a clear daily profile): the
  distance to the median of the same time-of-day slot on the last ``season_days`` days (± one slot),
  again as a tail probability of its own history, weighted by how much of the series' variation the
  daily profile explains.

The evidence is the negative log of the joint probability, minus the log of the number of values seen
(``strength``, in nats): how surprising the value is *given how many chances there were* to see
something this extreme. A series with 6000 quiet minutes behind it needs a bigger excess to alert than
one with 200, which is what keeps long benign histories from paging people. While the history is
younger than ``young_days`` a margin is added (a morning's rise looks like a surge until daily
cycles have been seen); nothing is scored during the first ``warmup`` updates.

**Alert once**: a spike is reported when its strength exceeds ``alert_strength`` *and* is a new high
for the current episode (above ``escalation`` x a running peak that decays with a time constant of
``refractory`` updates); the rows after it that are not stronger score 0. ``score`` is
``strength / (strength + alert_strength)`` for new evidence (0.5 = the alert line), else 0 — so a
threshold sweep over ``score`` (NAB) and the default ``alert`` agree at 0.5.

Entry points for offline scoring (NAB's ``score.py``): ``SpikeDetector`` (the result's ``score``),
``SpikeAlerts`` (``update`` returns the bool alert decision at the default configuration).
"""

from __future__ import annotations

import datetime as _dt
import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from typing import Any

__all__ = ["SpikeDetector", "SpikeAlerts", "SpikeResult", "DEFAULTS"]

STATE_FORMAT = "mailaudit.detect.spikes/1"

_EPOCH = _dt.datetime(1970, 1, 1)
_log = math.log
_exp = math.exp
_DAY = 86400.0
_HALF_DAY = 43200.0
_TINY = 1e-300
_RES = 0.005
_SPREAD = 0.05     # the tail scale is at least this x the tail threshold's distance from the median

# One configuration for every series (NAB and the product alike).
DEFAULTS: dict[str, Any] = dict(
    memory=6000,          # values kept per tail (rows): 21 days of 5-min data ...
    memory_days=8.0,      # ... but at least this many days (weekly patterns), up to 2 x memory rows
    tail_k=32,            # extremes the exponential tail is fitted to
    decluster_q=0.003,    # values beyond this quantile (each side) form excursions, stored as their peak
    excursion_max=8,      # an excursion longer than this is a new regime: learned value by value
    diff_lag=24,          # abruptness: value minus the mean of this many previous values
    diff_rho=0.2,         # abruptness counts fully once the deviations' lag-1 autocorrelation reaches this
    warmup=150,           # updates before any score or alert (the history must say what is normal)
    young_extra=10.0,     # extra nats demanded while the history is young, falling linearly to 0 at
    young_days=2.0,       # this age (days): until daily cycles have been seen, a rhythm's rise looks like a surge
    season_days=3,        # daily profile: median of the same slot on this many previous days
    season_tol=1,         # ... also comparing with the neighbouring slots (timing jitter)
    season_explained=(0.6, 0.3),  # profile weight 0 -> 1 as residual/deviation goes from 0.6 to 0.3
    refractory=200.0,     # decay time constant (updates) of the episode peak
    escalation=1.2,       # inside an episode, re-alert only above this x the decayed peak
    alert_excess=0.0,     # optionally also require the value to lie beyond the usual range (k-th most extreme
                          # value) by this x that range's distance from the median; 0 = evidence alone decides
    alert_strength=5.0,   # nats of surprise (after the look-elsewhere term) that make an alert
    two_sided=True,       # also score drops (speed/volume falling off a cliff); direction is reported
    schedules=True,       # weekly (15-min slots) and monthly (day-of-month hours) memory of the largest value:
    schedule_ratio=1.2,   # a rise up to this x the one seen at the same time of week/month is the schedule
)


class SpikeResult:
    """What one update found. ``score``/``alert`` drive decisions; the rest is alert evidence."""

    __slots__ = ("score", "alert", "strength", "value", "baseline", "expected", "threshold",
                 "direction", "source", "n", "warm")

    def __init__(self, score: float, alert: bool, strength: float, value: float, baseline: float | None,
                 expected: float | None, threshold: float | None, direction: str | None, source: str | None,
                 n: int, warm: bool):
        self.score = score              # continuous anomaly score in [0, 1]; 0.5 = alert line
        self.alert = alert              # the default decision: new evidence above the alert line
        self.strength = strength        # nats of surprise (before the alert-once rule), may be < 0
        self.value = value              # the observation
        self.baseline = baseline        # median of the remembered values
        self.expected = expected        # daily-profile expectation for this time of day (if learned)
        self.threshold = threshold      # value beyond which the value alone would alert (upper side)
        self.direction = direction      # "up" / "down" (which tail), None when unremarkable
        self.source = source            # "value" (rarity x abruptness) or "daily" (time-of-day profile)
        self.n = n                      # updates seen
        self.warm = warm                # True once past warm-up

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return "SpikeResult(%s)" % ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)


class _Tail:
    """Tail probabilities of a value among the last ``m`` stored values, with declustered extremes.

    ``srt`` is the sorted history and ``buf`` the same values in arrival order (for eviction).
    Values beyond the ``q`` quantile on either side that follow each other form an *excursion*,
    stored once as its most extreme value (always ``buf[-1]`` while it runs, since nothing else is
    appended meanwhile) until it has lasted ``emax`` values.
    """

    __slots__ = ("m", "k", "q", "emax", "srt", "buf", "side", "run")

    def __init__(self, m: int, k: int, q: float, emax: int):
        self.m, self.k, self.q, self.emax = m, k, q, emax
        self.srt: list[float] = []
        self.buf: deque[float] = deque()
        self.side = 0
        self.run = 0

    def upper(self, r: float, floor: float = 0.0) -> float:
        """P(value >= r), exponential beyond the k-th largest.

        ``floor`` bounds the tail's scale from below: with ties (counts, a constant series) the fitted
        scale can be 0, which would make the next distinct value infinitely surprising.
        """
        s = self.srt
        n = len(s)
        k = self.k
        c = n - bisect_left(s, r)
        if c >= k:
            return (c + 1.0) / (n + 1.0)
        u = s[n - k]
        beta = sum(s[n - k:]) / k - u
        f = _SPREAD * (u - s[n >> 1])
        if f > floor:
            floor = f
        if beta < floor:
            beta = floor
        if beta <= 0.0:
            beta = 1e-12 * (abs(u) + 1e-12)
        return (k / (n + 1.0)) * _exp(-(r - u) / beta)

    def lower(self, r: float, floor: float = 0.0) -> float:
        """P(value <= r), exponential below the k-th smallest."""
        s = self.srt
        n = len(s)
        k = self.k
        c = bisect_right(s, r)
        if c >= k:
            return (c + 1.0) / (n + 1.0)
        u = s[k - 1]
        beta = u - sum(s[:k]) / k
        f = _SPREAD * (s[n >> 1] - u)
        if f > floor:
            floor = f
        if beta < floor:
            beta = floor
        if beta <= 0.0:
            beta = 1e-12 * (abs(u) + 1e-12)
        return (k / (n + 1.0)) * _exp(-(u - r) / beta)

    def resolution(self) -> float:
        """A scale below which differences are not meaningful: 0.5 % of (|median| + central range)."""
        s = self.srt
        n = len(s)
        k = self.k
        return _RES * (abs(s[n >> 1]) + s[n - k] - s[k - 1])

    def upper_quantile_for(self, p: float) -> float | None:
        """The value whose upper tail probability is ``p`` (None when the history is too short)."""
        s = self.srt
        n = len(s)
        k = self.k
        if n < 2 * k:
            return None
        c = int(p * (n + 1.0)) - 1
        if c >= k:
            return s[n - c]
        u = s[n - k]
        beta = max(sum(s[n - k:]) / k - u, self.resolution())
        if beta <= 0.0:
            return u
        return u + beta * _log(k / ((n + 1.0) * p))

    def add(self, r: float) -> None:
        s = self.srt
        n = len(s)
        if n >= 64:
            qi = int(self.q * n)
            side = 1 if r > s[n - 1 - qi] else (-1 if r < s[qi] else 0)
            if side:
                if side == self.side and self.run < self.emax:
                    self.run += 1
                    old = self.buf[-1]
                    if (r > old) if side > 0 else (r < old):
                        del s[bisect_left(s, old)]
                        insort(s, r)
                        self.buf[-1] = r
                    return
                if side != self.side:
                    self.side = side
                    self.run = 1
            else:
                self.side = 0
        insort(s, r)
        b = self.buf
        b.append(r)
        if len(b) > self.m:
            del s[bisect_left(s, b.popleft())]

    def size(self) -> int:
        return len(self.srt) + len(self.buf)

    def to_state(self) -> dict[str, Any]:
        # srt is always sorted(buf): only the arrival order is kept
        return {"m": self.m, "k": self.k, "q": self.q, "emax": self.emax, "buf": list(self.buf),
                "side": self.side, "run": self.run}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "_Tail":
        t = cls(int(d["m"]), int(d["k"]), float(d["q"]), int(d["emax"]))
        t.buf = deque(float(v) for v in d["buf"])
        t.srt = sorted(t.buf)
        t.side, t.run = int(d["side"]), int(d["run"])
        return t


class _DailyProfile:
    """Median of the same time-of-day slot on the previous days, and how unusual today's distance is.

    A slot's values of the current day are averaged (per-message series have many per slot) and only
    join the profile half a day later, so a slot is never compared with today's own values.
    """

    __slots__ = ("nb", "tol", "days", "vals", "pend_t", "pend_sum", "pend_n", "pred", "tail",
                 "ead", "ese", "r0", "r1")

    def __init__(self, nb: int, days: int, tol: int, explained: tuple[float, float], tail: _Tail):
        self.nb, self.tol, self.days = nb, tol, days
        self.vals: list[list[float]] = [[] for _ in range(nb)]
        self.pend_t: list[float | None] = [None] * nb
        self.pend_sum = [0.0] * nb
        self.pend_n = [0] * nb
        self.pred: list[float | None] = [None] * nb
        self.tail = tail
        self.ead = 0.0                   # EW mean |value - baseline|
        self.ese = 0.0                   # EW mean |value - profile|
        self.r0, self.r1 = explained

    def _flush(self, j: int) -> None:
        v = self.vals[j]
        v.append(self.pend_sum[j] / self.pend_n[j])
        if len(v) > self.days:
            del v[0]
        w = sorted(v)
        m = len(w)
        if m >= 2:                       # one previous day is an anecdote, not a profile
            self.pred[j] = w[m // 2] if m % 2 else 0.5 * (w[m // 2 - 1] + w[m // 2])
        self.pend_t[j] = None

    def residual(self, t: float, x: float, flush: bool = True) -> tuple[float | None, float | None, int]:
        nb = self.nb
        b = int((t % _DAY) * nb / _DAY)
        if b >= nb:
            b = nb - 1
        best = None
        expected = None
        old = t - _HALF_DAY
        pend_t, pred = self.pend_t, self.pred
        for j in range(b - self.tol, b + self.tol + 1):
            j %= nb
            pt = pend_t[j]
            if flush and pt is not None and pt <= old:
                self._flush(j)
            pj = pred[j]
            if pj is not None:
                e = x - pj if x > pj else pj - x
                if best is None or e < best:
                    best, expected = e, pj
        return best, expected, b

    def learn(self, t: float, x: float, b: int, dev: float, best: float | None) -> None:
        self.ead += 0.01 * (dev - self.ead)
        if best is not None:
            self.ese += 0.01 * (best - self.ese)
            self.tail.add(best)
        if self.pend_t[b] is None:
            self.pend_t[b] = t
            self.pend_sum[b] = x
            self.pend_n[b] = 1
        else:
            self.pend_sum[b] += x
            self.pend_n[b] += 1

    def weight(self) -> float:
        if self.ead <= 0.0:
            return 0.0
        r = self.ese / self.ead
        w = (self.r0 - r) / (self.r0 - self.r1)
        return 0.0 if w <= 0.0 else (1.0 if w >= 1.0 else w)

    def size(self) -> int:
        return sum(len(v) for v in self.vals) + 5 * self.nb + self.tail.size()

    def to_state(self) -> dict[str, Any]:
        return {"nb": self.nb, "tol": self.tol, "days": self.days, "vals": [list(v) for v in self.vals],
                "pend_t": list(self.pend_t), "pend_sum": list(self.pend_sum), "pend_n": list(self.pend_n),
                "pred": list(self.pred), "tail": self.tail.to_state(), "ead": self.ead, "ese": self.ese,
                "explained": [self.r0, self.r1]}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "_DailyProfile":
        p = cls(int(d["nb"]), int(d["days"]), int(d["tol"]), tuple(d["explained"]), _Tail.from_state(d["tail"]))
        p.vals = [[float(x) for x in v] for v in d["vals"]]
        p.pend_t = [None if x is None else float(x) for x in d["pend_t"]]
        p.pend_sum = [float(x) for x in d["pend_sum"]]
        p.pend_n = [int(x) for x in d["pend_n"]]
        p.pred = [None if x is None else float(x) for x in d["pred"]]
        p.ead, p.ese = float(d["ead"]), float(d["ese"])
        return p


_WEEK = 7 * _DAY
_WEEK_SLOT = 900.0


class _Schedule:
    """The largest notable value of each slot of a cycle (a week, or a calendar month), per cycle, for
    the last ``keep`` previous cycles: "a value this large happened at this time of week / of month".

    Weekly slots are 15 minutes of the week; monthly slots are the hours of the month (day-of-month
    x 24), so a run on the 1st at 02:00 is the same slot every month. A ring of ``keep + 1`` cycles:
    entry ``(c % (keep + 1), slot)`` holds cycle ``c``'s maximum. Neighbouring slots are consulted too
    (timing jitter), with the cycle shifted where the neighbour wraps around the cycle's edge. Sparse:
    the detector only records notable (extreme) values, so a series without surges holds nothing;
    the ring bounds it at ``(keep + 1) x slots`` entries.
    """

    __slots__ = ("monthly", "nslot", "keep", "slots", "m0", "m1", "mc")

    def __init__(self, monthly: bool, keep: int = 2):
        self.monthly = monthly
        self.nslot = 31 * 24 if monthly else int(_WEEK // _WEEK_SLOT)
        self.keep = keep
        self.slots: dict[int, list] = {}     # ring index -> [cycle, largest value]
        self.m0 = self.m1 = 0.0              # current month [start, end) in epoch seconds, and its index
        self.mc = -1

    def _where(self, t: float) -> tuple[int, int]:
        if not self.monthly:
            return int(t // _WEEK), int((t % _WEEK) // _WEEK_SLOT)
        if not (self.m0 <= t < self.m1):
            d = _EPOCH + _dt.timedelta(seconds=t)
            y, m = d.year, d.month
            start = _dt.datetime(y, m, 1)
            end = _dt.datetime(y + (m == 12), m % 12 + 1, 1)
            self.m0, self.m1 = (start - _EPOCH).total_seconds(), (end - _EPOCH).total_seconds()
            self.mc = y * 12 + m - 1
        return self.mc, int((t - self.m0) // 3600.0)

    def seen(self, t: float) -> float | None:
        """Largest value at this slot (+- 1) in the previous ``keep`` cycles, None when never seen."""
        slots = self.slots
        if not slots:
            return None
        c, s = self._where(t)
        ns, r = self.nslot, self.keep + 1
        best = None
        for j, shift in ((s - 1, -1 if s == 0 else 0), (s, 0), (s + 1, 1 if s + 1 == ns else 0)):
            j %= ns
            lo, hi = c + shift - self.keep, c + shift - 1
            for q in range(r):
                e = slots.get(q * ns + j)
                if e is not None and lo <= e[0] <= hi and (best is None or e[1] > best):
                    best = e[1]
        return best

    def learn(self, t: float, x: float) -> None:
        c, s = self._where(t)
        i = (c % (self.keep + 1)) * self.nslot + s
        e = self.slots.get(i)
        if e is None or e[0] != c:
            self.slots[i] = [c, x]
        elif x > e[1]:
            e[1] = x

    def size(self) -> int:
        return 2 * (self.keep + 1) * self.nslot       # the bound (the dict holds at most this)

    def to_state(self) -> dict[str, Any]:
        return {"monthly": self.monthly, "keep": self.keep,
                "slots": [[i, e[0], e[1]] for i, e in sorted(self.slots.items())]}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "_Schedule":
        sc = cls(bool(d["monthly"]), int(d["keep"]))
        for i, c, x in d["slots"]:
            if not 0 <= int(i) < (sc.keep + 1) * sc.nslot:
                raise ValueError("schedule slot out of range")
            sc.slots[int(i)] = [int(c), float(x)]
        return sc


def _epoch(ts: Any) -> float:
    if isinstance(ts, _dt.datetime):
        if ts.tzinfo is None:
            return (ts - _EPOCH).total_seconds()
        return ts.timestamp()
    return float(ts)


class SpikeDetector:
    """Streaming spike detector for one series (see the module docstring).

    ``SpikeDetector(**overrides)`` accepts the keys of :data:`DEFAULTS`; the defaults are the one
    configuration used everywhere. ``update(ts, value)`` learns and returns a :class:`SpikeResult`;
    ``ts`` is a ``datetime`` (naive = UTC) or epoch seconds. River-style ``learn_one`` /
    ``score_one`` are provided too (``score_one`` does not learn).
    """

    def __init__(self, **overrides: Any):
        unknown = set(overrides) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown SpikeDetector option(s): {', '.join(sorted(unknown))}")
        cfg = dict(DEFAULTS, **overrides)
        self.cfg = cfg
        m, k, q, emax = int(cfg["memory"]), int(cfg["tail_k"]), float(cfg["decluster_q"]), int(cfg["excursion_max"])
        self._mk = (m, k, q, emax)
        self._vals = _Tail(m, k, q, emax)
        self._diffs = _Tail(m, k, q, emax)
        self._lag: deque[float] = deque()
        self._lag_n = max(1, int(cfg["diff_lag"]))
        self._lag_sum = 0.0
        self._warmup = int(cfg["warmup"])
        self._decay = _exp(-1.0 / float(cfg["refractory"])) if cfg["refractory"] else 0.0
        self._esc = float(cfg["escalation"])
        self._alert = float(cfg["alert_strength"])
        self._excess = float(cfg["alert_excess"])
        self._two = bool(cfg["two_sided"])
        self._peak = 0.0
        self.n = 0
        self._rho0 = float(cfg["diff_rho"])
        self._young = float(cfg["young_extra"])
        self._young_s = float(cfg["young_days"]) * _DAY
        self._t0: float | None = None
        self._var = 0.0                  # EW second moment and lag-1 covariance of the deviation d
        self._cov = 0.0                  # (value - recent mean), alpha 0.01
        self._prev: float | None = None
        # daily profile: slot width from the median spacing of the first updates
        self._deltas: list[float] = []
        self._last_t: float | None = None
        self._daily: _DailyProfile | None = None
        self._sched: list[_Schedule] = [_Schedule(False), _Schedule(True)] if cfg["schedules"] else []
        self._sched_ratio = float(cfg["schedule_ratio"])

    # -- public API ------------------------------------------------------------------------------

    def update(self, ts: Any, value: float) -> SpikeResult:
        """Score ``value`` observed at ``ts`` against the past, then learn it."""
        t = _epoch(ts)
        x = float(value)
        if x != x or x in (math.inf, -math.inf):
            return SpikeResult(0.0, False, 0.0, x, self._baseline(), None, None, None, None, self.n,
                               self.n >= self._warmup)
        res, learn = self._evaluate(t, x)
        self._learn(t, x, learn)
        return res

    def learn_zeros(self, times: Any) -> None:
        """Learn a value of 0 at each of ``times`` (epoch seconds, in order): the state afterwards is
        exactly what ``update(t, 0)`` for each ``t`` leaves (tested, including ``to_state()``), but no
        result is built for anyone. The engine feeds a lull's empty buckets this way; they are most of
        a sparse service's updates and their results were never read.

        What is skipped is only what the results need: the alert threshold and the result object;
        before warm-up also the evidence (it then cannot raise the episode peak, the only state it
        touches). Everything the state depends on runs the same code in the same order, so the floats
        are the same bits. There is no closed form for a run: the tails' sorted histories, the
        excursion bookkeeping, the daily profile's flushes and the decaying peak all move on each zero.
        """
        evaluate, learn = self._evaluate, self._learn
        decay = self._decay
        warmup = self._warmup
        lag = self._lag
        lag_n = self._lag_n
        for t in times:
            t = float(t)
            if self.n >= warmup:
                learn(t, 0.0, evaluate(t, 0.0, result=False)[1])
                continue
            # before warm-up: what _evaluate hands to _learn, without the evidence (score 0, peak decays)
            s = self._vals.srt
            d = 0.0 - self._lag_sum / lag_n if len(lag) == lag_n else None
            daily = self._daily
            ld = None
            if daily is not None:
                best, _, b = daily.residual(t, 0.0)
                ld = (b, best)
            learn(t, 0.0, (d, self._peak * decay, ld, s[len(s) >> 1] if s else None))

    def learn_one(self, x: Any, ts: Any = None) -> "SpikeDetector":
        """River style: learn ``x`` (a number or ``{"value": v, "ts": t}``) without returning a score."""
        t, v = self._unpack(x, ts)
        self.update(t, v)
        return self

    def score_one(self, x: Any, ts: Any = None) -> float:
        """River style: the score ``x`` would get now, without learning it."""
        t, v = self._unpack(x, ts)
        return self.peek(t, v).score

    def peek(self, ts: Any, value: float) -> SpikeResult:
        """The full result ``update(ts, value)`` would return now, without learning anything (the
        engine's early verdict on a volume bucket that is still filling)."""
        x = float(value)
        if x != x or x in (math.inf, -math.inf):
            return SpikeResult(0.0, False, 0.0, x, self._baseline(), None, None, None, None, self.n,
                               self.n >= self._warmup)
        return self._evaluate(_epoch(ts), x, peek=True)[0]

    def state_size(self) -> int:
        """Number of floats/slots held (for memory-bound checks): constant once the history is full."""
        d = self._daily.size() if self._daily is not None else len(self._deltas)
        return self._vals.size() + self._diffs.size() + len(self._lag) + d + sum(c.size() for c in self._sched)

    def to_state(self) -> dict[str, Any]:
        """Everything the detector knows, as plain JSON types (dicts, lists, numbers, None, bool).

        ``SpikeDetector.from_state(json.loads(json.dumps(det.to_state())))`` continues exactly where
        ``det`` stopped (tested). The configuration is part of the state."""
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.cfg.items()}
        return {
            "format": STATE_FORMAT, "cfg": cfg, "mk": list(self._mk), "n": self.n,
            "vals": self._vals.to_state(), "diffs": self._diffs.to_state(),
            "lag": list(self._lag), "lag_sum": self._lag_sum, "peak": self._peak, "t0": self._t0,
            "var": self._var, "cov": self._cov, "prev": self._prev, "deltas": list(self._deltas),
            "last_t": self._last_t, "daily": self._daily.to_state() if self._daily is not None else None,
            "sched": [sc.to_state() for sc in self._sched],
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "SpikeDetector":
        if d.get("format") != STATE_FORMAT:
            raise ValueError(f"not a spike detector state (format {d.get('format')!r})")
        cfg = {k: (tuple(v) if isinstance(DEFAULTS[k], tuple) else v) for k, v in d["cfg"].items() if k in DEFAULTS}
        det = cls(**cfg)
        det._mk = tuple(d["mk"])
        det.n = int(d["n"])
        det._vals = _Tail.from_state(d["vals"])
        det._diffs = _Tail.from_state(d["diffs"])
        det._lag = deque(float(x) for x in d["lag"])
        det._lag_sum = float(d["lag_sum"])
        det._peak = float(d["peak"])
        det._t0 = None if d["t0"] is None else float(d["t0"])
        det._var, det._cov = float(d["var"]), float(d["cov"])
        det._prev = None if d["prev"] is None else float(d["prev"])
        det._deltas = [float(x) for x in d["deltas"]]
        det._last_t = None if d["last_t"] is None else float(d["last_t"])
        det._daily = _DailyProfile.from_state(d["daily"]) if d["daily"] is not None else None
        det._sched = [_Schedule.from_state(x) for x in d["sched"]]
        return det

    # -- internals -------------------------------------------------------------------------------

    def _unpack(self, x: Any, ts: Any) -> tuple[Any, Any]:
        if isinstance(x, dict):
            return x.get("ts", ts if ts is not None else self._last_t or 0.0), x["value"]
        return (ts if ts is not None else (self._last_t or 0.0)), x

    def _baseline(self) -> float | None:
        s = self._vals.srt
        return s[len(s) // 2] if s else None

    def _beyond(self, x: float) -> bool:
        """Is ``x`` clearly outside the usual range, not just at its edge?"""
        s = self._vals.srt
        n = len(s)
        k = self._vals.k
        if n < 2 * k:
            return True
        med = s[n >> 1]
        hi = s[n - k]
        if x >= med:
            return x >= hi + self._excess * (hi - med)
        lo = s[k - 1]
        return x <= lo - self._excess * (med - lo)

    def _explained(self, t: float, x: float, baseline: float) -> float:
        """Is a value this high explained by the weekly/monthly schedule (1) or not (0)?

        ``seen`` is the largest value at this time of week (or of month, +- one slot) in the previous
        cycles; it counts only if it was itself extreme (beyond the ``tail_k``-th largest remembered
        value): a schedule is a recurring *surge*, ordinary highs are the daily profile's. A rise over
        the baseline up to ``schedule_ratio`` x that seen rise is the schedule again (a blast's size
        varies a little from week to week); a larger one is a real surge at the scheduled time and is
        scored as usual."""
        seen = None
        for sc in self._sched:
            v = sc.seen(t)
            if v is not None and (seen is None or v > seen):
                seen = v
        if seen is None or seen <= baseline:
            return 0.0
        srt, k = self._vals.srt, self._vals.k
        if len(srt) >= 2 * k and seen < srt[len(srt) - k]:
            return 0.0                   # what was seen there was ordinary (the daily profile's business)
        return 1.0 if x - baseline <= self._sched_ratio * (seen - baseline) else 0.0

    def _evaluate(self, t: float, x: float, peek: bool = False, result: bool = True):
        vals = self._vals
        s = vals.srt
        n = len(s)
        k2 = 2 * vals.k
        strength = -math.inf
        direction = None
        source = None
        baseline = s[n >> 1] if n else None
        lag = self._lag
        d = None
        if len(lag) == self._lag_n:
            d = x - self._lag_sum / self._lag_n
        if n >= k2:
            res = vals.resolution()
            pu = vals.upper(x, res)
            pl = vals.lower(x, res) if self._two else 1.0
            if pu <= pl:
                pv, direction = pu, "up"
            else:
                pv, direction = pl, "down"
            if self._two:
                pv = min(1.0, 2.0 * pv)
            pd = 1.0
            diffs = self._diffs
            if d is not None and len(diffs.srt) >= k2:
                # abruptness: a jump (or fall) this large relative to the recent mean
                pd = diffs.upper(d, res)
                pl = diffs.lower(d, res)
                pd = 2.0 * (pd if pd < pl else pl)
                if pd > 1.0:
                    pd = 1.0
            # When the deviations from the recent mean are themselves independent (Poisson counts around
            # a rhythm, per-message marks), the deviation is just the value again: counting both would
            # square the evidence. So abruptness counts in proportion to the deviations' autocorrelation.
            w = 0.0
            if pd < 1.0 and self._var > 0.0:
                w = self._cov / (self._var * self._rho0) if self._rho0 > 0.0 else 1.0
                w = 0.0 if w <= 0.0 else (1.0 if w >= 1.0 else w)
            strength = -_log(pv + _TINY) - w * _log(pd + _TINY) - _log(n + 1.0)
            source = "value"
        expected = None
        learn_daily = None
        daily = self._daily
        if daily is not None:
            best, expected, b = daily.residual(t, x, flush=not peek)
            if n < k2:
                res = 0.0
            learn_daily = (b, best)
            w = daily.weight()
            tail = daily.tail
            ns = len(tail.srt)
            if best is not None and w > 0.0 and ns >= k2:
                ls = w * (-_log(tail.upper(best, res) + _TINY) - _log(ns + 1.0))
                if ls > strength:
                    strength = ls
                    source = "daily"
                    direction = "up" if expected is not None and x >= expected else "down"
        explained = 0.0
        if self._sched and strength > 0.0 and baseline is not None and x > baseline:
            explained = self._explained(t, x, baseline)
            if explained > 0.0:
                strength *= 1.0 - explained
        if self._young and strength != -math.inf:
            t0 = self._t0
            age = (t - t0) / self._young_s if t0 is not None and self._young_s > 0.0 else 1.0
            if age < 1.0:
                strength -= self._young * (1.0 - (age if age > 0.0 else 0.0))
        warm = self.n >= self._warmup
        score = 0.0
        alert = False
        new_peak = self._peak * self._decay
        if warm and strength > 0.0:
            if strength > self._esc * new_peak:
                score = strength / (strength + self._alert)
                alert = strength >= self._alert and (self._excess <= 0.0 or self._beyond(x))
            if strength > new_peak:
                new_peak = strength
        if not result:
            return None, (d, new_peak, learn_daily, baseline)
        if not warm:
            direction = source = None
        threshold = None
        if alert or peek is False and warm and score > 0.0:
            threshold = vals.upper_quantile_for(_exp(-self._alert) / (n + 1.0) / (2.0 if self._two else 1.0))
        res = SpikeResult(score, alert, strength if strength != -math.inf else 0.0, x, baseline, expected,
                          threshold, direction if score > 0.0 else None, source if score > 0.0 else None,
                          self.n + 1, warm)
        return res, (d, new_peak, learn_daily, baseline)

    def _learn(self, t: float, x: float, learn) -> None:
        d, new_peak, learn_daily, baseline = learn
        if self._t0 is None:
            self._t0 = t
        self.n += 1
        self._peak = new_peak
        sched = self._sched
        if sched:
            srt, k = self._vals.srt, self._vals.k
            if len(srt) < 2 * k or x >= srt[len(srt) - k]:     # only notable values can explain a surge
                for sc in sched:
                    sc.learn(t, x)
        self._vals.add(x)
        if d is not None:
            self._diffs.add(d)
        if d is not None:
            prev = self._prev
            if prev is not None:
                self._var += 0.01 * (d * d - self._var)
                self._cov += 0.01 * (d * prev - self._cov)
            self._prev = d
        lag = self._lag
        lag.append(x)
        self._lag_sum += x
        if len(lag) > self._lag_n:
            self._lag_sum -= lag.popleft()
        if self.n % 4096 == 0:
            self._lag_sum = math.fsum(lag)     # no drift from running sums
        daily = self._daily
        if daily is not None:
            b, best = learn_daily
            daily.learn(t, x, b, abs(x - baseline) if baseline is not None else 0.0, best)
        else:
            last = self._last_t
            if last is not None and t > last:
                self._deltas.append(t - last)
                if len(self._deltas) >= 16:
                    dd = sorted(self._deltas)
                    step = dd[len(dd) // 2]
                    nb = max(24, min(1440, int(round(_DAY / step))))
                    m, k, q, emax = self._mk
                    # fine-grained series (1-min buckets, per-message values) keep a longer history
                    m = max(m, min(2 * m, int(math.ceil(float(self.cfg["memory_days"]) * _DAY / step))))
                    self._mk = (m, k, q, emax)
                    self._vals.m = self._diffs.m = m
                    self._daily = _DailyProfile(nb, int(self.cfg["season_days"]), int(self.cfg["season_tol"]),
                                                tuple(self.cfg["season_explained"]), _Tail(m, k, q, emax))
                    self._deltas = []
        self._last_t = t


class SpikeAlerts(SpikeDetector):
    """The same detector whose ``update`` returns only the alert decision (a bool), for scoring what
    users actually get (``score.py mailaudit.detect.spikes:SpikeAlerts``)."""

    def update(self, ts: Any, value: float) -> bool:  # type: ignore[override]
        return super().update(ts, value).alert
