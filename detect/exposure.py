"""Who was exposed to whom: the pure part of the exposure report.

An address is *exposed* by a leaking copy when the copy shows it (To/Cc, or a Bcc header left in) and
is delivered to at least one envelope recipient other than the address itself; ``seen_by`` counts
those recipients. The engine emits one ``ExposureRow`` per (leaking copy, exposed address) — the
I/O layer stores them — and ``summarise`` folds rows into the report of ``mailaudit exposure``:
per address, how many copies exposed it, to how many recipients, first and last time.

Addresses never leave this module raw: rows carry the keyed hash, the domain and the masked form.
``AddressBook`` is the in-memory cache of that material, and gives each address a 64-bit id (derived
from the keyed hash when there is a key) that the engine uses as a join key in its state, so a
checkpoint written with a key holds no raw address and no unkeyed digest of one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from mailaudit.ingest.privacy import mask_address
from mailaudit.ingest.wire import format_time


class AddrInfo(NamedTuple):
    id: int                 # 64-bit join key (keyed when the book has a hasher)
    hash: str | None        # AddressHasher.hash(addr), None without a key
    masked: str             # j***@gmail.com
    domain: str


@dataclass(frozen=True, slots=True)
class ExposureRow:
    incident_id: str
    address_hash: str
    address_masked: str
    domain: str
    event_id: str
    sent_at_ms: int
    seen_by: int            # envelope recipients of this copy other than the address itself
    key_id: str
    side: str = "external"  # "org": the sending organisation's own address (detect/org.py); "external": a person

    def to_dict(self) -> dict:
        return {
            "incident_id": self.incident_id,
            "address_hash": self.address_hash,
            "address_masked": self.address_masked,
            "domain": self.domain,
            "event_id": self.event_id,
            "sent_at": format_time(self.sent_at_ms),
            "seen_by": self.seen_by,
            "key_id": self.key_id,
            "side": self.side,
        }


def _digest64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class AddressBook:
    """Bounded cache address -> ``AddrInfo``; hashing and masking happen once per address, not per copy."""

    def __init__(self, hasher=None, max_entries: int = 200_000):
        self.hasher = hasher
        self.key_id = getattr(hasher, "key_id", "k1") if hasher is not None else None
        self.max_entries = max_entries
        self._ids: dict[str, int] = {}
        self._infos: dict[str, AddrInfo] = {}

    def id(self, addr: str) -> int:
        i = self._ids.get(addr)
        if i is None:
            i = self.info(addr).id if self.hasher is not None else _digest64(addr)
            if len(self._ids) >= self.max_entries:
                self._ids.clear()
            self._ids[addr] = i
        return i

    def info(self, addr: str) -> AddrInfo:
        inf = self._infos.get(addr)
        if inf is None:
            if self.hasher is not None:
                h = self.hasher.hash(addr)
                try:
                    i = int(h[:16], 16)
                except ValueError:
                    i = _digest64(h)
            else:
                h, i = None, _digest64(addr)
            inf = AddrInfo(i, h, mask_address(addr), addr.rpartition("@")[2])
            if len(self._infos) >= self.max_entries:
                self._infos.clear()
            self._infos[addr] = inf
        return inf


def fingerprint_ids(ids: Iterable[int]) -> str:
    """Order-independent digest of a list of address ids (keyed when the ids are)."""
    h = hashlib.blake2b(digest_size=8)
    for i in sorted(set(ids)):
        h.update(i.to_bytes(8, "big"))
    return h.hexdigest()


def exposed_in_copy(disclosed: Iterable[AddrInfo], envelope_ids: set[int]) -> list[tuple[AddrInfo, int]]:
    """(address, seen_by) for every disclosed address some other recipient of the copy reads."""
    n = len(envelope_ids)
    out = []
    seen = set()
    for a in disclosed:
        if a.id in seen:
            continue
        seen.add(a.id)
        seen_by = n - 1 if a.id in envelope_ids else n
        if seen_by > 0:
            out.append((a, seen_by))
    return out


def exposure_rows(incident_id: str, event_id: str, sent_at_ms: int,
                  exposed: Iterable[tuple[AddrInfo, int]], key_id: str,
                  org_ids: frozenset[int] | set[int] = frozenset()) -> list[ExposureRow]:
    return [
        ExposureRow(incident_id, a.hash, a.masked, a.domain, event_id, sent_at_ms, seen_by, key_id,
                    "org" if a.id in org_ids else "external")
        for a, seen_by in exposed
        if a.hash is not None
    ]


@dataclass(slots=True)
class ExposedAddress:
    """One line of the exposure report."""

    address_hash: str
    address_masked: str
    domain: str
    copies: int             # leaking copies that showed the address
    recipients: int         # sum over those copies of the recipients who saw it
    first_seen_ms: int
    last_seen_ms: int
    side: str = "external"  # "org" when the address is the sending organisation's own (never a person)

    def to_dict(self) -> dict:
        return {
            "address_hash": self.address_hash,
            "address_masked": self.address_masked,
            "domain": self.domain,
            "copies": self.copies,
            "recipients": self.recipients,
            "first_seen": format_time(self.first_seen_ms),
            "last_seen": format_time(self.last_seen_ms),
            "side": self.side,
        }


def summarise(rows: Iterable[ExposureRow]) -> list[ExposedAddress]:
    """Fold exposure rows (any order, duplicates of one (event, address) counted once) into the report."""
    by_addr: dict[str, ExposedAddress] = {}
    seen: set[tuple[str, str]] = set()
    for r in rows:
        if (r.event_id, r.address_hash) in seen:
            continue
        seen.add((r.event_id, r.address_hash))
        e = by_addr.get(r.address_hash)
        if e is None:
            by_addr[r.address_hash] = ExposedAddress(
                r.address_hash, r.address_masked, r.domain, 1, r.seen_by, r.sent_at_ms, r.sent_at_ms,
                getattr(r, "side", "external"))
        else:
            e.copies += 1
            e.recipients += r.seen_by
            e.first_seen_ms = min(e.first_seen_ms, r.sent_at_ms)
            e.last_seen_ms = max(e.last_seen_ms, r.sent_at_ms)
    # People first (the report is read to notify them), then the organisation's own addresses.
    return sorted(by_addr.values(), key=lambda e: (e.side == "org", -e.recipients, e.address_hash))


def resolve(report: Iterable[ExposedAddress], addresses: Iterable[str], hasher) -> dict[str, str]:
    """address_hash -> address for the operator's own user list (``--resolve users.csv``), same key."""
    wanted = {e.address_hash for e in report}
    out = {}
    for a in addresses:
        a = a.strip().lower()
        if a:
            h = hasher.hash(a)
            if h in wanted:
                out[h] = a
    return out
