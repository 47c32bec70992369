"""Synthetic outbound-mail traffic of one company, with incidents injected on demand.

Pure: no I/O, no wall clock. Given a seed and a start time the same events come out, byte for byte,
so a detector test, a backtest file and a latency bench can all rely on the same traffic. The benign
traffic is built to contain what real mail legitimately contains and what a naive detector would
flag: display names (quoted, with commas, RFC 2047 encoded, old-style comments), newsletters of
thousands of one-To copies, internal mail whose visible list is the envelope, ``Undisclosed
recipients:;`` with a Bcc-style envelope, small support threads sent either as one submission or
as one copy per recipient sharing a Message-ID, and a daily rhythm. Detectors must stay silent on
all of it; the ``incident=`` injections are what they must catch.

Services (``SERVICES``): billing, receipts, auth, notifications, shipping (transactional, one To,
daily rhythm), newsletter and promotions (bursty campaigns), internal (colleagues at
``acme.example``), support (2-4 person threads), monitoring (on-call list). Ten services, so that
keying events by service spreads them across partitions.

``rate`` is the mean benign rate over a day (events/s); with ``rhythm=True`` the momentary rate of
the rhythmic services follows the hour of day (UTC), and campaigns send at ``burst`` times their
mean rate then pause. ``rhythm=False, burst=1`` gives a steady stream (for latency benchmarks).
"""

from __future__ import annotations

import base64
import heapq
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator, Sequence

from mailaudit.ingest.wire import Event

COMPANY_DOMAIN = "acme.example"

INCIDENT_KINDS = ("concatenated_to", "run_together", "cc_leak", "bcc_left", "volume_spike", "recipient_spike")

# Which service hosts each incident by default (distinct services, so several can run at once).
INCIDENT_SERVICE = {
    "concatenated_to": "newsletter",
    "run_together": "promotions",
    "cc_leak": "billing",
    "bcc_left": "internal",
    "volume_spike": "notifications",
    "recipient_spike": "receipts",
}

# Share of the benign rate per service (sums to 1).
SERVICES: dict[str, float] = {
    "billing": 0.10,
    "receipts": 0.14,
    "auth": 0.08,
    "notifications": 0.12,
    "shipping": 0.05,
    "newsletter": 0.22,
    "promotions": 0.10,
    "internal": 0.07,
    "support": 0.08,
    "monitoring": 0.04,
}


@dataclass
class Injection:
    """What an incident injected, so a test can check that a detector caught exactly it.

    ``event_ids`` fills while the events are produced (complete once the iterator is exhausted);
    ``exposed`` lists the lower-case addresses shown to people who were not meant to see them.
    """

    kind: str
    service: str
    campaign: str | None
    template: str | None
    start_ms: int
    end_ms: int
    event_ids: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)


# --- the synthetic population -----------------------------------------------------------------

