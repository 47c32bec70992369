"""The detection engine: events in (any service, roughly in event-time order), alerts out.

Pure and single-threaded: no Kafka, no ClickHouse, no wall clock (except ``detected_at`` through the
injected ``clock``), so the live consumer, ``mailaudit backtest`` and the tests run the same code and
a replay of a day reproduces the day's alerts, ids included.

Time: each service has its own event clock (the latest ``sent_at`` seen) and watermark
(clock - ``lateness_s``). An event older than its service's watermark is *late*: counted in
``stats['late']``, still checked for disclosure (a leak is a leak), but it never re-opens a closed
volume bucket nor feeds the spike detectors. Volume buckets close, and incidents resolve, when the
watermark passes them; copies waiting for sibling submissions are decided when the event clock passes
their deadline (the wait is a few seconds, so it runs ahead of the lateness window on purpose; a copy
that arrives after its service's clock has passed its send time waits from its arrival, ``_arrival``). The I/O
layer calls ``advance(now - lateness)`` about once a second — not only when a poll comes back empty:
under steady traffic on one service the others would otherwise never close their buckets, decide
their waiting copies or resolve their incidents; ``flush()`` ends the input (backtest).

State is bounded: sibling and repeat indexes expire after a few seconds of event time and are capped;
copies waiting for siblings are capped (``max_pending``, the oldest decided early); campaign/template
volume series are capped per service and dropped when idle; ``exposed`` switches to a sketch; the
address cache is cleared when full. ``state_dict()``/``load_state()`` checkpoint everything (see
their docstrings).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from typing import Any, Callable

from mailaudit.config import ConfigError, DetectConfig
from mailaudit.detect.alerts import DISCLOSURE, SPIKE, Alert
from mailaudit.detect.exposure import AddressBook, AddrInfo, ExposureRow, exposed_in_copy, exposure_rows, \
    fingerprint_ids
from mailaudit.detect.incidents import Incident, IncidentTracker
from mailaudit.detect.novelty import KindNovelty, message_kind
from mailaudit.detect.org import OrgModel, is_consumer, org_domain
from mailaudit.detect.slips import SlipTracker
from mailaudit.detect.signals import (
    BCC_HEADER, CONCATENATED_TO, FIRE, RUN_TOGETHER, VISIBLE_DISCLOSURE, WAIT, Signals, disclosed_addresses,
    disclosure_signals, trivially_benign, visible_view,
)
from mailaudit.ingest.parsed import ParsedEvent, parse_event
from mailaudit.ingest.wire import Event, format_time

STATE_FORMAT = "mailaudit.detect.engine/2"
_NEVER = -(1 << 62)
_MAX_REPEAT = 10_000           # (campaign, visible list) pairs remembered per service
_MAX_SIBLINGS = 200_000        # Message-IDs remembered per service for the group wait
_SIB_SET_FROM = 32             # a sibling entry's ids: a tuple up to this many, a set above (see _sib_entry)
_FP_CACHE = 10_000             # visible lists remembered per incident for exposed counting
_FULL = "full"
_VIEW_MIN = 20                 # visible addresses from which a list's analysis is cached across copies
_VIEW_CACHE = 64
_FP = "\x00fp:"                # sibling index key prefix: copies by visible list rather than Message-ID
_ORG = "\x00org"               # incident cache key: ids of the organisation's own addresses exposed
_ORG_H = "\x00orgh"            # ... and their keyed hashes (with a hash key), for the exposure report
_ORG_HASHES_MAX = 100          # org-side hashes quoted in evidence
_MAX_ORG_EXPOSED = 1000


# Feed a lull's zeros through the detector's ``learn_zeros`` when it has one (same state, less work);
# False = one ``update`` per empty bucket (the equivalence test runs both).
FAST_ZEROS = True


def _default_spike_factory():
    from mailaudit.detect.spikes import SpikeDetector
    return SpikeDetector()


@dataclass(slots=True)
class _Meta:
    """What an alert needs from its trigger event (no header values, so no raw addresses)."""

    event_id: str
    sent_at_ms: int
    service: str
    campaign: str | None
    template: str | None
    message_id: str

    @classmethod
    def of(cls, e: Event) -> "_Meta":
        return cls(e.event_id, e.sent_at_ms, e.service, e.campaign, e.template, e.message_id)

    @property
    def scope(self) -> str:
        return self.campaign or self.template or ""


@dataclass(slots=True)
class _Pending:
    """A copy with a few strangers, waiting for sibling submissions of its Message-ID."""

    deadline_ms: int
    seq: int
    meta: _Meta
    sig: Signals                     # strangers replaced by () — ids below
    stranger_ids: tuple[int, ...]
    disclosed: tuple[AddrInfo, ...]
    envelope_ids: frozenset[int]
    fingerprint: str | None
    org_ids: frozenset[int] = frozenset()   # visible addresses on the organisation's side when it waited
    own_only: bool = False           # every stranger is at the service's own domain: maybe a role address
    extended: bool = False           # already given the longer wait for role learning

    def __lt__(self, other: "_Pending") -> bool:
        return (self.deadline_ms, self.seq) < (other.deadline_ms, other.seq)


@dataclass(slots=True)
class _Bucket:
    count: int = 0
    trig_ms: int = _NEVER            # the bucket's trigger event (see _count)
    trig_id: str = ""
    campaign: str | None = None
    template: str | None = None
    rmax: int = -1                   # service-wide series only: the largest envelope of the bucket ...
    rmax_ms: int = 0                 # ... and its message (earliest on ties)
    rmax_id: str = ""
    rmax_campaign: str | None = None
    rmax_template: str | None = None
    peek_at: int = 0                 # service-wide series: count at which to ask the detector early again
    early: bool = False              # ... and whether it already alerted on the filling bucket


class _Series:
    """Messages per bucket for one scope (the service, or one campaign/template)."""

    __slots__ = ("scope", "det", "buckets", "closed_until_ms", "last_event_ms")

    def __init__(self, scope: str, det):
        self.scope = scope
        self.det = det
        self.buckets: dict[int, _Bucket] = {}
        self.closed_until_ms: int | None = None
        self.last_event_ms = _NEVER


class _Service:
    def __init__(self, name: str, cfg: DetectConfig, spike_factory):
        self.name = name
        self.max_seen_ms = _NEVER
        self.watermark_ms = _NEVER
        self.clock_ms = _NEVER
        self.siblings: dict[str, tuple] = {}            # message_id -> (envelope ids, expiry_ms): _sib_entry
        self.sibling_q: deque[tuple[int, str]] = deque()
        self.pending: list[_Pending] = []               # heap by deadline
        self.repeat: OrderedDict[tuple[str, str], list] = OrderedDict()  # (campaign, fp) -> [message ids, expiry]
        self.volume: _Series | None = None
        self.keyed: OrderedDict[str, _Series] = OrderedDict()
        self.next_close_ms = 1 << 62
        self.recip = None
        self.org = OrgModel()                           # who is "us" (detect/org.py)
        self.slips = SlipTracker()                      # per-copy slips (detect/slips.py)
        self.bind(cfg, spike_factory)

    def bind(self, cfg: DetectConfig, spike_factory) -> None:
        """(Re)attach the rules: config is never part of a checkpoint, a restart takes the current one."""
        self.rules = cfg.disclosure_for(self.name)
        self.spikes = cfg.spikes_for(self.name)
        self.bucket_ms = int(self.spikes.bucket_s * 1000)
        self.wait_ms = int(self.rules.group_wait_s * 1000)
        self.keep_ms = self.wait_ms + int(cfg.lateness_s * 1000)
        r = self.rules
        self.org.bind(r.org_domains, r.role_addresses, r.role_learn_copies, r.role_max)
        if self.spikes.enabled:
            if self.volume is None:
                self.volume = _Series("", spike_factory())
            if self.recip is None:
                self.recip = spike_factory()
            if not isinstance(getattr(self, "novelty", None), KindNovelty):   # (older checkpoints)
                self.novelty = KindNovelty()


def _sib_entry(ids, expiry_ms: int) -> tuple:
    """One sibling-index entry, ``(envelope ids, expiry_ms)``, in a form the cyclic GC can forget.

    The index is the engine's largest long-lived state (~76,000 entries after a minute at 5,000
    events/s) and turns over every ``keep_ms``. As ``[set, expiry]`` lists every entry was two
    objects the collector tracks for good, so its young generation kept filling with them: measured
    in-process on the latency bench's stream, generation-0 pauses of 20-140 ms and generation-1
    pauses of 200-300 ms on the poll loop. A tuple holding only ints is untracked by the first
    collection that sees it, so it is scanned once, not at every collection while it lives. The ids
    stay a tuple (an entry is replaced, not changed, when a sibling adds to it; membership is a scan
    of at most ``_SIB_SET_FROM``) and become a set above that, so a large group's copies each add in
    O(their own ids), as before; those few entries stay tracked."""
    if len(ids) <= _SIB_SET_FROM:
        return (ids if type(ids) is tuple else tuple(ids), expiry_ms)
    return (ids if type(ids) is set else set(ids), expiry_ms)


def _arrival(sent_at_ms: int, svc: _Service) -> int:
    """When a copy's group wait starts: its send time, or the service's clock if that is already past it.

    In order, a copy is the newest event of its service and the two are equal. A copy that comes in
    late (a publisher's spool replayed, a backlog loaded behind live traffic, a sending host whose
    clock runs behind) would otherwise find its wait already over and be judged on the next event,
    before the sibling submissions that follow it in the stream: an hour-old thread of one-copy-per-
    recipient mail became a false disclosure incident that way (session 10). Waiting from arrival gives
    the late copy the same ``group_wait_s`` of the service's clock to see its siblings, and keeps
    deadlines, sibling expiries and slip ripe times in arrival order, which the front-first scans
    over them rely on."""
    c = svc.clock_ms
    return sent_at_ms if sent_at_ms >= c else c


class DetectionEngine:
    """``process(event)`` / ``advance(watermark_ms)`` / ``flush()`` -> alerts; ``take_exposures()`` -> rows.

    ``clock``: a callable returning wall-clock epoch milliseconds for ``detected_at`` (the live
    detector); ``None`` (backtest) stamps each alert with its trigger's ``sent_at`` so output is
    deterministic. ``hasher``: an ``AddressHasher``; with it the engine produces exposure rows and
    keys every address id it keeps in state; without it there are no exposure rows.
    ``spike_factory``: builds one streaming spike detector (default ``detect.spikes.SpikeDetector``).
    """

    def __init__(self, cfg: DetectConfig, clock: Callable[[], int] | None = None, hasher=None,
                 spike_factory: Callable[[], Any] | None = None):
        for service in cfg.services:                    # a typo in an override fails at start, not at 3 a.m.
            if not isinstance(cfg.services[service], dict):
                raise ConfigError(f"detect.services.{service} must be a table")
            unknown = set(cfg.services[service]) - {"disclosure", "spikes"}
            if unknown:
                raise ConfigError(f"detect.services.{service}: unknown section '{sorted(unknown)[0]}'")
            cfg.disclosure_for(service)
            cfg.spikes_for(service)
        self.cfg = cfg
        self.clock = clock
        self.hasher = hasher
        self.spike_factory = spike_factory or _default_spike_factory
        self.lateness_ms = int(cfg.lateness_s * 1000)
        self.max_future_ms = int(cfg.max_future_s * 1000)
        self.book = AddressBook(hasher)
        self.incidents = IncidentTracker(cfg.update_interval_s, cfg.resolve_after_s, cfg.exposed_exact_max, clock)
        self.services: dict[str, _Service] = {}
        self.stats: dict[str, int] = dict.fromkeys(
            ("events", "late", "future", "waits", "waits_cleared", "waits_fired", "alerts", "exposure_rows"), 0)
        self._exposures: list[ExposureRow] = []
        self._seq = 0
        self._last_fp: tuple[ParsedEvent, str] | None = None   # (copy, visible fingerprint): computed once
        self._views: dict[tuple, Any] = {}      # long visible lists -> VisibleView (a cache, not state)

    # --- public API --------------------------------------------------------------------------

    def process(self, event: Event, parsed: ParsedEvent | None = None) -> list[Alert]:
        """One event (pass ``parsed`` if the caller already parsed it: parsing is the costly step)."""
        ps = parsed if parsed is not None else parse_event(event)
        self.stats["events"] += 1
        svc = self.services.get(event.service)
        if svc is None:
            svc = self.services[event.service] = _Service(event.service, self.cfg, self.spike_factory)
        t = event.sent_at_ms
        late = t < svc.watermark_ms
        if late:
            self.stats["late"] += 1
        out: list[Alert] = []
        if t > svc.max_seen_ms:
            if self.clock is not None and t > self.clock() + self.max_future_ms:
                self.stats["future"] += 1
            else:
                svc.max_seen_ms = t
        self._tick(svc, max(svc.max_seen_ms - self.lateness_ms, svc.watermark_ms),
                   max(svc.max_seen_ms, svc.clock_ms), out, before=ps)
        self._disclosure(svc, ps, out)
        if svc.spikes.enabled and not late:
            self._spikes(svc, ps, out)
        self.stats["alerts"] += len(out)
        return out

    def advance(self, watermark_ms: int) -> list[Alert]:
        """Promise that no event older than ``watermark_ms`` is still to come (for every service)."""
        out: list[Alert] = []
        for name in sorted(self.services):
            svc = self.services[name]
            self._tick(svc, max(svc.watermark_ms, watermark_ms),
                       max(svc.clock_ms, watermark_ms + self.lateness_ms), out)
        self.stats["alerts"] += len(out)
        return out

    def flush(self) -> list[Alert]:
        """End of input: decide every waiting copy, close every bucket, resolve every incident."""
        settle, resolve = self.flush_phases()
        return settle + resolve

    def flush_phases(self) -> tuple[list[Alert], list[Alert]]:
        """``flush`` in its two phases — per service (sorted): waiting copies and buckets; then every
        incident resolved, by service — so a backtest sharded by service can merge in the same order."""
        settle: list[Alert] = []
        for name in sorted(self.services):
            svc = self.services[name]
            while svc.pending:
                self._decide(svc, heapq.heappop(svc.pending), settle)
            if svc.slips.scopes:
                self._judge_slips(svc, 1 << 62, settle)
            self._close_buckets(svc, 1 << 62, settle)
        resolve = self.incidents.close_all()
        self.stats["alerts"] += len(settle) + len(resolve)
        return settle, resolve

    def take_exposures(self) -> list[ExposureRow]:
        """Exposure rows produced since the last call (only with a hasher); the caller stores them."""
        rows, self._exposures = self._exposures, []
        return rows

    def open_incidents(self) -> list[Incident]:
        return [i for s in sorted(self.incidents.open) for _, i in sorted(self.incidents.open[s].items())]

    def state_dict(self) -> dict[str, Any]:
        """A plain-JSON checkpoint (``detect.state`` encoding, no pickle): services, waiting copies,
        buckets, spike detectors, open incidents, stats.

        Holds no raw address (pending copies keep ids, keyed hashes and masked forms; with a hasher the
        ids are keyed) and no config (``load_state`` re-binds the current rules). Pending exposure rows
        are not included — drain them first. The address cache is a cache and is not stored.
        """
        from mailaudit.detect import state as st

        for svc in self.services.values():             # the factory's class is ours, never the state's
            for det in [svc.volume.det if svc.volume else None, svc.recip,
                        *(s.det for s in svc.keyed.values())]:
                if det is not None and getattr(type(det), "__state_name__", None) is None:
                    st.register(type(det))
        return {
            "format": STATE_FORMAT,
            "stats": dict(self.stats),
            "seq": self._seq,
            "services": {name: st.encode(svc) for name, svc in self.services.items()},
            "incidents": st.encode(self.incidents.open),
        }

    def load_state(self, d: dict[str, Any]) -> None:
        """Replace this engine's state by a ``state_dict()`` (only allow-listed classes are rebuilt)."""
        from mailaudit.detect import state as st

        if d.get("format") != STATE_FORMAT:
            raise st.StateError(f"not a detection engine checkpoint of format {STATE_FORMAT} "
                                f"(format {d.get('format')!r}; pickle checkpoints are no longer read)")
        probe = self.spike_factory()
        if getattr(type(probe), "__state_name__", None) is None:
            st.register(type(probe))
        services = {name: st.decode(v) for name, v in d["services"].items()}
        incidents = st.decode(d["incidents"])
        for name, svc in services.items():
            if not isinstance(svc, _Service) or svc.name != name:
                raise st.StateError(f"checkpoint service {name!r} is not a service state")
            svc.bind(self.cfg, self.spike_factory)
            # Whatever form the checkpoint had (older ones: [set, expiry] lists), the live one.
            svc.siblings = {k: _sib_entry(v[0], int(v[1])) for k, v in svc.siblings.items()}
        self.services = services
        self.incidents.open = incidents
        self.stats = {k: int(v) for k, v in d.get("stats", {}).items()}
        self._seq = int(d.get("seq", 0))

    # --- time ----------------------------------------------------------------------------------

    def _tick(self, svc: _Service, watermark_ms: int, clock_ms: int, out: list[Alert], before=None) -> None:
        svc.clock_ms = clock_ms
        if before is not None:
            # The arriving copy may be the sibling a waiting copy needs: index it before deciding.
            self._index_sibling(svc, before)
        while svc.pending and svc.pending[0].deadline_ms <= clock_ms:
            self._decide(svc, heapq.heappop(svc.pending), out)
        if svc.slips.due_ms <= clock_ms:
            self._judge_slips(svc, clock_ms, out)
        q = svc.sibling_q
        while q and q[0][0] < clock_ms:
            exp, mid = q.popleft()
            entry = svc.siblings.get(mid)
            if entry is not None and entry[1] <= exp:
                del svc.siblings[mid]
        if watermark_ms > svc.watermark_ms:
            svc.watermark_ms = watermark_ms
            if watermark_ms >= svc.next_close_ms:
                self._close_buckets(svc, watermark_ms, out)
            if self.incidents.open.get(svc.name):
                out.extend(self.incidents.expire(svc.name, watermark_ms))

    # --- disclosure ----------------------------------------------------------------------------

    def _index_sibling(self, svc: _Service, ps: ParsedEvent) -> None:
        """Remember the envelope of copies that could be one of several submissions of a group message:
        under its Message-ID, and under its visible list (``_FP`` + fingerprint) — a calendar server or
        an API that sends one copy per attendee may mint a Message-ID per copy, but every copy shows
        the same list, and each attendee on it receives one."""
        if len(ps.to.addresses) + len(ps.cc.addresses) < svc.rules.strangers_min:
            return
        exp = _arrival(ps.event.sent_at_ms, svc) + svc.keep_ms
        ident = self.book.id
        ids = tuple(dict.fromkeys(ident(a) for a in ps.envelope))
        view = self._view(svc, ps)
        fp = view.fingerprint if view is not None else fingerprint_ids(ident(a) for a in ps.visible)
        self._last_fp = (ps, fp)
        sibs = svc.siblings
        for key in (ps.event.message_id, _FP + fp):
            entry = sibs.get(key)
            if entry is None:
                if len(sibs) >= _MAX_SIBLINGS:
                    sibs.pop(next(iter(sibs)))
                sibs[key] = _sib_entry(ids, exp)
            else:
                have, old_exp = entry
                if type(have) is set:
                    have.update(ids)
                    if exp > old_exp:
                        sibs[key] = (have, exp)
                else:
                    add = tuple(i for i in ids if i not in have)
                    if add or exp > old_exp:
                        sibs[key] = _sib_entry(have + add, max(exp, old_exp))
            svc.sibling_q.append((exp, key))

    def _view(self, svc: _Service, ps: ParsedEvent):
        """The envelope-independent analysis of a long visible list, computed once for all copies that
        show it (a concatenated To repeats on every copy of a leak); None for short lists."""
        to, cc = ps.to.addresses, ps.cc.addresses
        if len(to) + len(cc) < _VIEW_MIN:
            return None
        org = svc.org
        key = (svc.name, to, cc, ps.from_.addresses, org.version)
        view = self._views.get(key)
        if view is None:
            if len(self._views) >= _VIEW_CACHE:
                self._views.clear()
            ident = self.book.id
            view = self._views[key] = visible_view(
                ps, org, ident, lambda vis: fingerprint_ids(ident(a) for a in vis))
        return view

    def _accounted(self, svc: _Service, mid: str, fp: str | None, default=()) -> set[int] | frozenset | tuple:
        """Envelope recipients of every submission of this message: same Message-ID, or same visible list."""
        entry = svc.siblings.get(mid)
        by_fp = svc.siblings.get(_FP + fp) if fp else None
        if entry is None and by_fp is None:
            return default
        if by_fp is None:
            return entry[0]
        if entry is None:
            return by_fp[0]
        both = set(entry[0])
        both.update(by_fp[0])
        return both

    def _disclosure(self, svc: _Service, ps: ParsedEvent, out: list[Alert]) -> None:
        if trivially_benign(ps):
            return
        book = self.book
        ident = book.id
        org = svc.org
        org.see_from(ps.from_.addresses)
        r = svc.rules

        def fp(vis):
            last = self._last_fp
            if last is not None and last[0] is ps:
                return last[1]                      # computed by _index_sibling for this copy
            return fingerprint_ids(ident(a) for a in vis)

        sig = disclosure_signals(ps, r, fp, org, ident, self._view(svc, ps))
        meta = _Meta.of(ps.event)
        if (sig.strangers and sig.verdict != FIRE and r.role_learn_copies and len(sig.strangers) <= r.role_max
                and org.observe(meta.scope, sig.strangers, ps.envelope, ident)):
            sig = disclosure_signals(ps, r, fp, org, ident)     # this copy's role addresses are now "us"
        if sig.verdict == FIRE:
            kinds = sig.kinds
            self._fire(svc, meta, sig, kinds, sig.severity,
                       [book.info(a) for a in disclosed_addresses(ps, sig, kinds)],
                       {ident(a) for a in ps.envelope}, sig.fingerprint if BCC_HEADER not in kinds else None,
                       _disclosure_evidence(sig, svc, book, self.cfg.evidence_sample, ps.visible), out,
                       frozenset(ident(a) for a in sig.org))
            return
        if sig.verdict != WAIT:
            if sig.strangers and meta.scope and r.slip_copies:
                self._slip_candidate(svc, meta, sig, ps)
            return
        own_only = len(sig.strangers) <= r.role_max and all(
            org.learnable(a) for a in sig.strangers)
        if r.repeat_copies and meta.campaign and sig.fingerprint and not (own_only and r.role_learn_copies):
            # One visible list on several distinct messages of a campaign is a template bug, not a thread
            # (unless the list is the service's own addresses, which role learning is about to settle).
            key = (meta.campaign, sig.fingerprint)
            entry = svc.repeat.get(key)
            if entry is None or entry[1] < meta.sent_at_ms:
                entry = svc.repeat[key] = [set(), 0]
                if len(svc.repeat) > _MAX_REPEAT:
                    svc.repeat.popitem(last=False)
            entry[0].add(meta.message_id)
            entry[1] = meta.sent_at_ms + svc.keep_ms
            svc.repeat.move_to_end(key)
            if len(entry[0]) >= r.repeat_copies:
                ev = _disclosure_evidence(sig, svc, book, self.cfg.evidence_sample, ps.visible)
                ev["repeated_on_messages"] = len(entry[0])
                self._fire(svc, meta, sig, (VISIBLE_DISCLOSURE,), "critical",
                           [book.info(a) for a in ps.visible], {ident(a) for a in ps.envelope},
                           sig.fingerprint, ev, out, frozenset(ident(a) for a in sig.org))
                return
        self._seq += 1
        self.stats["waits"] += 1
        p = _Pending(
            deadline_ms=_arrival(meta.sent_at_ms, svc) + svc.wait_ms, seq=self._seq, meta=meta,
            sig=_strip(sig), stranger_ids=tuple(ident(a) for a in sig.strangers),
            disclosed=tuple(book.info(a) for a in ps.visible),
            envelope_ids=frozenset(ident(a) for a in ps.envelope), fingerprint=sig.fingerprint,
            org_ids=frozenset(ident(a) for a in sig.org), own_only=own_only,
        )
        heapq.heappush(svc.pending, p)
        if len(svc.pending) > self.cfg.max_pending:
            self._decide(svc, heapq.heappop(svc.pending), out)

    def _decide(self, svc: _Service, p: _Pending, out: list[Alert]) -> None:
        accounted = self._accounted(svc, p.meta.message_id, p.fingerprint, p.envelope_ids)
        learned = svc.org.learned
        left = [s for s in p.stranger_ids if s not in accounted and s not in learned]
        if len(left) < svc.rules.strangers_min:
            self.stats["waits_cleared"] += 1
            return
        if p.own_only and not p.extended and svc.rules.role_learn_copies:
            # Only the service's own-domain addresses are left, not yet learned as its role addresses:
            # give the campaign the slip window to show them to more recipients before judging.
            p.extended = True
            p.deadline_ms += max(0, int(svc.rules.slip_window_s * 1000) - svc.wait_ms)   # from its arrival
            heapq.heappush(svc.pending, p)
            return
        self.stats["waits_fired"] += 1
        ev = dict(_evidence_base(p.sig, svc))
        ev["strangers_unaccounted"] = len(left)
        ev["sibling_submissions_checked"] = True
        ev["group_wait_s"] = svc.rules.group_wait_s
        left_set = set(left)
        ev["sample"] = [a.masked for a in p.disclosed if a.id in left_set][: self.cfg.evidence_sample]
        org_ids = p.org_ids | {a.id for a in p.disclosed if a.id in learned}
        self._fire(svc, p.meta, p.sig, (VISIBLE_DISCLOSURE,), "warning", list(p.disclosed), set(p.envelope_ids),
                   p.fingerprint, ev, out, org_ids)

    def _slip_candidate(self, svc: _Service, meta: _Meta, sig: Signals, ps: ParsedEvent) -> None:
        """A scoped copy showing fewer strangers than ``strangers_min``: one copy proves nothing, the
        campaign's pattern may (detect/slips.py). A stranger at the recipient's own organisation (a
        colleague) is not counted, unless it is the sender's own domain (an ISP's customers); a consumer
        mailbox is always a different person."""
        if svc.slips.repeats_last(meta.scope, [self.book.id(a) for a in sig.strangers]):
            return
        env_doms = {org_domain(a.rpartition("@")[2]) for a in ps.envelope}
        strangers = []
        for a in sig.strangers:
            dom = a.rpartition("@")[2]
            consumer = is_consumer(dom)
            if not consumer and org_domain(dom) in env_doms and not svc.org.is_own_domain(dom):
                continue            # a colleague of the recipient (an ISP's customers share its domain: kept)
            inf = self.book.info(a)
            strangers.append([inf.id, inf.hash, inf.masked, inf.domain, consumer])
        if strangers:
            svc.slips.add(meta.scope, [meta.sent_at_ms, meta.event_id, meta.campaign, meta.template,
                                       meta.message_id, strangers, [self.book.id(a) for a in ps.envelope],
                                       sig.fingerprint], _arrival(meta.sent_at_ms, svc) + svc.wait_ms)

    def _judge_slips(self, svc: _Service, clock_ms: int, out: list[Alert]) -> None:
        """Ripe slip candidates (their group wait is over): a stranger still unaccounted for, who is a
        person or got the campaign themselves, is a confirmed slip; ``slip_copies`` distinct ones within
        the window establish the pattern and every confirmed copy becomes a trigger."""
        r = svc.rules
        win = int(r.slip_window_s * 1000)
        slips = svc.slips
        for scope, c in slips.take_ripe(clock_ms, svc.wait_ms):
            t, eid, campaign, template, mid, strangers, env = c[:7]
            accounted = self._accounted(svc, mid, c[7] if len(c) > 7 else None)
            left = [x for x in strangers if x[0] not in accounted and x[0] not in svc.org.learned
                    and (x[4] or slips.received(scope, x[0], win, t))]
            if not left:
                continue
            n = 0
            for x in left:
                n = slips.confirm(scope, t, x[0], win)
            pending = slips.hold(scope, c[:5] + [left, env], max(r.slip_copies * 4, 16))
            if n < r.slip_copies and not slips.armed(scope, t):
                continue
            slips.arm(scope, t + win)
            for t2, eid2, camp2, tmpl2, mid2, left2, env2 in pending:
                meta = _Meta(eid2, t2, svc.name, camp2, tmpl2, mid2)
                ev: dict[str, Any] = {
                    "pattern": "per_copy_slip", "strangers": len(left2),
                    "slip_distinct_strangers": n, "slip_copies": r.slip_copies, "slip_window_s": r.slip_window_s,
                    "sides": {"org": 0, "external": len(left2)},
                    "sample": [x[2] for x in left2][: self.cfg.evidence_sample],
                }
                self._fire(svc, meta, None, (VISIBLE_DISCLOSURE,), "critical",
                           [AddrInfo(x[0], x[1], x[2], x[3]) for x in left2], set(env2), None, ev, out)
            pending.clear()

    def _fire(self, svc: _Service, meta: _Meta, sig: Signals | None, kinds: tuple[str, ...], severity: str,
              disclosed: list[AddrInfo], envelope_ids: set[int], fp: str | None, evidence: dict,
              out: list[Alert], org_ids: frozenset[int] = frozenset()) -> None:
        kind = kinds[0]
        inc, new = self.incidents.open_or_get(svc.name, meta.scope, DISCLOSURE, meta.sent_at_ms, kind, severity)
        if self.incidents.seen_trigger(inc, meta.event_id):
            return
        evidence["kinds"] = list(kinds)
        exposed = exposed_in_copy(disclosed, envelope_ids) if self.hasher is not None or org_ids else None
        if self.hasher is not None:
            rows = exposure_rows(inc.id, meta.event_id, meta.sent_at_ms, exposed, self.book.key_id, org_ids)
            self._exposures.extend(rows)
            self.stats["exposure_rows"] += len(rows)
        org_shown = _count_org_exposed(inc, exposed, org_ids) if org_ids else len(inc.exposure_fps.get(_ORG, ()))
        if org_ids:
            exposed = [x for x in exposed if x[0].id not in org_ids]
            disclosed = [a for a in disclosed if a.id not in org_ids]
        _count_exposed(inc, fp, disclosed, envelope_ids, exposed)
        # alert v1 `exposed` counts people (the external side); the figure that also counts the
        # organisation's own addresses (its meaning before the organisation model) stays in evidence.
        evidence["exposed_org"] = org_shown
        evidence["exposed_including_org"] = len(inc.exposed) + org_shown
        if inc.exposure_fps.get(_ORG_H):
            # keyed hashes of the organisation's own addresses shown (the exposure report's "side")
            evidence["org_hashes"] = inc.exposure_fps[_ORG_H][:_ORG_HASHES_MAX]
        alert = self.incidents.record(
            inc, new, kind=kind, severity=severity, event_id=meta.event_id, sent_at_ms=meta.sent_at_ms,
            campaign=meta.campaign, template=meta.template, copies=1,
            summary=_disclosure_summary(svc.name, meta, sig, kind, evidence), evidence=evidence,
        )
        if alert is not None:
            out.append(alert)

    # --- spikes --------------------------------------------------------------------------------

    def _spikes(self, svc: _Service, ps: ParsedEvent, out: list[Alert]) -> None:
        e = ps.event
        t = e.sent_at_ms
        start = t - t % svc.bucket_ms
        self._count(svc, svc.volume, start, e)
        self._early_volume(svc, start, e, out)
        if svc.spikes.per_campaign:
            scope = e.campaign or e.template
            if scope:
                series = svc.keyed.get(scope)
                if series is None:
                    series = svc.keyed[scope] = _Series(scope, self.spike_factory())
                    if len(svc.keyed) > svc.spikes.max_keys:
                        svc.keyed.popitem(last=False)
                else:
                    svc.keyed.move_to_end(scope)
                self._count(svc, series, start, e)
        n = len(set(ps.envelope)) if len(ps.envelope) > 1 else len(ps.envelope)
        self._novelty(svc, e, n, out)
        b = svc.volume.buckets.get(start)
        if b is not None and (n > b.rmax or n == b.rmax and (t, e.event_id) < (b.rmax_ms, b.rmax_id)):
            b.rmax, b.rmax_ms, b.rmax_id, b.rmax_campaign, b.rmax_template = n, t, e.event_id, e.campaign, e.template

    def _novelty(self, svc: _Service, e: Event, n: int, out: list[Alert]) -> None:
        """An order-of-magnitude jump in recipients per message against the service's whole history
        (detect/novelty.py): decided on the message itself, no warm-up, no waiting for its bucket."""
        rules = svc.spikes
        kind = message_kind(e.template, e.campaign)
        if n < rules.min_recipients:            # no verdict could fire: learn the count only
            svc.novelty.learn(n, kind)
            return
        nov = svc.novelty.update(e.sent_at_ms / 1000.0, n, kind)
        if not nov.novel:
            return
        ev = {"source": "novelty", "recipients": n, "reference": nov.reference, "ratio": round(nov.ratio, 3),
              "history": nov.history, "factor": svc.novelty.factor, "min_recipients": rules.min_recipients}
        meta = _Meta(e.event_id, e.sent_at_ms, svc.name, e.campaign, e.template, "")
        self._fire_spike(svc, "recipient_spike", "", meta, 1, ev,
                         f"{svc.name}: one message went to {n} envelope recipients, over "
                         f"{int(nov.ratio)}x the largest this kind of message usually has ({nov.reference:g}).", out)

    def _early_volume(self, svc: _Service, start: int, e: Event, out: list[Alert]) -> None:
        """An early verdict on the service's bucket while it fills: its count so far is a lower bound
        of its final count, so if the count so far already is a spike, the bucket will be one — alert
        now rather than when the watermark closes the bucket (bucket + lateness later). The detector is
        asked without learning (``peek``), at most every time the count grows by half (a few times per
        bucket), and only once the mail minimums could be met."""
        b = svc.volume.buckets.get(start)
        if b is None or b.early:
            return
        rules = svc.spikes
        if b.count < rules.min_messages_per_bucket or b.count < b.peek_at:
            return
        peek = getattr(svc.volume.det, "peek", None)
        if peek is None:
            return
        b.peek_at = b.count + (b.count >> 1) + 1
        r = peek(start / 1000.0, b.count)
        if not _is_spike(r, b.count, rules.min_messages_per_bucket, rules.min_ratio):
            return
        b.early = True
        ev = _spike_evidence(r)
        ev.update(messages=b.count, partial=True, bucket_s=rules.bucket_s, bucket_start=format_time(start),
                  min_messages_per_bucket=rules.min_messages_per_bucket)
        meta = _Meta(e.event_id, e.sent_at_ms, svc.name, e.campaign, e.template, "")
        secs = (e.sent_at_ms - start) / 1000.0
        self._fire_spike(svc, "volume_spike", "", meta, b.count, ev,
                         f"{svc.name}: already {b.count} messages in the first {secs:.0f} s of the "
                         f"{rules.bucket_s} s from {format_time(start)[11:19]}Z, far above the usual volume.", out)

    def _count(self, svc: _Service, series: _Series, start: int, e: Event) -> None:
        if series.closed_until_ms is not None and start < series.closed_until_ms:
            return                                      # late for a closed bucket: counted in stats only
        b = series.buckets.get(start)
        if b is None:
            b = series.buckets[start] = _Bucket()
            end = start + svc.bucket_ms
            if end < svc.next_close_ms:
                svc.next_close_ms = end
        b.count += 1
        # The trigger is independent of arrival order: the bucket's latest event for the service-wide
        # series, its earliest for a campaign series — so the two never name the same event (and the
        # same alert_id) for one bucket: the campaign's first event is not the service's last.
        if b.count == 1 or ((e.sent_at_ms, e.event_id) < (b.trig_ms, b.trig_id)) == bool(series.scope):
            b.trig_ms, b.trig_id, b.campaign, b.template = e.sent_at_ms, e.event_id, e.campaign, e.template
        series.last_event_ms = max(series.last_event_ms, e.sent_at_ms)

    def _close_buckets(self, svc: _Service, watermark_ms: int, out: list[Alert]) -> None:
        bms = svc.bucket_ms
        nxt = 1 << 62
        series_list = ([svc.volume] if svc.volume is not None else []) + list(svc.keyed.values())
        idle = svc.spikes.key_idle_s * 1000
        for series in series_list:
            if series.buckets:
                for start in sorted(series.buckets):
                    if start + bms > watermark_ms:
                        nxt = min(nxt, start + bms)
                        break
                    self._close_one(svc, series, start, series.buckets.pop(start), out)
            if series.scope and not series.buckets and series.last_event_ms + idle < watermark_ms:
                svc.keyed.pop(series.scope, None)
        svc.next_close_ms = nxt

    def _close_one(self, svc: _Service, series: _Series, start: int, b: _Bucket, out: list[Alert]) -> None:
        bms = svc.bucket_ms
        if series.closed_until_ms is not None and start > series.closed_until_ms:
            # A lull: the empty buckets are information too (zeros), up to a cap.
            gap_from = max(series.closed_until_ms, start - svc.spikes.fill_gap_buckets * bms)
            zeros = getattr(series.det, "learn_zeros", None) if FAST_ZEROS else None
            if zeros is not None:       # the same state as update(t, 0) each, without the unread results
                zeros([z / 1000.0 for z in range(gap_from, start, bms)])
            else:
                for z in range(gap_from, start, bms):
                    series.det.update(z / 1000.0, 0)
        series.closed_until_ms = start + bms
        rules = svc.spikes
        if not series.scope and b.rmax >= 0:
            self._close_recipients(svc, start, b, out)
        r = series.det.update(start / 1000.0, b.count)
        if b.early:
            return      # already alerted while the bucket was filling (_early_volume)
        if series.scope and self.incidents.get(svc.name, "", SPIKE) is not None:
            return      # the service-wide spike incident already covers this campaign's share: one page
        if _is_spike(r, b.count, rules.min_messages_per_bucket, rules.min_ratio):
            ev = _spike_evidence(r)
            ev.update(messages=b.count, bucket_s=svc.spikes.bucket_s, bucket_start=format_time(start),
                      min_messages_per_bucket=svc.spikes.min_messages_per_bucket)
            if series.scope:
                ev["scope"] = series.scope
            meta = _Meta(b.trig_id, b.trig_ms, svc.name, b.campaign, b.template, "")
            where = f"{svc.name} ({series.scope})" if series.scope else svc.name
            self._fire_spike(svc, "volume_spike", series.scope, meta, b.count, ev,
                             f"{where}: {b.count} messages in the {svc.spikes.bucket_s} s from "
                             f"{format_time(start)[11:19]}Z, far above the usual volume.", out)

    def _close_recipients(self, svc: _Service, start: int, b: _Bucket, out: list[Alert]) -> None:
        """Recipients per message, as the largest message of each bucket: one detector update per bucket
        (not per message — a detector update costs tens of microseconds), and a steadier series than
        single messages (a service that sends a 60-recipient announcement most minutes has a maximum
        of ~60 every minute, so 60 is normal and 600 is not)."""
        r = svc.recip.update(start / 1000.0, b.rmax)
        rules = svc.spikes
        if not _is_spike(r, b.rmax, rules.min_recipients, rules.min_ratio):
            return
        ev = _spike_evidence(r)
        ev.update(recipients=b.rmax, min_recipients=rules.min_recipients, min_ratio=rules.min_ratio,
                  bucket_s=rules.bucket_s, bucket_start=format_time(start))
        meta = _Meta(b.rmax_id, b.rmax_ms, svc.name, b.rmax_campaign, b.rmax_template, "")
        self._fire_spike(svc, "recipient_spike", "", meta, 1, ev,
                         f"{svc.name}: one message went to {b.rmax} envelope recipients, far above this "
                         f"service's usual largest message.", out)

    def _fire_spike(self, svc: _Service, kind: str, scope: str, meta: _Meta, copies: int, evidence: dict,
                    summary: str, out: list[Alert]) -> None:
        severity = "warning"
        inc, new = self.incidents.open_or_get(svc.name, scope, SPIKE, meta.sent_at_ms, kind, severity)
        if self.incidents.seen_trigger(inc, f"{meta.event_id}:{kind}"):
            return
        alert = self.incidents.record(
            inc, new, kind=kind, severity=severity, event_id=meta.event_id, sent_at_ms=meta.sent_at_ms,
            campaign=meta.campaign, template=meta.template, copies=copies, summary=summary, evidence=evidence)
        if alert is not None:
            out.append(alert)


