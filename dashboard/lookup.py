"""Turn what an auditor types into what ClickHouse stores, on the dashboard's side.

An address is hashed here, with the key ring from the config, and only the hashes go into the
query: ClickHouse (its query log included) never sees the address. During a key rotation the old
keys (``privacy.old_hash_keys``) still match rows written before it, so the search sends the hash
under every key of the ring (``ingest.keys.KeyRing``).
"""

from __future__ import annotations

from mailaudit.config import PrivacyConfig
from mailaudit.ingest.keys import KeyRing
from mailaudit.ingest.privacy import normalise_address


class SearchInputError(ValueError):
    """The input cannot be searched for (the message says why, for the page)."""


def address_hashes(privacy: PrivacyConfig, address: str) -> tuple[str, ...]:
    """The stored hashes this address may have: under the current key, then under each old key.

    Raises ``SearchInputError`` for input that is not an address or when there is no key, and
    ``ConfigError`` for a malformed key ring.
    """
    addr = normalise_address(address)
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise SearchInputError("enter a full address such as name@example.com")
    if not privacy.hash_key:
        raise SearchInputError("address search needs the hash key (privacy.hash_key / MAILAUDIT_HASH_KEY)")
    return tuple(dict.fromkeys(KeyRing.from_config(privacy).all_hashes(addr)))
