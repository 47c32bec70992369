"""One parse of an event's headers, shared by storage (row building) and detection.

Parsing is the expensive step of the hot path, so it happens once per event and both consumers of
the result (the ClickHouse row builder and the disclosure signals) read the same ``ParsedEvent``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailaudit.ingest.addresses import EMPTY, ParsedHeader, parse_address_list
from mailaudit.ingest.wire import Event


@dataclass(slots=True)
class ParsedEvent:
    event: Event
    from_: ParsedHeader
    to: ParsedHeader
    cc: ParsedHeader
    bcc: ParsedHeader
    envelope: tuple[str, ...]          # normalised envelope recipients (lower-case addr-specs)

    @property
    def visible(self) -> tuple[str, ...]:
        """Addresses every recipient of this copy can read (To + Cc), duplicates removed, in order."""
        return visible_addresses(self.to.addresses, self.cc.addresses)

    @property
    def strangers(self) -> tuple[str, ...]:
        """Visible addresses that are not envelope recipients of this submission."""
        to = self.to.addresses
        if len(to) <= 1 and not self.cc.addresses:
            # The bulk of traffic (one copy per recipient): no dict, no set.
            return () if not to or to[0] in self.envelope else to
        env = set(self.envelope)
        return tuple(a for a in self.visible if a not in env)

    @property
    def visible_domains(self) -> int:
        return len({a.rpartition("@")[2] for a in self.visible})

    @property
    def run_together(self) -> bool:
        return self.to.run_together or self.cc.run_together or self.bcc.run_together

    @property
    def has_bcc(self) -> bool:
        return self.event.bcc is not None and self.event.bcc.strip() != ""


def visible_addresses(to: tuple[str, ...], cc: tuple[str, ...]) -> tuple[str, ...]:
    """To + Cc addresses, duplicates removed, in order: what every recipient of the copy can read."""
    return tuple(dict.fromkeys(to + cc if cc else to))


def normalise_envelope(addresses: list[str]) -> tuple[str, ...]:
    """Envelope recipients are bare addr-specs, but mailers sometimes wrap them in <> or add spaces."""
    out = []
    for a in addresses:
        a = a.strip()
        if a.startswith("<") and a.endswith(">"):
            a = a[1:-1].strip()
        if a:
            out.append(a.lower())
    return tuple(out)


def parse_event(event: Event) -> ParsedEvent:
    return ParsedEvent(
        event=event,
        from_=parse_address_list(event.from_),
        to=parse_address_list(event.to),
        cc=parse_address_list(event.cc) if event.cc else EMPTY,
        bcc=parse_address_list(event.bcc) if event.bcc else EMPTY,
        envelope=normalise_envelope(event.envelope_to),
    )
