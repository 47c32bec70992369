"""Per-message disclosure signals: what one sent copy shows to whom.

Pure functions over a ``ParsedEvent`` (no state, no I/O), so the same verdict is reached live, in a
backtest and in a unit test. The engine adds what needs memory: sibling submissions of one
Message-ID (the ``wait`` verdict) and lists repeating across a campaign.

The central notion is the *stranger*: a visible (To/Cc) address that is not an envelope recipient of
this copy. A copy shows its strangers to people they were not sent to. Normal mail has none
(transactional, one-To-per-copy newsletters, a group thread sent as one submission) or has them only
because the same message went out as several submissions, one per recipient — which is why a copy with
a few strangers waits for its siblings instead of firing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from mailaudit.config import DisclosureRules
from mailaudit.detect.org import OrgModel, classify
from mailaudit.ingest.parsed import ParsedEvent

FIRE = "fire"        # alert now, on this copy
WAIT = "wait"        # a few strangers: decide after the group wait, once siblings had a chance to arrive
BENIGN = "benign"

CONCATENATED_TO = "concatenated_to"
RUN_TOGETHER = "run_together"
VISIBLE_DISCLOSURE = "visible_disclosure"
BCC_HEADER = "bcc_header"

# When one copy shows several problems, the alert names the most specific one; the others go in evidence.
KIND_PRIORITY = (CONCATENATED_TO, VISIBLE_DISCLOSURE, RUN_TOGETHER, BCC_HEADER)


@dataclass(slots=True)
class Signals:
    visible: int                      # distinct To+Cc addresses
    envelope: int                     # distinct envelope recipients
    strangers: tuple[str, ...]        # visible, external, not envelope recipients of this copy (header order)
    domains: int                      # distinct visible domains
    run_together: bool                # To/Cc addresses written with no separator
    bcc_exposed: tuple[str, ...]      # Bcc-header addresses that some other recipient of the copy can read
    concatenated: str | None          # "to" / "cc": a header holding a mass list with strangers in it
    open_list: bool                   # many external parties visible to each other (Cc-not-Bcc), recipients or not
    undisclosed: bool                 # an empty group ("undisclosed-recipients:;") and nothing else visible
    fingerprint: str | None           # of the visible list (>= 2 addresses): spots one list repeating
    verdict: str                      # FIRE / WAIT / BENIGN
    kinds: tuple[str, ...]            # alert kinds that fire now, most specific first
    severity: str | None              # of the alert when FIRE
    org: tuple[str, ...] = ()         # visible addresses on the organisation's side ("us")
    parties: int = 0                  # external parties visible (consumer-mailbox people + other organisations)
    all_strangers: int = 0            # visible non-recipients counting the organisation's own addresses (old meaning)

    @property
    def kind(self) -> str | None:
        return self.kinds[0] if self.kinds else None


def default_fingerprint(addresses: tuple[str, ...]) -> str:
    """Order-independent digest of a visible list, so copies of one campaign with one list compare equal."""
    h = hashlib.blake2b(digest_size=8)
    for a in sorted(addresses):
        h.update(a.encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def trivially_benign(ps: ParsedEvent) -> bool:
    """The bulk of real traffic — at most one visible address, no Bcc header, clean syntax — settled
    without building signals (the hot path of a detector reading 10k events/s)."""
    to, cc = ps.to, ps.cc
    return (
        len(to.addresses) <= 1 and not to.run_together and not to.unparseable
        and not cc.addresses and not cc.unparseable and not ps.bcc.addresses
    )


def disclosure_signals(
    ps: ParsedEvent,
    rules: DisclosureRules,
    fingerprint: Callable[[tuple[str, ...]], str] = default_fingerprint,
    org: OrgModel | None = None,
    ident: Callable[[str], int] | None = None,
    view: "VisibleView | None" = None,
) -> Signals:
    """The verdict on one copy. ``org``/``ident``: the service's organisation model and the address
    id function it keys on; without them the configured ``org_domains``/``role_addresses``, the
    copy's own From address and role mailbox names at its domain count as "us" (nothing learned).
    ``view``: a ``visible_view`` of this copy's headers computed earlier (copies of one long list
    share it); its envelope-dependent part is always computed here."""
    visible = ps.visible
    envelope = set(ps.envelope)
    n_visible = len(visible)
    to, cc, bcc = ps.to, ps.cc, ps.bcc

    run_together = to.run_together or cc.run_together or _garbled(to) or _garbled(cc)
    from_ = ps.from_.addresses

    # Fast path: the bulk of real traffic (one visible address, no Bcc header, clean syntax).
    if n_visible <= 1 and not bcc.addresses and not run_together:
        strangers = tuple(a for a in visible if a not in envelope and a not in from_)
        return Signals(
            visible=n_visible, envelope=len(envelope), strangers=strangers,
            domains=n_visible, run_together=False, bcc_exposed=(), concatenated=None,
            open_list=False, undisclosed=n_visible == 0 and (to.group or cc.group),
            fingerprint=None, verdict=BENIGN, kinds=(), severity=None,
            org=tuple(a for a in visible if a in from_), parties=len(strangers),
            all_strangers=sum(1 for a in visible if a not in envelope),
        )

    if org is None or ident is None:
        # A stateless caller (the inline milter policy): the configured organisation and the copy's
        # own domain, without what a service's history would teach.
        org = OrgModel(rules.org_domains, rules.role_addresses, 0, rules.role_max)
        org.see_from(from_)
        ident = _no_ident
    v = view if view is not None else visible_view(ps, org, ident, fingerprint)
    ours = v.ours
    ext = v.ext
    hit = envelope & v.ext_set
    strangers = tuple(a for a in ext if a not in hit) if hit else ext
    n_strangers = len(strangers)
    domains = v.domains

    # Who is exposed (see VisibleView): in a campaign, the sender's own-domain mailboxes that
    # receive it are its customers (an ISP's, a university's), each a party.
    own_customers = len(v.own_ext & envelope) if v.own_ext else 0
    parties = v.people + v.orgs + v.own_seen
    campaign_parties = v.people + v.orgs + max(own_customers, v.own_seen)

    concatenated = None
    for name, hset, hcount in (("to", v.to_set, to.count), ("cc", v.cc_set, cc.count)):
        header_strangers = len(hset) - len(hset & envelope)
        if header_strangers >= rules.strangers_min and (
            hcount >= rules.visible_max or header_strangers >= rules.strangers_critical
        ):
            concatenated = name
            break

    open_list = bool(
        (rules.open_list_domains and parties >= rules.open_list_domains)
        or (rules.campaign_list_parties and ps.event.campaign and campaign_parties >= rules.campaign_list_parties)
    )

    # RFC 5322 allows the copy delivered to a Bcc recipient to carry a Bcc: naming that recipient only;
    # a Bcc address is disclosed when somebody else receives the copy.
    bcc_exposed: tuple[str, ...] = ()
    if bcc.addresses:
        bcc_exposed = tuple(
            b for b in dict.fromkeys(bcc.addresses)
            if any(e != b for e in envelope)
            and not org.is_org(b, ident, from_)
        )

    kinds: list[str] = []
    severity = None
    if concatenated == "to":
        kinds.append(CONCATENATED_TO)
    if n_strangers >= rules.strangers_critical or concatenated == "cc" or open_list:
        kinds.append(VISIBLE_DISCLOSURE)
    if kinds:
        severity = "critical"
    if run_together and rules.run_together:
        kinds.append(RUN_TOGETHER)
        if n_strangers >= rules.strangers_min:
            severity = "critical"
        else:
            severity = severity or "warning"
    if bcc_exposed and rules.bcc_header:
        kinds.append(BCC_HEADER)
        if len(bcc_exposed) >= rules.strangers_critical:
            severity = "critical"
        else:
            severity = severity or "warning"

    if kinds:
        verdict = FIRE
    elif n_strangers >= rules.strangers_min:
        verdict = WAIT
    else:
        verdict = BENIGN

    return Signals(
        visible=n_visible,
        envelope=len(envelope),
        strangers=strangers,
        domains=domains,
        run_together=run_together,
        bcc_exposed=bcc_exposed,
        concatenated=concatenated,
        open_list=open_list,
        undisclosed=n_visible == 0 and (to.group or cc.group),
        fingerprint=v.fingerprint,
        verdict=verdict,
        kinds=tuple(k for k in KIND_PRIORITY if k in kinds),
        severity=severity,
        org=tuple(a for a in visible if a in ours) if ours else (),
        parties=max(parties, campaign_parties) if ps.event.campaign else parties,
        all_strangers=n_visible - len(v.visible_set & envelope),
    )


@dataclass(slots=True)
class VisibleView:
    """What a copy's verdict needs from its visible list and the organisation model alone — the same
    for every copy of one list, so the engine may compute it once for a long list (a concatenated To
    repeats on every copy). Who is exposed: each person at a consumer provider is a party; the staff
    of another organisation count once per organisation (they know each other); the sender's
    own-domain mailboxes that are not "us" count once (``own_seen``)."""

    ours: frozenset[str]              # visible addresses on the organisation's side
    ext: tuple[str, ...]              # the others, header order
    ext_set: frozenset[str]
    visible_set: frozenset[str]
    own_ext: frozenset[str]           # external addresses at the sender's own domain
    people: int                       # external addresses at consumer providers
    orgs: int                         # other external organisations (registrable domains)
    own_seen: bool
    domains: int                      # distinct visible domains
    to_set: frozenset[str]            # distinct To addresses not ours
    cc_set: frozenset[str]
    fingerprint: str | None


def visible_view(ps: ParsedEvent, org: OrgModel, ident: Callable[[str], int],
                 fingerprint: Callable[[tuple[str, ...]], str] = default_fingerprint) -> VisibleView:
    visible = ps.visible
    from_ = ps.from_.addresses
    ours = frozenset(a for a in visible if org.is_org(a, ident, from_))
    ext = tuple(a for a in visible if a not in ours) if ours else visible
    people = 0
    orgs: set[str] = set()
    own: list[str] = []
    own_check = bool(org.own or org.org_domains)
    for a in ext:
        dom = a.rpartition("@")[2]
        od, consumer = classify(dom)
        if consumer:
            people += 1
        elif own_check and org.is_own_domain(dom):
            own.append(a)
        else:
            orgs.add(od)
    return VisibleView(
        ours=ours, ext=ext, ext_set=frozenset(ext), visible_set=frozenset(visible), own_ext=frozenset(own),
        people=people, orgs=len(orgs), own_seen=bool(own),
        domains=len({a.rpartition("@")[2] for a in visible}),
        to_set=frozenset(ps.to.addresses) - ours, cc_set=frozenset(ps.cc.addresses) - ours,
        fingerprint=fingerprint(visible) if len(visible) >= 2 else None,
    )


def _no_ident(addr: str) -> int:
    raise AssertionError("a stateless organisation model has nothing learned to look up")


def _garbled(header) -> bool:
    """A fragment the parser could not split that still holds several '@': addresses run together
    in a way no splitting rule recognised (unknown TLDs). Flag it rather than read it as nobody."""
    return any(f.count("@") >= 2 for f in header.unparseable) if header.unparseable else False


def disclosed_addresses(ps: ParsedEvent, sig: Signals, kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses a leaking copy put in front of its recipients, for the given fired kinds.

    A Bcc-only finding discloses the Bcc addresses (the visible list is the normal one); every other
    kind discloses the visible list, plus the Bcc addresses when that header leaked too.
    """
    out: tuple[str, ...] = ()
    if any(k != BCC_HEADER for k in kinds):
        out = ps.visible
    if BCC_HEADER in kinds and sig.bcc_exposed:
        out = tuple(dict.fromkeys(out + sig.bcc_exposed))
    return out
