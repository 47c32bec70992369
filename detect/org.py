"""Who is "us" for a sending service: the organisation model behind the disclosure rules.

A disclosure is a person's address shown to people it was not meant for. The sender's own addresses
are not people in that sense: a newsletter whose To shows ``list@acme`` and whose Cc shows
``support@acme`` exposes nobody, although both are visible non-recipients on every copy. So every
visible address is put on one of two sides:

* **org** ("us"): the copy's own From address (shown to every recipient anyway); an address at a
  configured ``org_domains`` domain (or a subdomain: the operator's staff domains, the role of
  Exchange's accepted domains); a configured ``role_addresses`` entry; a role mailbox name (RFC 2142:
  support@, info@, list@, ...) at one of the service's own domains; a *learned* role address.
* **external**: everybody else — customers, partners, and the operator's own-domain mailboxes that
  are none of the above. An ISP or a university shares its domain with its customers, so "at the
  sender's domain" alone never makes an address "us".

**Learning.** An address at one of the service's own domains (the registrable domain of a From
address it used, or an ``org_domains`` entry — never a consumer provider), or a role mailbox name
(RFC 2142: support@, info@, list@, ...) at a non-consumer domain, that a campaign shows as a
non-recipient on copies to ``role_learn_copies`` different envelopes is learned as a role/list
address. Only copies that show at most ``role_max`` such non-recipients teach: a role pattern shows
one or two (list + support), a leaked customer list shows many. A customer shown on the copy of the
next customer (a mail-merge slip) appears once, so it is never learned.

Pure logic, no I/O. Addresses are held as the engine's 64-bit ids (keyed with the hash key), never
raw, and the state is plain JSON (``to_state``/``from_state``).
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

# Consumer mailbox providers: an address there is a private person, and such a domain is never
# anybody's organisation. Exact domains, plus brands that run the same service under many country
# domains (matched on the registrable domain's first label: yahoo.co.uk, hotmail.fr, gmx.at, ...).
CONSUMER_DOMAINS = frozenset("""
gmail.com googlemail.com outlook.com hotmail.com live.com msn.com passport.com yahoo.com ymail.com
rocketmail.com aol.com aim.com icloud.com me.com mac.com proton.me protonmail.com protonmail.ch pm.me
gmx.de gmx.net gmx.com gmx.at gmx.ch web.de t-online.de freenet.de arcor.de posteo.de posteo.net mailbox.org
mail.ru bk.ru inbox.ru list.ru internet.ru yandex.ru yandex.com ya.ru rambler.ru
qq.com foxmail.com 163.com 126.com yeah.net sina.com sina.cn sohu.com aliyun.com 139.com
naver.com hanmail.net daum.net kakao.com nate.com
orange.fr wanadoo.fr free.fr laposte.net sfr.fr neuf.fr bbox.fr
libero.it virgilio.it alice.it tin.it tiscali.it
seznam.cz centrum.cz wp.pl o2.pl onet.pl interia.pl
zoho.com zohomail.com mail.com email.com fastmail.com fastmail.fm tutanota.com tutanota.de tuta.io hey.com
rediffmail.com comcast.net verizon.net att.net sbcglobal.net bellsouth.net cox.net charter.net earthlink.net
btinternet.com sky.com virginmedia.com talktalk.net ntlworld.com blueyonder.co.uk
bigpond.com optusnet.com.au shaw.ca rogers.com bell.net sympatico.ca videotron.ca
uol.com.br bol.com.br terra.com.br ig.com.br
""".split())
CONSUMER_BRANDS = frozenset(("yahoo", "hotmail", "outlook", "live", "gmx", "yandex", "aol", "gmail"))

# Role mailbox names (RFC 2142 "Mailbox names for common services, roles and functions", plus the
# list/no-reply/support names bulk senders use). Such an address is a function, not a person, so it
# may be learned as the sender's role address even when it sits at another of the sender's domains
# (a brand domain next to the ESP domain in From) — never at a consumer provider.
ROLE_LOCALS = frozenset("""
postmaster abuse hostmaster webmaster noc security info marketing sales support billing accounts
noreply no-reply donotreply do-not-reply news newsletter list lists announce announcements customers
members help helpdesk service customerservice contact hello team office admin notifications
""".split())

# Second-level labels under which registrations happen one level deeper (example.co.uk, x.com.au).
_SECOND_LEVEL = frozenset(("co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go", "gob", "nic", "mil"))

_VERSIONS = itertools.count(1)   # every change of any model gets a new number: a cache key, never reused

ORG = "org"
EXTERNAL = "external"


_CLASS: dict[str, tuple[str, bool]] = {}     # domain -> (registrable domain, consumer): few distinct domains
_CLASS_MAX = 50_000


def classify(domain: str) -> tuple[str, bool]:
    """``(org_domain(domain), is_consumer(domain))``, cached: the disclosure path asks for every visible
    address, and a service's traffic has few distinct domains."""
    c = _CLASS.get(domain)
    if c is None:
        od = _org_domain(domain)
        c = (od, domain in CONSUMER_DOMAINS or od in CONSUMER_DOMAINS or od.split(".", 1)[0] in CONSUMER_BRANDS)
        if len(_CLASS) >= _CLASS_MAX:
            _CLASS.clear()
        _CLASS[domain] = c
    return c


def org_domain(domain: str) -> str:
    return classify(domain)[0]


def is_consumer(domain: str) -> bool:
    return classify(domain)[1]