# --- helpers -------------------------------------------------------------------------------------

def _strip(sig: Signals) -> Signals:
    """A waiting copy keeps its figures but not its raw stranger addresses."""
    return replace(sig, strangers=(), bcc_exposed=(), org=())


def _count_exposed(inc: Incident, fp: str | None, disclosed: list[AddrInfo], envelope_ids: set[int],
                   exposed: list[tuple[AddrInfo, int]] | None) -> None:
    """Add a copy's exposed addresses to the incident, skipping visible lists already fully counted.

    In a concatenated-To leak every copy carries the same long list. Its first copy exposes all of
    it but the one address it was delivered to; any copy delivered elsewhere completes it. The cache
    (fingerprint -> FULL, or the one id still missing) keeps every later copy O(1); it is only a
    shortcut, since adding an id twice is harmless.
    """
    cache = inc.exposure_fps
    state = cache.get(fp) if fp is not None else None
    if state == _FULL:
        return
    if state is not None:
        if envelope_ids and envelope_ids != {state}:
            inc.exposed.add(state)
            cache[fp] = _FULL
        return
    if exposed is None:
        exposed = exposed_in_copy(disclosed, envelope_ids)
    add = inc.exposed.add
    for a, _ in exposed:
        add(a.id)
    if fp is None or not envelope_ids:
        return
    if len(cache) >= _FP_CACHE:
        keep = {k: cache[k] for k in (_ORG, _ORG_H) if k in cache}
        cache.clear()
        cache.update(keep)
    if len(envelope_ids) >= 2:
        cache[fp] = _FULL
    else:
        (only,) = envelope_ids
        cache[fp] = only if any(a.id == only for a in disclosed) else _FULL


