"""Building blocks of the pattern catalogue: a seeded event builder, address makers, daily rhythm.

Why a separate catalogue at all: the project's simulator was written together with the rules, so its
benign traffic is exactly what the rules expect (visible addresses are always recipients, group copies
always arrive inside the wait). Each pattern here copies one documented sending practice instead, so
the rules are judged on shapes they were not written around.

Everything is deterministic: a pattern's events depend only on its seed and scale (``random.Random``,
UUIDs drawn from it, a fixed epoch). Events are wire-format v1 dicts (docs/wire-format.md).
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Callable

from mailaudit.ingest.wire import format_time

# Monday 2026-03-02 00:00:00 UTC: every pattern's clock starts here (weekday arithmetic relies on it).
T0_MS = 1772409600000
MIN_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS

BENIGN = "benign"
# Leak classes and their deadlines (issue 12): a large visible list must alert on its first copy;
# per-copy slips, header slips and spikes within 60 s of event time after the first leaking copy.
FIRST_COPY = "first_copy"
LEAK_CLASSES = {
    "visible_list": FIRST_COPY,
    "header_leak": 60.0,
    "per_copy_slip": 60.0,
    "spike": 60.0,
}
CLASSES = (BENIGN, *LEAK_CLASSES)

# Consumer mail providers with rough shares of a European/US customer base.
PROVIDERS = (("gmail.com", 34), ("outlook.com", 10), ("hotmail.com", 9), ("yahoo.com", 10), ("icloud.com", 7),
             ("aol.com", 3), ("gmx.de", 5), ("web.de", 4), ("orange.fr", 4), ("free.fr", 3),
             ("btinternet.com", 3), ("live.com", 4), ("yahoo.co.uk", 2), ("mail.ru", 2))
_PROV_NAMES = [p for p, _ in PROVIDERS]
_PROV_CUM = []
_acc = 0
for _, _w in PROVIDERS:
    _acc += _w
    _PROV_CUM.append(_acc)

FIRST = ("anna", "ben", "carla", "david", "emma", "felix", "greta", "hugo", "ines", "jonas", "karin", "lars",
         "maria", "nils", "olga", "paul", "quinn", "rosa", "sam", "tina", "uwe", "vera", "walter", "xenia",
         "yusuf", "zoe", "li", "mohammed", "priya", "chen", "sofia", "lucas", "amelie", "noah", "mila")
LAST = ("smith", "mueller", "garcia", "rossi", "dubois", "novak", "kowalski", "jensen", "silva", "tanaka",
        "okafor", "nguyen", "schmidt", "brown", "martin", "lopez", "wagner", "fischer", "weber", "meyer",
        "kim", "patel", "singh", "ivanova", "larsen", "costa", "moreau", "bauer", "hansen", "virtanen")


@dataclass
class Stream:
    """A pattern's events in send order, and which of them are the leak (empty for benign)."""

    events: list[dict]
    leak_ids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Pattern:
    name: str
    cls: str                      # "benign" or a key of LEAK_CLASSES
    fn: Callable[["Gen", float], None]
    seed: int
    batch: int = 1                # patterns are split batch by batch: a later batch never moves an earlier one

    @property
    def deadline(self) -> str | float | None:
        return LEAK_CLASSES.get(self.cls)

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()

    def generate(self, scale: float = 1.0) -> Stream:
        g = Gen(self.seed, self.name, scale)
        self.fn(g, scale)
        return g.finish()


