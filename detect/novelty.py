"""Recipient-count novelty: an order-of-magnitude jump in recipients per message, without warm-up.

The statistical spike detector (``detect/spikes.py``) needs a history before it says anything (150
updates), and a service that has sent two hundred single-recipient receipts has no *statistical*
case against the next message having 400 recipients — but it has an obvious practical one: nothing
like it was ever sent. This check answers exactly that question, from the message's own service
history of any length:

    alert when  recipients >= factor x reference  and the history holds >= min_history messages

``reference`` is the largest recipient count of the service's history after setting aside its top
1 % (for fewer than 100 messages: the largest ever seen), so one past outlier does not blind it for
ever, yet a count the service has *sent before* is never novel. Ordinary growth — each new
largest message a little larger than the last — never reaches 10x the reference. The history is
kept as a histogram of log-spaced bins (8 per decade, each with its largest count): bounded memory
(at most ~60 bins for up to 10^7 recipients), plain numbers, so the state is JSON.

Pure logic: no I/O, no clock. The engine calls :meth:`RecipientNovelty.update` once per message,
before the message joins the volume bucket, and applies the mail-unit minimum (``min_recipients``)
itself (``detect/engine.py`` ``_spikes``).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["RecipientNovelty", "KindNovelty", "NoveltyResult", "message_kind"]

STATE_FORMAT = "mailaudit.detect.novelty/1"
_BINS_PER_DECADE = 8
_TRIM = 0.01                 # share of the history's largest counts set aside for the reference
_HALVE_AT = 1 << 24          # counts are halved past this many messages (bounded integers, recent-leaning)


class NoveltyResult:
    __slots__ = ("novel", "value", "reference", "ratio", "history")

    def __init__(self, novel: bool, value: float, reference: float | None, history: int):
        self.novel = novel
        self.value = value
        self.reference = reference
        self.ratio = (value / reference) if reference else None
        self.history = history

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def _finite(v: float) -> bool:
    """A count the model can learn: NaN and infinities are judged not novel and never learned."""
    return v == v and v not in (math.inf, -math.inf)


def _bin(v: float) -> int:
    return -1 if v < 1.0 else int(math.log10(v) * _BINS_PER_DECADE)


class RecipientNovelty:
    """One per service. ``update(ts, value)`` -> :class:`NoveltyResult` (then learns the value)."""

    def __init__(self, factor: float = 10.0, min_history: int = 5):
        self.factor = float(factor)
        self.min_history = int(min_history)
        self.n = 0
        self.count: dict[int, int] = {}     # bin -> messages
        self.top: dict[int, float] = {}     # bin -> largest value in it

    def reference(self) -> float | None:
        """The largest count once the top 1 % of the history is set aside (None: no history)."""
        if not self.n:
            return None
        skip = int(_TRIM * self.n)
        for b in sorted(self.count, reverse=True):
            c = self.count[b]
            if c > skip:
                return self.top[b]
            skip -= c
        return None

    def update(self, ts: Any, value: float) -> NoveltyResult:
        v = float(value)
        if not _finite(v):
            return NoveltyResult(False, v, None, self.n)
        ref = self.reference()
        novel = (self.n >= self.min_history and ref is not None and ref > 0.0 and v >= self.factor * ref)
        res = NoveltyResult(novel, v, ref, self.n)
        self.learn(v)
        return res

    def learn(self, v: float) -> None:
        b = _bin(v)
        self.count[b] = self.count.get(b, 0) + 1
        if v > self.top.get(b, -math.inf):
            self.top[b] = v
        self.n += 1
        if self.n >= _HALVE_AT:
            self.count = {k: c // 2 for k, c in self.count.items() if c // 2}
            self.top = {k: t for k, t in self.top.items() if k in self.count}
            self.n = sum(self.count.values())

    # -- state (JSON: plain dicts, lists and numbers) ----------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "factor": self.factor, "min_history": self.min_history, "n": self.n,
                "bins": [[b, self.count[b], self.top[b]] for b in sorted(self.count)]}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "RecipientNovelty":
        if d.get("format") != STATE_FORMAT:
            raise ValueError(f"not a recipient-novelty state (format {d.get('format')!r})")
        obj = cls(d["factor"], d["min_history"])
        obj.n = int(d["n"])
        for b, c, t in d["bins"]:
            obj.count[int(b)] = int(c)
            obj.top[int(b)] = float(t)
        return obj

    def state_size(self) -> int:
        return 2 * len(self.count) + 1


_CAMPAIGN_KIND = "\x00campaign"     # template-less campaign mail: one kind (campaign ids are one-off)


def message_kind(template: str | None, campaign: str | None) -> str:
    """The kind of message a recipient count is judged against.

    A template is one kind of message, and its recipient count is a property of the kind: receipts
    go to one customer, a timetable to a Bcc batch of forty. So a receipt template suddenly mailed to
    300 envelope recipients is novel (a bug passing the whole list as RCPT TO), while a *new* kind
    — a first Bcc batch, an all-hands, a campaign in 50-recipient submissions — has no history of its
    own and is not judged on its size: what it shows is the disclosure rules' business, and a
    Bcc-only envelope exposes nobody. Template-less campaign mail is one kind (campaign ids change
    with every send); template-less, campaign-less mail is another.
    """
    if template:
        return template
    return _CAMPAIGN_KIND if campaign else ""


class KindNovelty:
    """Recipient novelty per message kind of one service (:func:`message_kind`); at most
    ``max_kinds`` kinds, least recently seen dropped first (bounded memory)."""

    def __init__(self, max_kinds: int = 256, factor: float = 10.0, min_history: int = 5):
        self.max_kinds = int(max_kinds)
        self.factor = float(factor)
        self.min_history = int(min_history)
        self.kinds: dict[str, RecipientNovelty] = {}

    def _model(self, kind: str) -> RecipientNovelty:
        """The kind's model, made on first sight, moved to the most recently seen end."""
        nov = self.kinds.pop(kind, None)
        if nov is None:
            nov = RecipientNovelty(self.factor, self.min_history)
            if len(self.kinds) >= self.max_kinds:
                del self.kinds[next(iter(self.kinds))]
        self.kinds[kind] = nov                   # re-inserted: dict order = least recently seen first
        return nov

    def update(self, ts: Any, value: float, kind: str = "") -> NoveltyResult:
        return self._model(kind).update(ts, value)

    def learn(self, value: float, kind: str = "") -> None:
        """``update`` without its verdict, for a message too small to be a spike whatever its kind's
        history (the engine's ``min_recipients``): the same state afterwards, without working out the
        kind's reference (a sort of its bins) and a result for each of the bulk of messages."""
        nov = self._model(kind)
        v = float(value)
        if _finite(v):
            nov.learn(v)

    def to_state(self) -> dict[str, Any]:
        return {"format": KIND_STATE_FORMAT, "max_kinds": self.max_kinds, "factor": self.factor,
                "min_history": self.min_history, "kinds": [[k, v.to_state()] for k, v in self.kinds.items()]}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "KindNovelty":
        if d.get("format") != KIND_STATE_FORMAT:
            raise ValueError(f"not a per-kind recipient-novelty state (format {d.get('format')!r})")
        obj = cls(d["max_kinds"], d["factor"], d["min_history"])
        for k, s in d["kinds"]:
            obj.kinds[str(k)] = RecipientNovelty.from_state(s)
        return obj


KIND_STATE_FORMAT = "mailaudit.detect.novelty.kinds/1"