def _count_org_exposed(inc: Incident, exposed: list[tuple[AddrInfo, int]], org_ids: frozenset[int]) -> int:
    """The organisation's own addresses a copy showed to others: kept apart from ``exposed`` (a small
    list in the incident's cache), so evidence can still give the figure that counts them."""
    ids = inc.exposure_fps.setdefault(_ORG, [])
    for a, _ in exposed:
        if a.id in org_ids and a.id not in ids and len(ids) < _MAX_ORG_EXPOSED:
            ids.append(a.id)
            if a.hash is not None:
                inc.exposure_fps.setdefault(_ORG_H, []).append(a.hash)
    return len(ids)


def _evidence_base(sig: Signals, svc: _Service) -> dict[str, Any]:
    r = svc.rules
    ev: dict[str, Any] = {
        "visible": sig.visible,
        "envelope": sig.envelope,
        "domains": sig.domains,
        "thresholds": {"strangers_min": r.strangers_min, "strangers_critical": r.strangers_critical,
                       "visible_max": r.visible_max},
    }
    if sig.fingerprint:
        ev["visible_fingerprint"] = sig.fingerprint
    return ev


def _disclosure_evidence(sig: Signals, svc: _Service, book: AddressBook, sample_n: int,
                         visible: tuple[str, ...] = ()) -> dict[str, Any]:
    ev = _evidence_base(sig, svc)
    ev["strangers"] = len(sig.strangers)
    ev["strangers_including_org"] = sig.all_strangers
    ev["parties"] = sig.parties
    ev["sides"] = {"org": len(sig.org), "external": sig.visible - len(sig.org)}
    ev["org_sample"] = [book.info(a).masked for a in sig.org[:sample_n]]
    if sig.concatenated:
        ev["concatenated_header"] = sig.concatenated
    if sig.open_list:
        ev["open_list_domains"] = sig.domains
    if sig.run_together:
        ev["run_together"] = True
    if sig.bcc_exposed:
        ev["bcc_exposed"] = len(sig.bcc_exposed)
    org = set(sig.org)
    sample_from = sig.strangers or sig.bcc_exposed or (
        tuple(a for a in visible if a not in org) if sig.open_list else ())
    ev["sample"] = [book.info(a).masked for a in sample_from[:sample_n]]
    return ev