_FIRST = [
    ("James", "james"), ("Mary", "mary"), ("José", "jose"), ("Zoë", "zoe"), ("Li", "li"), ("Wei", "wei"),
    ("Aisha", "aisha"), ("Øyvind", "oyvind"), ("Łukasz", "lukasz"), ("François", "francois"),
    ("Sofía", "sofia"), ("Mohammed", "mohammed"), ("Anna", "anna"), ("Olga", "olga"), ("Hiroshi", "hiroshi"),
    ("Yuki", "yuki"), ("Chen", "chen"), ("Priya", "priya"), ("Ahmet", "ahmet"), ("Emma", "emma"),
    ("Noah", "noah"), ("Liam", "liam"), ("Olivia", "olivia"), ("Lucas", "lucas"), ("Mia", "mia"),
    ("Björn", "bjorn"), ("Ingrid", "ingrid"), ("Pedro", "pedro"), ("Ana", "ana"), ("Ivan", "ivan"),
    ("Fatima", "fatima"), ("Kwame", "kwame"), ("Ngozi", "ngozi"), ("Dmitri", "dmitri"), ("Elena", "elena"),
    ("Tomás", "tomas"), ("Chloé", "chloe"), ("Jürgen", "jurgen"), ("Siobhán", "siobhan"), ("Raj", "raj"),
]
_LAST = [
    ("Smith", "smith"), ("García", "garcia"), ("Müller", "muller"), ("Nguyen", "nguyen"),
    ("Kowalski", "kowalski"), ("Rossi", "rossi"), ("Dubois", "dubois"), ("Tanaka", "tanaka"), ("Kim", "kim"),
    ("Patel", "patel"), ("Johnson", "johnson"), ("Okafor", "okafor"), ("Ivanova", "ivanova"),
    ("Silva", "silva"), ("Larsen", "larsen"), ("Novák", "novak"), ("Yılmaz", "yilmaz"), ("O'Brien", "obrien"),
    ("Schmidt", "schmidt"), ("Fernández", "fernandez"), ("Wang", "wang"), ("Zhang", "zhang"),
    ("Brown", "brown"), ("Jones", "jones"), ("Hernández", "hernandez"), ("Lefèvre", "lefevre"),
    ("Andersson", "andersson"), ("Nowak", "nowak"), ("Costa", "costa"), ("Sato", "sato"), ("Khan", "khan"),
    ("Mensah", "mensah"), ("Cohen", "cohen"), ("Popescu", "popescu"), ("Horvát", "horvat"),
    ("Murphy", "murphy"), ("Wilson", "wilson"), ("Taylor", "taylor"), ("Das", "das"), ("Ali", "ali"),
]
# 100 slots: the share of each domain among customers.
_DOMAIN_SLOTS: list[str] = []
for _d, _n in (
    ("gmail.com", 34), ("yahoo.com", 9), ("outlook.com", 11), ("hotmail.com", 6), ("icloud.com", 6),
    ("proton.me", 3), ("gmx.de", 4), ("web.de", 3), ("orange.fr", 3), ("yahoo.co.jp", 2),
    ("contoso.example", 4), ("fabrikam.example", 4), ("initech.example", 3), ("globex.example", 3),
    ("umbrella.example", 3), ("hooli.example", 2),
):
    _DOMAIN_SLOTS += [_d] * _n
assert len(_DOMAIN_SLOTS) == 100


def _encoded_word(text: str, q: bool) -> str:
    """RFC 2047 encoded word, as mail libraries write non-ASCII display names."""
    raw = text.encode("utf-8")
    if not q:
        return "=?utf-8?b?" + base64.b64encode(raw).decode("ascii") + "?="
    out = []
    for b in raw:
        c = chr(b)
        if c == " ":
            out.append("_")
        elif c.isascii() and c.isalnum():
            out.append(c)
        else:
            out.append(f"={b:02X}")
    return "=?UTF-8?Q?" + "".join(out) + "?="


def _phrase(name: str, h: int) -> str:
    """A display name as a mailer would write it: plain atoms, quoted, or encoded when not ASCII."""
    if not name.isascii():
        return _encoded_word(name, q=bool(h & 1))
    if "," in name or "'" in name:
        return '"' + name + '"'
    return name