def _org_domain(domain: str) -> str:
    """The registrable domain, approximated without a public-suffix list: the last two labels, or
    three under a two-letter country code with a generic second level (``co.uk``, ``com.au``)."""
    labels = domain.rstrip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _under(domain: str, roots: frozenset[str]) -> bool:
    """``domain`` equals one of ``roots`` or is a subdomain of one."""
    if domain in roots:
        return True
    i = domain.find(".")
    while i != -1:
        if domain[i + 1:] in roots:
            return True
        i = domain.find(".", i + 1)
    return False


class OrgModel:
    """One service's organisation: configured domains and roles, plus what its traffic taught."""

    MAX_OWN = 16             # own registrable domains remembered
    MAX_LEARNED = 256        # learned role addresses
    MAX_CANDIDATES = 4096    # (scope, address) pairs being counted

    def __init__(self, org_domains: Iterable[str] = (), role_addresses: Iterable[str] = (),
                 learn_copies: int = 5, role_max: int = 3):
        self.bind(org_domains, role_addresses, learn_copies, role_max)
        self.own: dict[str, None] = {}                  # registrable domains of the service's From addresses
        self.learned: dict[int, None] = {}
        self._last_from: tuple[str, ...] | None = None
        self.candidates: dict[str, list] = {}           # "scope\x00id" -> [distinct envelope ids (list)]

    def bind(self, org_domains: Iterable[str], role_addresses: Iterable[str], learn_copies: int,
             role_max: int) -> None:
        """(Re)attach configuration: it is never part of the state."""
        self.version = next(_VERSIONS)
        self.org_domains = frozenset(d.strip().lower().lstrip("@").rstrip(".") for d in org_domains if d.strip())
        self.roles = frozenset(a.strip().lower() for a in role_addresses if a.strip())
        self.learn_copies = learn_copies
        self.role_max = role_max

    # --- sides --------------------------------------------------------------------------------

    def see_from(self, addresses: tuple[str, ...]) -> None:
        """Remember the service's own domains, from its From addresses (consumer providers excepted: a
        service that sends from a gmail address does not make gmail its domain). A past From address
        is not "us" by itself: a relay for staff mail has people in From."""
        if addresses is self._last_from:
            return                      # the parser hands out the same tuple for the same header value
        self._last_from = addresses
        for a in addresses:
            od, consumer = classify(a.rpartition("@")[2])
            if consumer:
                continue
            if od not in self.own and len(self.own) < self.MAX_OWN:
                self.own[od] = None
                self.version = next(_VERSIONS)

    def is_org(self, addr: str, ident, from_: tuple[str, ...] = ()) -> bool:
        if addr in from_ or addr in self.roles:
            return True
        local, _, dom = addr.rpartition("@")
        if self.org_domains and _under(dom, self.org_domains):
            return True
        if local in ROLE_LOCALS and self.is_own_domain(dom):
            return True                 # support@ at our own domain is a function, never a person
        return bool(self.learned) and ident(addr) in self.learned

    def is_own_domain(self, domain: str) -> bool:
        """At one of the service's own domains (From or configured), and not a consumer provider."""
        if self.org_domains and _under(domain, self.org_domains):
            return True
        if not self.own:
            return False
        od, consumer = classify(domain)
        return od in self.own and not consumer

    def learnable(self, addr: str) -> bool:
        """May become a learned role address: at one of the service's own domains, or a role mailbox
        name (RFC 2142) at any non-consumer domain."""
        local, _, dom = addr.rpartition("@")
        if self.is_own_domain(dom):
            return True
        return local in ROLE_LOCALS and not classify(dom)[1]

    def side(self, addr: str, ident, from_: tuple[str, ...] = ()) -> str:
        return ORG if self.is_org(addr, ident, from_) else EXTERNAL

    # --- learning ----------------------------------------------------------------------------

    def observe(self, scope: str, strangers: tuple[str, ...], envelope: tuple[str, ...], ident) -> list[str]:
        """A copy of ``scope`` showed ``strangers`` (visible, external, not its recipients): count the
        own-domain ones towards role learning. Returns those learned by this copy."""
        if not envelope or not strangers or len(strangers) > self.role_max:
            return []
        learned = []
        env = ident(envelope[0])
        for a in strangers:
            if not self.learnable(a):
                continue
            i = ident(a)
            if i in self.learned:
                continue
            key = f"{scope}\x00{i}"
            seen = self.candidates.get(key)
            if seen is None:
                if len(self.candidates) >= self.MAX_CANDIDATES:
                    self.candidates.pop(next(iter(self.candidates)))
                seen = self.candidates[key] = []
            if env not in seen:
                seen.append(env)
            if len(seen) >= self.learn_copies:
                del self.candidates[key]
                if len(self.learned) >= self.MAX_LEARNED:
                    self.learned.pop(next(iter(self.learned)))
                self.learned[i] = None
                self.version = next(_VERSIONS)
                learned.append(a)
        return learned

    def candidate_envelopes(self, scope: str, addr: str, ident) -> int:
        """Distinct envelopes a campaign has shown this own-domain address to, so far."""
        seen = self.candidates.get(f"{scope}\x00{ident(addr)}")
        return len(seen) if seen else 0

    # --- state -------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"own": list(self.own), "learned": list(self.learned),
                "candidates": {k: list(v) for k, v in self.candidates.items()}}

    @classmethod
    def from_state(cls, d: dict[str, Any], org_domains: Iterable[str] = (), role_addresses: Iterable[str] = (),
                   learn_copies: int = 5, role_max: int = 3) -> "OrgModel":
        m = cls(org_domains, role_addresses, learn_copies, role_max)
        m.own = dict.fromkeys(str(x) for x in d.get("own", ()))
        m.learned = dict.fromkeys(int(i) for i in d.get("learned", ()))
        m.version = next(_VERSIONS)
        m.candidates = {str(k): [int(i) for i in v] for k, v in d.get("candidates", {}).items()}
        return m