def _disclosure_summary(service: str, meta: _Meta, sig: Signals, kind: str, ev: dict) -> str:
    where = f"{service} ({meta.scope})" if meta.scope else service
    if ev.get("pattern") == "per_copy_slip":
        return (f"{where}: copies of this campaign each show a different customer who is not a recipient of "
                f"the copy ({ev['slip_distinct_strangers']} within {ev['slip_window_s']:g} s): a per-copy "
                f"slip such as a mail merge Cc'ing the next row.")
    if kind == CONCATENATED_TO:
        return (f"{where}: a copy's {ev.get('concatenated_header', 'to').capitalize()} header lists "
                f"{sig.visible} addresses, {ev.get('strangers', 0)} of them not recipients of the copy "
                f"— a concatenated recipient list.")
    if kind == RUN_TOGETHER:
        return f"{where}: a copy's To/Cc header has addresses run together with no separator."
    if kind == BCC_HEADER:
        return (f"{where}: a Bcc header was left in the sent copy, showing {ev.get('bcc_exposed', 0)} "
                f"blind-copied addresses to the other recipients.")
    if "strangers_unaccounted" in ev:
        return (f"{where}: a copy shows {ev['strangers_unaccounted']} addresses that received neither "
                f"this copy nor any other submission of the same message.")
    if ev.get("repeated_on_messages"):
        return (f"{where}: {ev['repeated_on_messages']} messages of this campaign show the same list of "
                f"{sig.visible} addresses to recipients who are not on it.")
    if ev.get("concatenated_header") == "cc":
        return (f"{where}: a copy's Cc header shows {ev.get('strangers', 0)} addresses that are not "
                f"recipients of the copy.")
    if sig.open_list and not ev.get("strangers"):
        return (f"{where}: one message shows {sig.parties} external parties ({sig.visible} addresses) to "
                f"each other (Cc/To instead of Bcc).")
    return (f"{where}: a copy shows {ev.get('strangers', 0)} addresses to recipients who are not on it "
            f"({sig.visible} visible, {sig.envelope} envelope).")


