"""RFC 5322 address-list parsing that survives whatever mailers actually write.

Pure (no I/O). STUB: interface fixed, implementation in progress.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ParsedHeader:
    addresses: tuple[str, ...]          # addr-specs, normalised: lower-cased "local@domain", in order, duplicates kept
    domains: tuple[str, ...]            # distinct domains in first-seen order
    run_together: bool = False          # two or more addresses written with no separator (a@x.comb@y.org)
    group: bool = False                 # an RFC 5322 group (incl. "undisclosed-recipients:;")
    semicolon: bool = False             # ';' used as a list separator outside a group
    encoded_words: bool = False         # RFC 2047 encoded words were present
    unparseable: tuple[str, ...] = ()   # fragments that were not addresses (truncated to 80 chars each)

    @property
    def count(self) -> int:
        return len(self.addresses)


EMPTY = ParsedHeader((), ())


def parse_address_list(value: str | None) -> ParsedHeader:
    raise NotImplementedError