def _mix(i: int) -> int:
    """Cheap deterministic integer hash (independent of PYTHONHASHSEED)."""
    x = (i * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    return x


class Population:
    """Customers ``0..n_users-1`` and employees ``0..n_employees-1``; everything derives from the index,
    so a user's address and display form do not depend on the order in which users are drawn."""

    def __init__(self, n_users: int = 100_000, n_employees: int = 600):
        if n_users < 1000 or n_employees < 100:
            raise ValueError("population too small for realistic traffic (n_users >= 1000, n_employees >= 100)")
        self.n_users = n_users
        self.n_employees = min(n_employees, len(_FIRST) * len(_LAST))
        self._users: dict[int, tuple[str, str]] = {}
        self._staff: dict[int, tuple[str, str]] = {}
        # A stride coprime with n_users walks the population without repeats (campaign audiences).
        self.stride = next(p for p in (7919, 7927, 7933, 7937, 7949) if n_users % p)

    def user(self, i: int) -> tuple[str, str]:
        """(addr, header form) of customer ``i``: the header form is how a mailer writes the recipient."""
        u = self._users.get(i)
        if u is None:
            h = _mix(i)
            fd, fa = _FIRST[(h >> 8) % len(_FIRST)]
            ld, la = _LAST[(h >> 16) % len(_LAST)]
            domain = _DOMAIN_SLOTS[h % 100]
            style = (h >> 24) % 4
            local = (f"{fa}.{la}{i}", f"{fa[0]}{la}{i}", f"user{i}", f"{fa}{i}")[style]
            addr = f"{local}@{domain}"
            form = (h >> 4) % 10
            if form <= 4:
                header = f"{_phrase(fd + ' ' + ld, h)} <{addr}>"
            elif form <= 6:
                header = f"{_phrase(ld + ', ' + fd, h)} <{addr}>"
            elif form == 7:
                header = f'"{fd} {ld}" <{addr}>' if (fd + ld).isascii() else f"{_phrase(fd + ' ' + ld, h)} <{addr}>"
            elif form == 8:
                header = addr
            else:
                header = f"{addr} ({fa.capitalize()} {la.capitalize()})"
            u = (addr, header)
            self._users[i] = u
        return u

    def employee(self, i: int) -> tuple[str, str]:
        e = self._staff.get(i)
        if e is None:
            fd, fa = _FIRST[i % len(_FIRST)]
            ld, la = _LAST[(i // len(_FIRST) + i * 7) % len(_LAST)]
            addr = f"{fa}.{la}@{COMPANY_DOMAIN}"
            e = (addr, f"{_phrase(fd + ' ' + ld, i)} <{addr}>")
            self._staff[i] = e
        return e


# --- rhythm ------------------------------------------------------------------------------------

def _normalised(table: Sequence[float]) -> tuple[float, ...]:
    mean = sum(table) / len(table)
    return tuple(v / mean for v in table)


# Consumer-facing mail: low at night, high in the day and evening.
_DAY = _normalised([0.25, 0.2, 0.18, 0.18, 0.2, 0.3, 0.5, 0.8, 1.2, 1.5, 1.6, 1.6,
                    1.5, 1.5, 1.55, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0, 0.8, 0.55, 0.35])
# Office mail: working hours.
_WORK = _normalised([0.05, 0.03, 0.03, 0.03, 0.05, 0.1, 0.3, 0.9, 1.8, 2.2, 2.3, 2.0,
                     1.5, 2.0, 2.2, 2.1, 1.8, 1.2, 0.6, 0.3, 0.2, 0.15, 0.1, 0.07])
_FLAT = tuple([1.0] * 24)


def _factor(table: Sequence[float], t_s: float) -> float:
    h = (t_s % 86400.0) / 3600.0
    i = int(h)
    f = h - i
    return table[i] * (1.0 - f) + table[(i + 1) % 24] * f


# --- services ----------------------------------------------------------------------------------

# service -> (From, [(template, subject format)], log-normal size mu)
_TRANSACTIONAL = {
    "billing": ('"Acme Billing" <billing@acme.example>', [
        ("invoice", "Your invoice INV-{n} is ready"),
        ("payment_failed", "Action needed: your payment failed"),
        ("payment_received", _encoded_word("Payment received – thank you", q=True)),
    ], 9.6),
    "receipts": ("Acme Store <receipts@shop.acme.example>", [
        ("receipt", "Your receipt for order #{n}"),
        ("refund", "Your refund for order #{n}"),
    ], 9.9),
    "auth": ("Acme Accounts <no-reply@accounts.acme.example>", [
        ("password_reset", "Reset your password"),
        ("login_code", "Your sign-in code is {n6}"),
        ("verify_email", "Please verify your email address"),
    ], 8.7),
    "notifications": ("Acme <notifications@acme.example>", [
        ("mention", "You were mentioned in a comment"),
        ("comment_reply", "New reply to your comment"),
        ("weekly_summary", "Your week on Acme"),
    ], 9.3),
    "shipping": ("Acme Shipping <shipping@shop.acme.example>", [
        ("order_shipped", "Your order #{n} has shipped"),
        ("out_for_delivery", "Your order #{n} is out for delivery"),
        ("delivered", _encoded_word("Delivered ✓ order #{n}", q=False)),
    ], 9.1),
}
_RHYTHM = {"billing": _DAY, "receipts": _DAY, "auth": _DAY, "notifications": _DAY, "shipping": _DAY,
           "internal": _WORK, "support": _WORK, "newsletter": _FLAT, "promotions": _FLAT, "monitoring": _FLAT}
_CAMPAIGN = {
    "newsletter": ("Acme News <news@news.acme.example>", "nl", [
        ("weekly_digest", "This week at Acme"), ("product_update", "What's new in Acme"),
        ("monthly_report", _encoded_word("Your monthly report — highlights", q=True)),
    ]),
    "promotions": ('"Acme Deals" <deals@news.acme.example>', "promo", [
        ("spring_sale", "Spring sale: 20% off everything"), ("black_friday", "Black Friday starts now"),
        ("win_back", "We miss you! Here's 15% off"),
    ]),
}
_INTERNAL_SUBJECTS = ["Q3 planning", "Re: design review", "Lunch on Friday?", "Fwd: customer feedback",
                      "Standup notes", "Re: Re: budget", "Offsite logistics", _encoded_word("Café machine ☕", q=False)]
_SUPPORT_SUBJECTS = ["Re: [Ticket #{n}] Cannot log in", "Re: [Ticket #{n}] Refund request",
                     "[Ticket #{n}] We received your request", "Re: [Ticket #{n}] Invoice question"]


class _Gen:
    """Per-call generation state shared by the service streams."""

    def __init__(self, sim: "Simulator", rng: random.Random):
        self.pop = sim.population
        self.rng = rng

    def event_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def message_id(self, service: str, ms: int) -> str:
        return f"<{self.rng.getrandbits(64):016x}.{ms}@{service}.{COMPANY_DOMAIN}>"

    def size(self, mu: float) -> int:
        return int(self.rng.lognormvariate(mu, 0.45))


def _fill(fmt: str, rng: random.Random) -> str:
    if "{" not in fmt:
        return fmt
    return fmt.format(n=rng.randrange(10000, 999999), n6=f"{rng.randrange(10**6):06d}")


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, tz=timezone.utc).strftime("%Y%m%d")


def _poisson_times(rng: random.Random, t0: float, t_end: float, rate: float, table: Sequence[float]) -> Iterator[float]:
    """Arrival times (s) of a Poisson process whose rate follows the hour of day."""
    t = t0
    while True:
        t += rng.expovariate(max(rate * _factor(table, t), 1e-9))
        if t >= t_end:
            return
        yield t


def _transactional(g: _Gen, service: str, t0: float, t_end: float, rate: float, table) -> Iterator[Event]:
    rng, pop = g.rng, g.pop
    from_, templates, mu = _TRANSACTIONAL[service]
    for t in _poisson_times(rng, t0, t_end, rate, table):
        ms = int(t * 1000)
        addr, header = pop.user(rng.randrange(pop.n_users))
        template, subj = templates[rng.randrange(len(templates))]
        to, env, cc = header, [addr], ""
        # Business customers sometimes have their accounts team copied: visible and delivered.
        if service == "billing" and rng.random() < 0.05:
            cc_addr = f"accounts@{addr.rpartition('@')[2]}"
            cc, env = cc_addr, [addr, cc_addr]
        yield Event(
            event_id=g.event_id(), sent_at_ms=ms, service=service, message_id=g.message_id(service, ms),
            from_=from_, to=to, envelope_to=env, template=template, cc=cc,
            subject=_fill(subj, rng), size_bytes=g.size(mu),
        )


def _campaigns(g: _Gen, service: str, t0: float, t_end: float, rate: float, first_at: float,
               burst_factor: float) -> Iterator[Event]:
    """Campaigns back to back: a burst of one-To copies at ``burst_factor`` x the mean rate, then
    silence, so the long-run mean is ``rate``."""
    rng, pop = g.rng, g.pop
    from_, prefix, templates = _CAMPAIGN[service]
    t = t0 + first_at
    seq = 0
    burst = max(rate * burst_factor, 20.0 if burst_factor > 1 else rate)
    while t < t_end:
        seq += 1
        copies = max(20, int(max(50.0, rate * 120.0) * rng.uniform(0.5, 1.5)))
        campaign = f"{prefix}-{_day(int(t * 1000))}-{seq:03d}"
        template, subj = templates[rng.randrange(len(templates))]
        bare = rng.random() < 0.4       # some mailers write bare addresses, others name-addr
        start, stride = rng.randrange(pop.n_users), pop.stride
        size = g.size(10.6)
        start_t = t
        for k in range(copies):
            t += rng.expovariate(burst)
            if t >= t_end:
                return
            ms = int(t * 1000)
            addr, header = pop.user((start + k * stride) % pop.n_users)
            yield Event(
                event_id=g.event_id(), sent_at_ms=ms, service=service, message_id=g.message_id(service, ms),
                from_=from_, to=addr if bare else header, envelope_to=[addr], campaign=campaign,
                template=template, subject=subj, size_bytes=size + rng.randrange(200),
            )
        t = max(t, start_t + copies / max(rate, 1e-9))


def _internal(g: _Gen, t0: float, t_end: float, rate: float, table) -> Iterator[Event]:
    rng, pop = g.rng, g.pop
    n = pop.n_employees
    for t in _poisson_times(rng, t0, t_end, rate, table):
        ms = int(t * 1000)
        _, sender = pop.employee(rng.randrange(n))
        r = rng.random()
        cc = ""
        if r < 0.05:
            # Announcement to many colleagues by Bcc: nobody's address is visible.
            env = [pop.employee(i)[0] for i in rng.sample(range(n), rng.randint(10, 60))]
            to = "Undisclosed recipients:;"
        elif r < 0.08:
            to, env = f"All Staff <all-staff@{COMPANY_DOMAIN}>", [f"all-staff@{COMPANY_DOMAIN}"]
        else:
            people = [pop.employee(i) for i in rng.sample(range(n), rng.randint(1, 11))]
            n_to = max(1, len(people) - (rng.randint(0, 3) if rng.random() < 0.3 else 0))
            to = ", ".join(h for _, h in people[:n_to])
            cc = ", ".join(h for _, h in people[n_to:])
            env = [a for a, _ in people]
            if rng.random() < 0.1:      # a silent Bcc to a manager: delivered, not visible
                env.append(pop.employee(rng.randrange(n))[0])
        yield Event(
            event_id=g.event_id(), sent_at_ms=ms, service="internal", message_id=g.message_id("internal", ms),
            from_=sender, to=to, envelope_to=env, cc=cc,
            subject=_INTERNAL_SUBJECTS[rng.randrange(len(_INTERNAL_SUBJECTS))], size_bytes=g.size(10.0),
        )


def _support(g: _Gen, t0: float, t_end: float, rate: float, table) -> Iterator[Event]:
    """Threads of 2-4 visible people: one submission to all, or one copy per recipient with one
    Message-ID (a few hundred ms apart), both normal ways to send a small group message."""
    rng, pop = g.rng, g.pop
    from_ = '"Acme Support" <support@acme.example>'
    pending: list[tuple[int, int, Event]] = []
    tie = 0
    # A thread averages ~1.7 events (40 % are sent as one copy per visible recipient).
    for t in _poisson_times(rng, t0, t_end, rate / 1.7, table):
        ms = int(t * 1000)
        while pending and pending[0][0] <= ms:
            yield heapq.heappop(pending)[2]
        customers = [pop.user(rng.randrange(pop.n_users)) for _ in range(rng.randint(1, 3))]
        agent = pop.employee(rng.randrange(pop.n_employees)) if rng.random() < 0.5 or len(customers) == 1 else None
        to = ", ".join(h for _, h in customers)
        cc = agent[1] if agent else ""
        visible = [a for a, _ in customers] + ([agent[0]] if agent else [])
        mid = g.message_id("support", ms)
        subject = _fill(_SUPPORT_SUBJECTS[rng.randrange(len(_SUPPORT_SUBJECTS))], rng)
        size = g.size(9.4)
        if rng.random() < 0.6:
            copies = [(ms, visible)]
        else:
            copies, cms = [], ms
            for a in visible:
                copies.append((cms, [a]))
                cms += rng.randint(20, 600)
        if copies[-1][0] >= t_end * 1000:
            continue                    # never cut a thread in half at the end of the run
        for cms, env in copies:
            ev = Event(
                event_id=g.event_id(), sent_at_ms=cms, service="support", message_id=mid, from_=from_,
                to=to, envelope_to=env, cc=cc, subject=subject, size_bytes=size,
            )
            tie += 1
            heapq.heappush(pending, (cms, tie, ev))
    while pending:
        yield heapq.heappop(pending)[2]


def _monitoring(g: _Gen, t0: float, t_end: float, rate: float, table) -> Iterator[Event]:
    rng = g.rng
    oncall, sre = f"oncall@{COMPANY_DOMAIN}", f"sre-team@{COMPANY_DOMAIN}"
    for t in _poisson_times(rng, t0, t_end, rate, table):
        ms = int(t * 1000)
        with_cc = rng.random() < 0.3
        yield Event(
            event_id=g.event_id(), sent_at_ms=ms, service="monitoring", message_id=g.message_id("monitoring", ms),
            from_=f"Alertmanager <alertmanager@{COMPANY_DOMAIN}>", to=f"On-call <{oncall}>",
            envelope_to=[oncall, sre] if with_cc else [oncall], cc=f"SRE <{sre}>" if with_cc else "",
            subject=f"[FIRING:{rng.randint(1, 5)}] {rng.choice(['HighLatency', 'DiskFull', 'ErrorRate'])}",
            size_bytes=g.size(8.9),
        )


# --- incidents ---------------------------------------------------------------------------------

class _Incident:
    """Builds one incident's event stream and records what it injected."""

    def __init__(self, sim: "Simulator", kind: str, service: str, t0: float, t_end: float, at_s: float,
                 size: int | None, duration_s: float | None, rate: float):
        self.sim, self.kind, self.service = sim, kind, service
        self.rng = random.Random(f"{sim.seed}:incident:{kind}:{service}")
        self.g = _Gen(sim, self.rng)
        self.start = t0 + at_s
        self.t_end = t_end
        self.size = size
        self.duration_s = duration_s
        self.rate = rate                      # this service's benign mean rate
        day = _day(int(self.start * 1000))
        self.campaign, self.template = {
            "concatenated_to": (f"nl-{day}-leak", "announcement"),
            "run_together": (f"promo-{day}-leak", "flash_sale"),
            "cc_leak": (f"{service}-notice-{day}", "account_notice"),
        }.get(kind, (None, None))
        self.info = Injection(kind, service, self.campaign, self.template, int(self.start * 1000), int(self.start * 1000))

    def _copies_rate(self) -> float:
        return max(self.rate * 8.0, 20.0)

    def events(self) -> Iterator[Event]:
        seen: dict[str, None] = {}
        for ev, exposed in getattr(self, "_" + self.kind)():
            if ev.sent_at_ms >= self.t_end * 1000:
                break
            self.info.event_ids.append(ev.event_id)
            self.info.end_ms = ev.sent_at_ms
            if exposed:
                seen.update(dict.fromkeys(exposed))
                self.info.exposed = list(seen)
            yield ev

    def _audience(self, n: int) -> list[tuple[str, str]]:
        pop = self.sim.population
        start = self.rng.randrange(pop.n_users)
        return [pop.user((start + k * pop.stride) % pop.n_users) for k in range(n)]

    def _batched_to(self, joiner: str, default_n: int, default_batch: int | None) -> Iterator[Event]:
        """A campaign whose every copy shows its whole batch in To, delivered to one member each."""
        n = self.size or default_n
        batch = default_batch or n
        users = self._audience(n)
        from_, _, _ = _CAMPAIGN.get(self.service, _CAMPAIGN["newsletter"])
        rate, t = self._copies_rate(), self.start
        subject = "Important: changes to your account"
        for b in range(0, n, batch):
            group = users[b:b + batch]
            to = joiner.join(a for a, _ in group)
            for addr, _ in group:
                ms = int(t * 1000)
                yield Event(
                    event_id=self.g.event_id(), sent_at_ms=ms, service=self.service,
                    message_id=self.g.message_id(self.service, ms), from_=from_, to=to, envelope_to=[addr],
                    campaign=self.campaign, template=self.template, subject=subject, size_bytes=self.g.size(10.6),
                ), [a for a, _ in group]
                t += self.rng.expovariate(rate)

    def _concatenated_to(self):
        return self._batched_to(", ", 200, None)

    def _run_together(self):
        return self._batched_to("", 100, 5)

    def _cc_leak(self):
        n = self.size or 50
        leaked = self._audience(30 + n)
        cc_people, recipients = leaked[:30], leaked[30:]
        exposed = [a for a, _ in cc_people]
        cc = ", ".join(h for _, h in cc_people)
        from_ = _TRANSACTIONAL.get(self.service, _TRANSACTIONAL["billing"])[0]
        rate, t = max(self.rate * 2.0, 5.0), self.start
        for addr, header in recipients:
            ms = int(t * 1000)
            yield Event(
                event_id=self.g.event_id(), sent_at_ms=ms, service=self.service,
                message_id=self.g.message_id(self.service, ms), from_=from_, to=header, envelope_to=[addr],
                cc=cc, campaign=self.campaign, template=self.template,
                subject="Important notice about your account", size_bytes=self.g.size(9.6),
            ), exposed
            t += self.rng.expovariate(rate)

    def _bcc_left(self):
        pop, rng = self.sim.population, self.rng
        n = self.size or 5
        t = self.start
        for _ in range(n):
            ms = int(t * 1000)
            people = [pop.employee(i) for i in rng.sample(range(pop.n_employees), 6)] + self._audience(6)
            env = [a for a, _ in people]
            yield Event(
                event_id=self.g.event_id(), sent_at_ms=ms, service=self.service,
                message_id=self.g.message_id(self.service, ms), from_=pop.employee(rng.randrange(pop.n_employees))[1],
                to="Undisclosed recipients:;", bcc=", ".join(h for _, h in people), envelope_to=env,
                subject="Partner programme: next steps", size_bytes=self.g.size(10.0),
            ), env
            t += rng.uniform(1.0, 10.0)

    def _volume_spike(self):
        """Nine times the service's normal traffic on top of it: x10 in total, normal-looking mail."""
        duration = self.duration_s or 180.0
        table = _RHYTHM.get(self.service, _DAY) if self.sim.rhythm else _FLAT
        for ev in _transactional(self.g, self.service if self.service in _TRANSACTIONAL else "notifications",
                                 self.start, self.start + duration, self.rate * 9.0, table):
            ev.service = self.service
            yield ev, None

    def _recipient_spike(self):
        pop, rng = self.sim.population, self.rng
        n = self.size or 20
        duration = self.duration_s or 60.0
        from_ = _TRANSACTIONAL.get(self.service, _TRANSACTIONAL["receipts"])[0]
        t = self.start
        for _ in range(n):
            ms = int(t * 1000)
            env = [pop.user(rng.randrange(pop.n_users))[0] for _ in range(rng.randint(200, 500))]
            yield Event(
                event_id=self.g.event_id(), sent_at_ms=ms, service=self.service,
                message_id=self.g.message_id(self.service, ms), from_=from_, to="Undisclosed recipients:;",
                envelope_to=env, template="receipt", subject="Your receipt", size_bytes=self.g.size(9.9),
            ), None
            t += duration / n


# --- the simulator -----------------------------------------------------------------------------

class Simulator:
    """Deterministic traffic: ``Simulator(seed=1, start_ms=..., rate=100.0).events(600, incident="cc_leak")``.

    Each call to ``events`` starts again from ``start_ms`` with the same seed, so it returns the same
    events; ``injected`` describes the incidents of the latest call.
    """

    def __init__(self, seed: int = 1, start_ms: int = 1_793_604_600_000, rate: float = 100.0,
                 services: Iterable[str] | None = None, rhythm: bool = True, burst: float = 8.0,
                 n_users: int = 100_000, n_employees: int = 600):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.seed = seed
        self.start_ms = int(start_ms)
        self.rate = float(rate)
        self.rhythm = rhythm
        if burst < 1:
            raise ValueError("burst must be >= 1 (1 = campaigns at their mean rate)")
        self.burst = float(burst)
        names = list(SERVICES) if services is None else list(services)
        unknown = [s for s in names if s not in SERVICES]
        if unknown or not names:
            raise ValueError(f"unknown service(s) {unknown}; choose from {', '.join(SERVICES)}")
        total = sum(SERVICES[s] for s in names)
        self.services = {s: SERVICES[s] / total for s in names}
        self.population = Population(n_users, n_employees)
        self.injected: list[Injection] = []

    def service_rate(self, service: str) -> float:
        """Mean benign events/s of ``service`` (its share of ``rate``; the default share if not simulated)."""
        share = self.services.get(service)
        return self.rate * (share if share is not None else SERVICES.get(service, 0.1))

    def events(self, duration_s: float, incident: str | Sequence[str] | None = None,
               incident_at_s: float | None = None, *, incident_size: int | None = None,
               incident_service: str | None = None, incident_duration_s: float | None = None) -> Iterator[Event]:
        """Events of ``[start_ms, start_ms + duration_s)`` in event-time order.

        ``incident`` is one kind of ``INCIDENT_KINDS`` or several; each starts ``incident_at_s`` after
        the start (default a third of the way in) on its own service (``INCIDENT_SERVICE``, or
        ``incident_service``). ``incident_size``: copies / messages injected (kind-specific default);
        ``incident_duration_s``: length of a spike.
        """
        kinds = [] if incident is None else [incident] if isinstance(incident, str) else list(incident)
        for k in kinds:
            if k not in INCIDENT_KINDS:
                raise ValueError(f"unknown incident {k!r}; choose from {', '.join(INCIDENT_KINDS)}")
        t0 = self.start_ms / 1000.0
        t_end = t0 + float(duration_s)
        at = duration_s / 3.0 if incident_at_s is None else float(incident_at_s)
        streams: list[Iterator[Event]] = []
        for service, share in self.services.items():
            rng = random.Random(f"{self.seed}:{service}")
            g = _Gen(self, rng)
            rate = self.rate * share
            table = _RHYTHM[service] if self.rhythm else _FLAT
            if service in _TRANSACTIONAL:
                streams.append(_transactional(g, service, t0, t_end, rate, table))
            elif service in _CAMPAIGN:
                first = rng.uniform(0.0, 5.0) if service == "newsletter" else rng.uniform(5.0, 30.0)
                if self.burst == 1:
                    first = 0.0
                streams.append(_campaigns(g, service, t0, t_end, rate, first, self.burst))
            elif service == "internal":
                streams.append(_internal(g, t0, t_end, rate, table))
            elif service == "support":
                streams.append(_support(g, t0, t_end, rate, table))
            else:
                streams.append(_monitoring(g, t0, t_end, rate, table))
        self.injected = []
        for k in kinds:
            service = incident_service or INCIDENT_SERVICE[k]
            inc = _Incident(self, k, service, t0, t_end, at, incident_size, incident_duration_s,
                            self.service_rate(service))
            self.injected.append(inc.info)
            streams.append(inc.events())
        return heapq.merge(*streams, key=_event_time)


def _event_time(ev: Event) -> int:
    return ev.sent_at_ms