def _is_spike(r, value: float, minimum: float, min_ratio: float) -> bool:
    """The detector's verdict, upward only, and big enough to matter: at least ``minimum`` and at
    least ``min_ratio`` times the detector's baseline (a statistically rare +40 % is not a page)."""
    if not r.alert or value < minimum or getattr(r, "direction", "up") == "down":
        return False
    baseline = getattr(r, "baseline", None)
    return baseline is None or value >= min_ratio * baseline


def _spike_evidence(r) -> dict[str, Any]:
    """The detector's figures, rounded so the JSON is stable and readable."""
    ev: dict[str, Any] = {}
    names = getattr(r, "__dataclass_fields__", None) or getattr(r, "__slots__", None) or vars(r)
    for name in names:
        if name.startswith("_") or name == "alert":
            continue
        v = getattr(r, name, None)
        if isinstance(v, bool) or v is None or isinstance(v, str):
            ev[name] = v
        elif isinstance(v, int):
            ev[name] = v
        elif isinstance(v, float):
            ev[name] = round(v, 6) if v == v and abs(v) != float("inf") else None
    return ev


def _register_state_classes() -> None:
    """The classes a checkpoint may rebuild (``detect.state`` refuses every other one)."""
    from mailaudit.detect import incidents, signals, spikes, state

    state.register(_Service, skip=("rules", "spikes", "bucket_ms", "wait_ms", "keep_ms"))
    for cls in (OrgModel, SlipTracker):
        state.register(cls)
    for cls in (_Pending, _Bucket, _Series, _Meta, AddrInfo, signals.Signals, incidents.Incident,
                incidents.DistinctCounter):
        state.register(cls)
    state.register_module(spikes)           # the detectors' helper classes change with their tuning


_register_state_classes()
