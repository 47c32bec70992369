"""Turn what an auditor types into what ClickHouse stores, on the dashboard's side.

An address is hashed here, with the key from the config, and only the hash goes into the query:
ClickHouse (its query log included) never sees the address. During a key rotation the old keys
(``privacy.old_hash_keys = "id:secret,id:secret"``) still match rows written before it, so the
search sends the hash under every key it knows.
"""

from __future__ import annotations

from mailaudit.config import ConfigError, PrivacyConfig
from mailaudit.ingest.privacy import AddressHasher, normalise_address


class SearchInputError(ValueError):
    """The input cannot be searched for (the message says why, for the page)."""


def parse_old_keys(spec: str | None) -> list[tuple[str, bytes]]:
    """``"k0:secret0,k1:secret1"`` -> [(id, key)]; a malformed entry is a config error."""
    out = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        key_id, sep, secret = item.partition(":")
        if not sep or not key_id or not secret:
            raise ConfigError("privacy.old_hash_keys must look like 'id:secret,id:secret'")
        out.append((key_id.strip(), secret.encode("utf-8")))
    return out


def address_hashes(privacy: PrivacyConfig, address: str) -> tuple[str, ...]:
    """The stored hashes this address may have: under the current key, then under each old key."""
    addr = normalise_address(address)
    if "@" not in addr or addr.startswith("@") or addr.endswith("@"):
        raise SearchInputError("enter a full address such as name@example.com")
    if not privacy.hash_key:
        raise SearchInputError("address search needs the hash key (privacy.hash_key / MAILAUDIT_HASH_KEY)")
    keys = [(privacy.hash_key_id, privacy.hash_key.encode("utf-8"))] + parse_old_keys(privacy.old_hash_keys)
    seen: list[str] = []
    for key_id, key in keys:
        h = AddressHasher(key, key_id).hash(addr)
        if h not in seen:
            seen.append(h)
    return tuple(seen)
