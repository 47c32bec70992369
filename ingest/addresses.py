"""RFC 5322 address-list parsing that survives whatever mailers actually write.

Pure (no I/O). The consumer calls this on every header of every event, so there are two paths:

* a fast path for the overwhelmingly common shapes (``a@b.com``, ``Name <a@b.com>``,
  ``"Doe, J" <j@b.com>``, comma or ``;`` lists of those): one precompiled regex validates the whole
  value and ``findall`` extracts the addresses, all in C;
* a full tokenizer for everything else (quoted strings, comments, groups, RFC 2047 encoded words,
  ``;`` separators, broken forms). It is iterative throughout, so hostile input (megabyte values,
  thousands of nested comments or groups) costs linear time and never hits the recursion limit.

The detectors care most about the *broken* forms, because they are what a buggy mailer produces
when it leaks a recipient list: addresses run together with no separator (``a@x.comb@y.org``, the
BitMEX-style concatenated To:) are split back apart at the point where a domain ending in a known TLD
is directly followed by the next local part, and flagged.

``unparseable`` fragments are raw header text, lower-cased (they may contain personal data): whoever
stores them must pass them through ``privacy.redact_text`` first.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class ParsedHeader(NamedTuple):
    """What one header value says. Immutable, because parses are cached and shared between events;
    a named tuple because it is built once per header of every event (the hot path), and a tuple
    costs a third of a frozen dataclass to build (0.3 vs 0.9 µs)."""

    addresses: tuple[str, ...]          # addr-specs, normalised: lower-cased "local@domain", in order, duplicates kept
    domains: tuple[str, ...]            # distinct domains in first-seen order
    run_together: bool = False          # two or more addresses written with no separator (a@x.comb@y.org, <a@x><b@y>)
    group: bool = False                 # an RFC 5322 group (incl. "undisclosed-recipients:;")
    semicolon: bool = False             # ';' used as a list separator outside a group
    encoded_words: bool = False         # RFC 2047 encoded words were present
    unparseable: tuple[str, ...] = ()   # fragments that were not addresses (truncated to 80 chars each)
    missing_separator: bool = False     # addresses separated only by whitespace/comments (a@x.com b@y.org)

    @property
    def count(self) -> int:
        return len(self.addresses)


EMPTY = ParsedHeader((), ())

FRAGMENT_MAX = 80          # characters kept of one unparseable fragment
FRAGMENTS_MAX = 1000       # fragments kept per header: a megabyte of garbage must not become a megabyte of tuple

# --------------------------------------------------------------------------------------------------
# Character classes shared by both paths (so the fast path never accepts what the full parser would
# reject). Non-ASCII is allowed (SMTPUTF8 locals, IDN domains) except whitespace and C1 controls.

# atext plus non-ASCII: a dot-atom's characters, without the dot (and with it).
_NOT_ATEXT = r"\x00-\x20\"(),:;<>@\[\\\]\x7f-\x9f\s"
_LCH = rf"[^{_NOT_ATEXT}.]"
_LCH_OR_DOT = rf"[^{_NOT_ATEXT}]"
# domain label characters: letters, digits, '-', '_' and non-ASCII.
_DCH = r"[^\x00-\x2c./:-@\[-^`{-\x9f\s]"
_DOMAIN_RX = re.compile(rf"{_DCH}+(?:\.{_DCH}+)*\.?")      # a trailing root dot is dropped later
_DOMAIN_STRICT_RX = re.compile(rf"{_DCH}++(?:\.{_DCH}++)*+")
_DCH_RX = re.compile(rf"{_DCH}+")
_LCH_OR_EMPTY_RX = re.compile(rf"{_LCH}*")
# Lenient local part for the full parser: obsolete forms like "john..doe" and "taro.@docomo.ne.jp" are
# real, so any mix of atext and dots with at least one atext character is accepted.
_LOCAL_LENIENT_RX = re.compile(rf"\.*+{_LCH}{_LCH_OR_DOT}*+")

# Fast path: a list of "addr" / "phrase <addr>" elements, display names possibly quoted. Validated
# whole by one regex (possessive quantifiers: no backtracking blow-up when it fails), then the
# addresses are pulled out by findall, quoted strings being skipped so an '@' inside one never counts.
_QUOTED = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_PHRASE = rf"(?:[^\x00-\x08\x0e-\x1f\"(),:;<>@\[\\\]\x7f]++|{_QUOTED})*+"
_FAST_ADDR = rf"{_LCH}++(?:\.{_LCH}++)*+@{_DCH}++(?:\.{_DCH}++)*+"
_FAST_ITEM = rf"(?>{_PHRASE}<\s*+{_FAST_ADDR}\s*+>|{_FAST_ADDR})"
_FAST_LIST = {
    sep: re.compile(rf"[\s{sep}]*+(?:{_FAST_ITEM}(?:\s*+[{sep}][\s{sep}]*+{_FAST_ITEM})*+)?[\s{sep}]*+")
    for sep in (",", ",;")
}
# One element and nothing else (the To: of one copy per recipient, every From:): validated and the
# address captured by one match, without the list's findall and count.
_FAST_ONE = re.compile(rf"\s*+(?>{_PHRASE}<\s*+({_FAST_ADDR})\s*+>|({_FAST_ADDR}))\s*+")
# An address starts at the start, after a separator or after '<' (nowhere else once validated).
_FAST_FIND_ADDR = re.compile(rf"{_QUOTED}|(?<![^\s<,;])({_FAST_ADDR})")
# Display-name lists: pulling out the angle contents is cheaper than trying every phrase position.
_FAST_FIND_ANGLE = re.compile(rf"{_QUOTED}|<\s*+([^>\s]++)\s*+>")
# RFC 2047 encoded word (values are lower-cased before matching); "clean" = no special inside.
_ENCODED_WORD_RX = re.compile(r"=\?[^?\s]+\?[bq]\?[^?\s]*\?=")
_CLEAN_ENCODED_WORD_RX = re.compile(r"=\?[^?\s,;:<>@\"()\[\]\\]+\?[bq]\?[^?\s,;:<>@\"()\[\]\\]*\?=")


def _lenient_local_ok(text: str) -> bool:
    return _LOCAL_LENIENT_RX.fullmatch(text) is not None


# --------------------------------------------------------------------------------------------------
# Top-level domains, in tiers of how often they appear in mail. The tier decides between competing
# split points of a run-together middle part ("gmail.comjane.doe": .com beats .do). The last tier ends
# with the reserved and intranet names (RFC 2606 / 6762) that test data and internal mail use.

_TLD_TIER0 = """
com org net edu gov info biz io co me us uk de fr it es nl be ch at se no dk fi pl ru ua cz jp cn kr
in au nz ca br mx ar za ie pt gr tr il sg hk tw eu
"""
_TLD_TIER1 = """
mil int name pro aero coop museum mobi asia tel travel jobs cat post xxx
ac ad ae af ag ai al am ao aq as aw ax az ba bb bd bf bg bh bi bj bm bn bo bq bs bt bw by bz
cc cd cf cg ci ck cl cm cr cu cv cw cx cy dj dm do dz ec ee eg er et fj fk fm fo ga gd ge gf gg gh
gi gl gm gn gp gq gs gt gu gw gy hm hn hr ht hu id im iq ir is je jm jo ke kg kh ki km kn kp kw ky
kz la lb lc li lk lr ls lt lu lv ly ma mc md mg mh mk ml mm mn mo mp mq mr ms mt mu mv mw my mz na nc
ne nf ng ni np nr nu om pa pe pf pg ph pk pm pn pr ps pw py qa re ro rs rw sa sb sc sd sh si sk sl
sm sn so sr ss st su sv sx sy sz tc td tf tg th tj tk tl tm tn to tt tv tz ug uy uz va vc ve vg vi
vn vu wf ws ye yt zm zw рф xn--p1ai
"""
_TLD_TIER2 = """
app dev xyz online site tech store shop club top email cloud company solutions agency digital global
life live world news media network systems group team studio design space website blog art center
today services consulting academy marketing management software support finance financial capital
fund bank insurance law legal health care clinic church community university school education
institute foundation partners ventures works tools zone pub bar cafe restaurant city london berlin
paris nyc tokyo amsterdam wien hamburg bayern swiss scot wales africa eus gal quebec page new google
amazon apple microsoft gmbh ltd llc inc fun icu vip win work click link one fyi run rocks ninja guru
expert photography photos gallery video film games bet casino sport football golf fitness fashion
house land realty properties estate energy solar green eco earth bio family men moe lol best
sale shopping market trade money cash credit tax lawyer dental doctor hospital healthcare pharmacy
computer comcast netflix organic international ngo ong chat social events tours technology
engineering science host hosting domains download report review reviews plus direct express
example test invalid localhost local internal intranet corp lan home
"""

_TLDS: dict[str, int] = {}
for _tier, _block in enumerate((_TLD_TIER0, _TLD_TIER1, _TLD_TIER2)):
    for _t in _block.split():
        _TLDS.setdefault(_t, _tier)
del _tier, _block, _t
# By first two letters, best first (common tier, then longest): the first prefix that fits is the pick.
_TLDS_BY_HEAD: dict[str, tuple[tuple[str, int], ...]] = {}
for _t, _tier in sorted(_TLDS.items(), key=lambda kv: (kv[1], -len(kv[0]))):
    _TLDS_BY_HEAD[_t[:2]] = _TLDS_BY_HEAD.get(_t[:2], ()) + ((_t, _tier),)
del _t, _tier

# Quick split of a run-together middle part, in C: the first label (after the first) that starts with
# a known TLD and is not one, alternatives ordered best first. Taken as is when it is tier 0 and no
# other label looks like the trace of a wrong split; anything subtler goes through _tld_split.
_SUSPECT_PREFIXES = frozenset(("com", "org", "net", "edu", "gov"))


def _alternation(words: list[str]) -> str:
    """'a|b|c' grouped by first character: the regex engine tries ~30 branches per position, not ~450.

    Order within a group is kept, which is all that matters: branches with different first
    characters can never both match at one position.
    """
    groups: dict[str, list[str]] = {}
    for w in words:
        groups.setdefault(w[0], []).append(re.escape(w[1:]))
    return "|".join(f"{re.escape(c)}(?:{'|'.join(rest)})" for c, rest in groups.items())


_TLD_ALTERNATION = _alternation([t for t, _ in sorted(_TLDS.items(), key=lambda kv: (kv[1], -len(kv[0])))])
_TLD_CANDIDATE_RX = re.compile(rf"\.(?!(?:{_TLD_ALTERNATION})(?:\.|$))(?=({_TLD_ALTERNATION})[^.@])")
_SUSPECT_RX = re.compile(r"(?:^|\.)(?:com|org|net|edu|gov)[^.@]")


def _split_run_together(text: str, _search=_TLD_CANDIDATE_RX.search, _suspect=_SUSPECT_RX.search,
                        _domain=_DOMAIN_STRICT_RX.fullmatch, _local=_LOCAL_LENIENT_RX.fullmatch):
    """("domain", "next local") out of a middle part of an '@' chain such as "x.comjane.doe".

    Runs once per address of a leaked list, so the common case is a handful of C calls (the
    keyword defaults are local aliases); anything subtle goes to _tld_split.
    """
    m = _search(text)
    if m is None:
        return None
    tld = m.group(1)
    if _TLDS[tld] == 0:
        pos = m.start() + 1                      # the split label
        cut = pos + len(tld)
        after = text.find(".", cut)
        if (
            _suspect(text, 0, pos) is None
            and (after < 0 or _suspect(text, after) is None)
            and _domain(text, 0, cut) is not None
            and _local(text, cut) is not None
        ):
            return text[:cut], text[cut:]
    return _tld_split(text)


def _tld_split(text: str) -> tuple[str, str] | None:
    """Split a run-together middle part "x.comjane.doe" into ("x.com", "jane.doe").

    Candidates are the known-TLD prefixes of the labels after the first, leaving a non-empty local
    remainder; per label the most common tier wins, then the longest (".com" over ".co" in "comjane").
    Between labels: fewest suspect labels elsewhere ("comjane" left inside a domain or a local part),
    then not a weak match, then the earliest label: a dotted local part ("k.ito", "jane.doe") is far
    more common than a run-together domain with several labels. Known blind spots, all genuinely
    ambiguous text: "x.co"+"mary" reads as "x.com"+"ary"; "mail.inbox.de"+"jane" as "mail.in"+"box.dejane".
    Hot on leaked lists of thousands of addresses, hence the hand-inlined loops.
    """
    labels = text.split(".")
    n = len(labels)
    if n < 2:
        return None
    by_head = _TLDS_BY_HEAD
    cands = []
    for k in range(1, n):
        lab = labels[k]
        options = by_head.get(lab[:2])
        if options is None or lab in _TLDS:       # "com" in "bigpond.com.au" is no "co" + "m"
            continue
        size = len(lab)
        for tld, tier in options:
            if size > len(tld) and lab.startswith(tld):
                # weak: two or three letters of a rare TLD begin ordinary words by chance
                # ("jane.doe" is not at the Dominican domain "jane.do")
                weak = 1 if tier and len(tld) < 4 else 0
                cands.append((k, weak, len(tld)))
                break
    if not cands:
        return None
    # Validity bounds, computed once so that many failing candidates stay linear: the domain needs
    # labels[:k] to be domain labels, the local part needs everything after the TLD to be atext.
    dom_ok_upto = n
    for i, lab in enumerate(labels):
        if _DCH_RX.fullmatch(lab) is None:
            dom_ok_upto = i
            break
    local_bad_last = -1
    for i in range(n - 1, -1, -1):
        if _LCH_OR_EMPTY_RX.fullmatch(labels[i]) is None:
            local_bad_last = i
            break
    if len(cands) > 1:
        pre = _SUSPECT_PREFIXES
        suspect = [1 if len(lab) > 3 and lab[:3] in pre and lab not in _TLDS else 0 for lab in labels]
        total = sum(suspect)
        cands.sort(key=lambda c: (total - suspect[c[0]], c[1], c[0]))   # suspects, weak, earliest
    for k, _, tl in cands:
        if k > dom_ok_upto or k < local_bad_last:
            continue
        lab = labels[k]
        rest = lab[tl:]
        if k == local_bad_last and _LCH_OR_EMPTY_RX.fullmatch(rest) is None:
            continue
        domain = ".".join(labels[:k]) + "." + lab[:tl]
        local = rest if k + 1 == n else rest + "." + ".".join(labels[k + 1:])
        return domain, local
    return None


# --------------------------------------------------------------------------------------------------
# Full parser: tokenizer

_TOKEN_PARTS = (
    ("W", r"\s+"),
    ("E", r"=\?[^?\s]+\?[bq]\?[^?\s]*\?="),                 # RFC 2047 encoded word (input is lower-cased)
    ("A", r"[^\s\x00-\x1f\x7f\"(),:;<>\[\]\\]+"),            # atom, '@' and '.' included
    ("Q", r"\"[^\"\\]*(?:\\.[^\"\\]*)*\""),                 # quoted string
    ("D", r"\[[^\[\]\\]*\]"),                                # domain literal
    ("S", r"[,;:<>]"),
    ("C", r"\("),                                            # comment start, scanned by hand (nesting)
    ("J", r"."),                                             # junk: stray quote, bracket, backslash, control
)


def _tokenizer(quotes: bool, comments: bool) -> re.Pattern[str]:
    parts = [(k, p) for k, p in _TOKEN_PARTS if (quotes or k != "Q") and (comments or k != "C")]
    return re.compile("|".join(f"(?P<{k}>{p})" for k, p in parts), re.S)


# Once a quoted string or comment is found unterminated, later ones would be rescanned to the end
# every time (quadratic on hostile input), so quoting/comments are switched off for the rest.
_TOKENIZERS = {(q, c): _tokenizer(q, c) for q in (True, False) for c in (True, False)}
_PAREN = re.compile(r"[()\\]")
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


def _comment_end(s: str, pos: int) -> int:
    """Index just past the comment opening at ``pos`` (nested, with quoted-pairs), or -1."""
    depth = 0
    i = pos
    search = _PAREN.search
    while True:
        m = search(s, i)
        if m is None:
            return -1
        c = m.group()
        i = m.end()
        if c == "\\":
            i += 1
        elif c == "(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i


def _tokens(s: str):
    """Yield (kind, text); comments come out as whitespace, quoted strings unquoted."""
    n = len(s)
    pos = 0
    quotes = comments = True
    rx = _TOKENIZERS[(True, True)]
    while pos < n:
        m = rx.match(s, pos)
        kind = m.lastgroup
        if kind == "C":
            end = _comment_end(s, pos)
            if end < 0:
                comments = False
                rx = _TOKENIZERS[(quotes, comments)]
                continue
            yield "W", " "
            pos = end
            continue
        text = m.group()
        pos = m.end()
        if kind == "Q":
            text = text[1:-1]
            if "\\" in text:
                text = _QUOTED_PAIR.sub(r"\1", text)
        elif kind == "J" and text == '"' and quotes:
            quotes = False
            rx = _TOKENIZERS[(quotes, comments)]
        yield kind, text


def _raw(segs) -> str:
    return "".join(f'"{t}"' if k == "Q" else t for k, t in segs)


# --------------------------------------------------------------------------------------------------
# Full parser: addr-spec words (possibly several run together)


def _local_of(segs) -> str | None:
    if not segs:
        return None
    if len(segs) == 1 and segs[0][0] == "A":
        text = segs[0][1]
        return text if _lenient_local_ok(text) else None
    if any(k not in ("A", "Q") for k, _ in segs):
        return None
    text = "".join(t for _, t in segs)
    if _lenient_local_ok(text):
        return text
    if not text:
        return None
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _domain_of(segs) -> str | None:
    if len(segs) != 1:
        return None
    kind, text = segs[0]
    if kind == "D":
        return text
    if kind == "A" and _DOMAIN_RX.fullmatch(text):
        return text[:-1] if text.endswith(".") else text
    return None


def _split_middle(segs):
    """A middle part of an '@' chain is 'domain' immediately followed by the next 'local'."""
    if not segs:
        return None
    kind, text = segs[0]
    rest = segs[1:]
    if kind == "D":
        return (text, rest) if rest else None
    if kind != "A":
        return None
    if rest:
        dom = _domain_of(segs[:1])
        if dom is not None and not text.endswith("."):
            return dom, rest
    split = _split_run_together(text)
    if split is None:
        return None
    return split[0], [("A", split[1])] + rest


def _parse_atom_chain(text: str):
    """_parse_word for the usual run-together shape: one atom, no quotes ("a@x.comb@y.org...")."""
    parts = text.split("@")
    found = []
    frags = []
    splits = 0
    local = parts[0]
    broken: list[str] | None = None
    for mid in parts[1:-1]:
        split = _split_run_together(mid) if mid else None
        if split is None:
            if broken is None:
                broken = [local]
            broken.append(mid)
            continue
        splits += 1
        dom, nxt = split
        if broken is None:
            if _lenient_local_ok(local):
                found.append((f"{local}@{dom}", dom))
            else:
                frags.append(f"{local}@{dom}")
        else:
            frags.append("@".join(broken) + "@" + dom)
            broken = None
        local = nxt
    last = parts[-1]
    dom = _domain_of([("A", last)]) if last else None
    if broken is None and dom is not None and _lenient_local_ok(local):
        found.append((f"{local}@{dom}", dom))
    else:
        frags.append("@".join(broken or [local]) + "@" + last)
    return found, frags, splits > 0


def _parse_word(segs):
    """(addresses as (addr, domain), unparseable fragments, run_together) of one addr-spec word."""
    if len(segs) == 1 and segs[0][0] == "A" and segs[0][1].count("@") > 1:
        return _parse_atom_chain(segs[0][1])
    parts: list[list] = [[]]
    for kind, text in segs:
        if kind == "A" and "@" in text:
            pieces = text.split("@")
            if pieces[0]:
                parts[-1].append(("A", pieces[0]))
            for p in pieces[1:]:
                parts.append([("A", p)] if p else [])
        else:
            parts[-1].append((kind, text))
    found = []
    frags = []
    if len(parts) == 1:                      # "<foo>": no '@' at all
        return found, [_raw(segs)], False
    if len(parts) == 2:
        loc = _local_of(parts[0])
        dom = _domain_of(parts[1])
        if loc is not None and dom is not None:
            found.append((f"{loc}@{dom}", dom))
        else:
            frags.append(_raw(segs))
        return found, frags, False

    splits = 0
    cur_local = parts[0]
    broken: list[str] | None = None          # raw pieces of a fragment that could not be split
    for i in range(1, len(parts) - 1):
        split = _split_middle(parts[i])
        if split is None:
            if broken is None:
                broken = [_raw(cur_local)]
            broken.append(_raw(parts[i]))
            continue
        splits += 1
        dom, nxt = split
        if broken is None:
            loc = _local_of(cur_local)
            if loc is not None:
                found.append((f"{loc}@{dom}", dom))
            else:
                frags.append(f"{_raw(cur_local)}@{dom}")
        else:
            frags.append("@".join(broken) + "@" + dom)
            broken = None
        cur_local = nxt
    dom = _domain_of(parts[-1])
    loc = None if broken is not None else _local_of(cur_local)
    if loc is not None and dom is not None:
        found.append((f"{loc}@{dom}", dom))
    else:
        frags.append("@".join(broken or [_raw(cur_local)]) + "@" + _raw(parts[-1]))
    return found, frags, splits > 0


# --------------------------------------------------------------------------------------------------
# Full parser: list structure


class _Slow:
    """State of one full parse; a class only to keep the per-element helpers readable."""

    __slots__ = ("found", "frags", "run_together", "group", "semicolon", "encoded", "missing_sep", "pending")

    def __init__(self):
        self.found: list[tuple[str, str]] = []
        self.frags: list[str] = []
        self.run_together = self.group = self.semicolon = self.encoded = self.missing_sep = False
        self.pending: str | None = None      # a phrase-only element that may be "Doe" of "Doe, John <j@x>"

    def frag(self, text: str) -> None:
        text = text.strip()
        if text and len(self.frags) < FRAGMENTS_MAX:
            self.frags.append(text[:FRAGMENT_MAX])

    def flush_pending(self) -> None:
        if self.pending is not None:
            self.frag(self.pending)
            self.pending = None

    def run(self, s: str) -> None:
        elem: list = []
        angle: list | None = None
        group_depth = 0
        for kind, text in _tokens(s):
            if angle is not None:
                if kind != "S":
                    if kind != "W":
                        angle.append((kind, text))
                    continue
                if text == ">":
                    elem.append(("ANG", angle))
                    angle = None
                    continue
                if text == ":":                       # obs-route "<@a,@b:x@y>" or "<mailto:x@y>"
                    angle = []
                    continue
                if text == "," and angle and angle[0][0] == "A" and angle[0][1].startswith("@"):
                    continue
                if text == "<" and not angle:
                    continue
                elem.append(("ANG", angle))           # unterminated: close it and handle the special
                angle = None
            if kind != "S":
                elem.append((kind, text))
                continue
            if text == ",":
                self.element(elem)
                elem = []
            elif text == ";":
                self.element(elem)
                elem = []
                if group_depth:
                    group_depth -= 1
                    self.flush_pending()
                else:
                    self.semicolon = True
            elif text == ":":
                words = [t for k, t in elem if k != "W"]
                if words == ["mailto"]:
                    elem = []
                    continue
                self.flush_pending()
                name = "".join(_raw([it]) if it[0] != "ANG" else "<>" for it in elem)
                if "@" in name or "<>" in name:
                    self.frag(name)
                self.group = True
                group_depth += 1
                elem = []
            elif text == "<":
                angle = []
            else:  # stray '>'
                elem.append(("J", text))
        if angle is not None:
            elem.append(("ANG", angle))
        self.element(elem)
        self.flush_pending()

    # -- one list element (between separators) -------------------------------------------------

    def element(self, elem: list) -> None:
        if not any(it[0] != "W" for it in elem):
            return
        if any(it[0] == "ANG" for it in elem):
            self.angle_element(elem)
            return
        pieces = _pieces(elem)
        if all(p[0] in ("phrase", "enc") for p in pieces):
            self.flush_pending()
            self.pending = " ".join(p[1] if p[0] == "enc" else _raw(p[1]) for p in pieces)
            return
        self.flush_pending()
        self.bare(pieces)

    def bare(self, pieces) -> None:
        """Words outside angle brackets: addr-specs, and whatever else was written around them."""
        phrase: list[str] = []
        n_addr_words = 0
        for kind, val, _ in pieces:
            if kind == "addr":
                if phrase:
                    self.frag(" ".join(phrase))
                    phrase = []
                found, frags, rt = _parse_word(val)
                if found:
                    n_addr_words += 1
                    if n_addr_words > 1:
                        self.missing_sep = True
                self.found.extend(found)
                for f in frags:
                    self.frag(f)
                self.run_together |= rt
            elif kind == "enc":
                phrase.append(val)
            elif kind == "junk":
                phrase.append(val)
            else:
                phrase.append(_raw(val))
        if phrase:
            self.frag(" ".join(phrase))

    def angle_element(self, elem: list) -> None:
        """Display names and <angle-addr>s; several angles in one element mean a missing comma."""
        lead: list = []            # items since the previous angle
        first = True
        prev_angle_addrs: list[str] = []
        for it in elem:
            if it[0] != "ANG":
                lead.append(it)
                continue
            pieces = _pieces(lead)
            if first:
                if self.pending is not None and pieces and all(p[0] in ("phrase", "enc") for p in pieces):
                    self.pending = None                  # "Doe, John <j@x.com>": one display name
                self.flush_pending()
            content = it[1]
            inner_found: list[tuple[str, str]] = []
            if content:
                bad = [t for k, t in content if k not in ("A", "Q", "D")]
                if bad:
                    self.frag(_raw(content))
                else:
                    found, frags, rt = _parse_word(content)
                    inner_found = found
                    for f in frags:
                        self.frag(f)
                    self.run_together |= rt
            # Unquoted addresses in front of the angle: the same address is the usual "a@x <a@x>"
            # display-name habit; a different one is a list with its separator missing.
            inner = {a for a, _ in inner_found}
            lead_found: list[tuple[str, str]] = []
            for kind, val, _ in pieces:
                if kind == "addr":
                    found, frags, rt = _parse_word(val)
                    lead_found.extend(f for f in found if f[0] not in inner and f[0] not in prev_angle_addrs)
                    self.run_together |= rt
                elif kind == "junk":
                    self.frag(val)
            adjacent = not lead or lead[-1][0] != "W"
            if lead_found:
                self.found.extend(lead_found)
                if inner_found and adjacent:
                    self.run_together = True
                elif inner_found:
                    self.missing_sep = True
            if not first and inner_found:
                if lead:
                    self.missing_sep = True            # "<a@x.com> <b@y.com>", "A <a@x.com> B <b@y.com>"
                else:
                    self.run_together = True           # "<a@x.com><b@y.com>"
            self.found.extend(inner_found)
            prev_angle_addrs = [a for a, _ in inner_found]
            lead = []
            first = False
        if any(x[0] != "W" for x in lead):
            pieces = _pieces(lead)
            before = len(self.found)
            self.bare(pieces)
            if len(self.found) > before:
                if lead[0][0] == "W":
                    self.missing_sep = True
                else:
                    self.run_together = True


def _pieces(items):
    """Group element items into words: ("addr"|"phrase", segments, ws_before), ("enc"|"junk", text, ws).

    Adjacent atoms and quoted strings form one word ('"john doe"@x.com'); so do words split only by
    whitespace around an '@' or '.' ("john @ x.com", obsolete but seen).
    """
    out = []
    cur: list = []
    ws = False
    cur_ws = False

    def close():
        if cur:
            has_at = any(k == "A" and "@" in t for k, t in cur)
            out.append(("addr" if has_at else "phrase", list(cur), cur_ws))
            cur.clear()

    for it in items:
        kind = it[0]
        if kind == "W":
            ws = True
            continue
        if kind in ("A", "Q", "D"):
            text = it[1]
            if cur and ws:
                last = cur[-1]
                glue = (last[0] == "A" and last[1].endswith(("@", "."))) or (
                    kind == "A" and text.startswith(("@", "."))
                )
                if not glue:
                    close()
            if not cur:
                cur_ws = ws
            cur.append((kind, text))
        else:
            close()
            out.append(("enc" if kind == "E" else "junk", it[1], ws))
        ws = False
    close()
    return out


# --------------------------------------------------------------------------------------------------


def _fast(value: str) -> ParsedHeader | None:
    """The common shapes, or None to say 'use the full parser'."""
    semicolon = ";" in value
    if semicolon and ('"' in value or ":" in value):
        return None                      # ';' inside a quoted name, or a group: the full parser decides
    s = value.lower()
    encoded = False
    if "=?" in s:
        # Encoded display names are common and harmless here, as long as each is a plain blob.
        if "=?" in _CLEAN_ENCODED_WORD_RX.sub(" ", s):
            return None
        encoded = True
    if not semicolon and "," not in s:
        one = _FAST_ONE.fullmatch(s)
        if one is not None:
            a = one[1] or one[2]
            if encoded and "=?" in a:
                return None
            return ParsedHeader((a,), (a[a.index("@") + 1:],), encoded_words=encoded)
    if _FAST_LIST[",;" if semicolon else ","].fullmatch(s) is None:
        return None
    addrs = None
    if "<" in s:
        addrs = _FAST_FIND_ANGLE.findall(s)
        if '"' in s:
            addrs = list(filter(None, addrs))
        if len(addrs) != s.count("@"):      # bare addresses too, or an '@' in a quoted name
            addrs = None
    if addrs is None:
        addrs = _FAST_FIND_ADDR.findall(s)
        if '"' in s:
            addrs = list(filter(None, addrs))
    if not addrs:
        return ParsedHeader((), (), semicolon=semicolon, encoded_words=encoded) if semicolon or encoded else EMPTY
    if encoded and any("=?" in a for a in addrs):
        return None                      # "=?..?=a@b.com": the tokenizer splits that differently
    # validated: a fast-path local part holds no '@'
    if len(addrs) == 1:
        a = addrs[0]
        return ParsedHeader((a,), (a[a.index("@") + 1:],), semicolon=semicolon, encoded_words=encoded)
    doms = dict.fromkeys([a[a.index("@") + 1:] for a in addrs])
    return ParsedHeader(tuple(addrs), tuple(doms), semicolon=semicolon, encoded_words=encoded)


def _slow(value: str) -> ParsedHeader:
    s = _UNFOLD.sub("", value).lower()
    st = _Slow()
    st.run(s)
    st.encoded = _ENCODED_WORD_RX.search(s) is not None
    if not st.found and not st.frags and not (st.group or st.semicolon or st.encoded):
        return EMPTY
    return ParsedHeader(
        addresses=tuple(a for a, _ in st.found),
        domains=tuple(dict.fromkeys(d for _, d in st.found)),
        run_together=st.run_together,
        group=st.group,
        semicolon=st.semicolon,
        encoded_words=st.encoded,
        unparseable=tuple(st.frags),
        missing_separator=st.missing_sep,
    )


_SIMPLE_COMMENT_RX = re.compile(r"\([^()\\]*\)")


def _fast_uncommented(value: str) -> ParsedHeader | None:
    """Comments carry nothing we keep; without quotes around they can be blanked and the fast path tried."""
    if '"' in value:
        return None
    for _ in range(3):                       # peel up to three levels of nesting
        value = _SIMPLE_COMMENT_RX.sub(" ", value)
        if "(" not in value and ")" not in value:
            return _fast(value)
    return None


# The same header values come back all the time (a service's From:, a newsletter's To: pattern), and a
# ParsedHeader is immutable: remember recent short ones. Cleared when full, like privacy's hash cache.
_CACHE: dict[str, ParsedHeader] = {}
_CACHE_MAX = 8192
_CACHE_VALUE_MAX = 256


def _parse(value) -> ParsedHeader:
    if value is None:
        return EMPTY
    if not isinstance(value, str):
        value = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
    cacheable = len(value) <= _CACHE_VALUE_MAX
    if cacheable:
        hit = _CACHE.get(value)
        if hit is not None:
            return hit
    if not value or value.isspace():
        return EMPTY
    result = _fast(value)
    if result is None and "(" in value:
        result = _fast_uncommented(value)
    if result is None:
        result = _slow(value)
    if cacheable:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[value] = result
    return result


def parse_address_list(value: str | None) -> ParsedHeader:
    """Parse one raw header value (From/To/Cc/Bcc) into normalised addresses and findings.

    Never raises: the consumer must not stop on one strange header. Should a bug ever surface here,
    the whole value is reported as one unparseable fragment instead.
    """
    try:
        return _parse(value)
    except Exception:  # noqa: BLE001 - last line of defence, see docstring
        try:
            text = str(value)[:FRAGMENT_MAX]
        except Exception:  # noqa: BLE001
            text = "?"
        return ParsedHeader((), (), unparseable=(text,))