class Gen:
    """Seeded event builder for one pattern."""

    def __init__(self, seed: int, name: str, scale: float):
        self.rng = random.Random(f"mailaudit-corpus:{name}:{seed}")
        self.scale = scale
        self._events: list[tuple[int, int, dict]] = []
        self._leak: set[str] = set()
        self._seq = 0

    # sizes ---------------------------------------------------------------------------------------
    def n(self, full: int, minimum: int = 1) -> int:
        """A count at this scale (never below ``minimum``: a leak keeps its shape at tiny sizes)."""
        return max(minimum, int(round(full * self.scale)))

    # ids -----------------------------------------------------------------------------------------
    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def message_id(self, domain: str) -> str:
        return f"<{self.rng.getrandbits(64):016x}.{self.rng.getrandbits(20):05x}@{domain}>"

    # addresses -----------------------------------------------------------------------------------
    def provider(self) -> str:
        x = self.rng.random() * _PROV_CUM[-1]
        for name, c in zip(_PROV_NAMES, _PROV_CUM):
            if x < c:
                return name
        return _PROV_NAMES[-1]

    def local(self) -> str:
        r = self.rng
        f, l = r.choice(FIRST), r.choice(LAST)
        style = r.random()
        if style < 0.4:
            return f"{f}.{l}"
        if style < 0.7:
            return f"{f}{l}{r.randint(1, 99)}"
        if style < 0.85:
            return f"{f[0]}{l}"
        return f"{l}.{f}{r.randint(1970, 2005)}"

    def person(self, domain: str | None = None) -> str:
        return f"{self.local()}@{domain or self.provider()}"

    def people(self, k: int, domain: str | None = None) -> list[str]:
        seen: dict[str, None] = {}
        while len(seen) < k:
            seen[self.person(domain)] = None
        return list(seen)

    def named(self, addr: str) -> str:
        """A header item as mail clients write it: sometimes a bare address, usually a display name."""
        r = self.rng.random()
        local = addr.split("@")[0]
        name = " ".join(w.capitalize() for w in local.replace("_", ".").split(".") if w.isalpha()) or local
        if r < 0.3:
            return addr
        if r < 0.8:
            return f"{name} <{addr}>"
        return f'"{name}" <{addr}>'

    # events --------------------------------------------------------------------------------------
    def emit(self, t_ms: int, service: str, from_: str, to: str, envelope: list[str], *, cc: str = "",
             bcc: str | None = None, campaign: str | None = None, template: str | None = None,
             message_id: str | None = None, size: int | None = None, subject: str | None = None,
             leak: bool = False) -> dict:
        dom = from_.rpartition("@")[2].rstrip(">") or "example.com"
        ev = {"v": 1, "event_id": self.uid(), "sent_at": format_time(int(t_ms)), "service": service,
              "campaign": campaign, "template": template, "message_id": message_id or self.message_id(dom),
              "from": from_, "to": to, "envelope_to": list(envelope)}
        if cc:
            ev["cc"] = cc
        if bcc is not None:
            ev["bcc"] = bcc
        if subject is not None:
            ev["subject"] = subject
        ev["size_bytes"] = int(size if size is not None else self.rng.randint(6_000, 60_000))
        self._events.append((int(t_ms), self._seq, ev))
        self._seq += 1
        if leak:
            self._leak.add(ev["event_id"])
        return ev

    def finish(self) -> Stream:
        self._events.sort(key=lambda x: (x[0], x[1]))
        return Stream([e for _, _, e in self._events], set(self._leak))

    # rhythm --------------------------------------------------------------------------------------
    def daily_times(self, start_ms: int, days: float, per_day: int, peak_hour: float = 14.0,
                    night_share: float = 0.15) -> list[int]:
        """Send times with a day/night rhythm (busy around ``peak_hour`` UTC, quiet at night).

        Thinning of a Poisson process whose rate follows a raised cosine over the day: transactional
        mail (receipts, resets, notifications) follows its users' waking hours.
        """
        r = self.rng
        total = self.n(int(per_day * days))
        span = int(days * DAY_MS)
        out = []
        while len(out) < total:
            t = start_ms + int(r.random() * span)
            hour = (t % DAY_MS) / HOUR_MS
            w = night_share + (1 - night_share) * 0.5 * (1 + math.cos(2 * math.pi * (hour - peak_hour) / 24))
            if r.random() < w:
                out.append(t)
        out.sort()
        return out

    def spread(self, start_ms: int, count: int, per_s: float) -> list[int]:
        """``count`` send times from ``start_ms`` at about ``per_s`` messages a second (a bulk mailer)."""
        r = self.rng
        t = float(start_ms)
        out = []
        for _ in range(count):
            out.append(int(t))
            t += r.expovariate(per_s) * 1000.0
        return out


def transactional(g: Gen, service: str, sender: str, start_ms: int, days: float, per_day: int,
                  template: str = "receipt", peak_hour: float = 14.0) -> None:
    """The quiet background of most services: one message per customer, To = that customer."""
    for t in g.daily_times(start_ms, days, per_day, peak_hour):
        rcpt = g.person()
        g.emit(t, service, sender, g.named(rcpt), [rcpt], template=template)


def per_recipient_blast(g: Gen, service: str, sender: str, start_ms: int, recipients: list[str], *,
                        campaign: str, per_s: float = 20.0, to_fmt: Callable[[str], str] | None = None,
                        cc: str = "", template: str | None = None) -> None:
    """One copy per recipient (SES SendEmail loop, SendGrid personalizations): To = that recipient."""
    for t, rcpt in zip(g.spread(start_ms, len(recipients), per_s), recipients):
        g.emit(t, service, sender, to_fmt(rcpt) if to_fmt else g.named(rcpt), [rcpt], cc=cc,
               campaign=campaign, template=template)


REGISTRY: dict[str, Pattern] = {}


def pattern(cls: str, seed: int = 0, batch: int = 1):
    """Register a generator under its function name with its class (``benign`` or a leak class) and the
    batch it was added in (the split is made per batch, see ``corpus.make_split``)."""
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}")

    def wrap(fn):
        if not (fn.__doc__ or "").strip():
            raise ValueError(f"pattern {fn.__name__} needs a docstring naming the practice and its source")
        if fn.__name__ in REGISTRY:
            raise ValueError(f"duplicate pattern {fn.__name__}")
        REGISTRY[fn.__name__] = Pattern(fn.__name__, cls, fn, seed, batch)
        return fn
    return wrap
