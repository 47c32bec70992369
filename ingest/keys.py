"""The hash-key ring: the current address-hashing key plus the old keys of a rotation overlap.

Rows remember which key hashed them (``key_id`` column), so after a rotation the same address is
stored under two different hashes until the old rows expire. Anything that looks an address up
(``forget``, an exposure search, "resolve this address") must therefore try every key in the ring;
new rows are only ever written with the current key. Secrets never leave this object: ``repr`` and
the ``ids`` show key ids only.

Config shape (``PrivacyConfig``): ``hash_key`` + ``hash_key_id`` are the current key,
``old_hash_keys = "k1:secret,k0:secret"`` the retired-but-searchable ones (secrets must not contain
``,``; the generated ones are hex).

Pure (no I/O).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailaudit.config import ConfigError, PrivacyConfig
from mailaudit.ingest.privacy import AddressHasher

_KEY_ID = re.compile(r"[A-Za-z0-9_.\-]{1,32}\Z")


def check_key_id(key_id: str) -> str:
    """Key ids are stored in every row and shown to operators: short, plain, never secret."""
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise ConfigError(f"hash key id must be 1-32 characters of A-Z a-z 0-9 _ . - (got {key_id!r})")
    return key_id


def parse_old_keys(value: str | None) -> list[tuple[str, str]]:
    """``"k1:secret,k0:secret"`` -> ``[("k1", "secret"), ("k0", "secret")]``; a malformed entry is a
    ConfigError that names the entry's position, never its secret."""
    out: list[tuple[str, str]] = []
    if not value:
        return out
    for i, item in enumerate(value.split(","), 1):
        item = item.strip()
        if not item:
            continue
        key_id, sep, secret = item.partition(":")
        if not sep or not secret.strip():
            raise ConfigError(f"privacy.old_hash_keys entry {i} must be 'key_id:secret'")
        # Never echo the entry: a secret typed without its id (or with a ':' in it) would be the
        # "key id" shown in the error, on the CLI and on the Search page (issue 14, finding 10).
        if not _KEY_ID.match(key_id.strip()):
            raise ConfigError(f"privacy.old_hash_keys entry {i} has no valid key id before its ':' "
                              "(1-32 characters of A-Z a-z 0-9 _ . -); the entry is not shown, it holds a secret")
        if len(key_id.strip()) >= 16 and all(c in "0123456789abcdefABCDEF" for c in key_id.strip()):
            raise ConfigError(f"privacy.old_hash_keys entry {i}: its key id looks like a secret (long hex); "
                              "write 'key_id:secret' with a short id such as k1")
        out.append((key_id.strip(), secret.strip()))
    return out


def format_old_keys(keys: list[tuple[str, str]]) -> str:
    for key_id, secret in keys:
        check_key_id(key_id)
        if "," in secret or not secret:
            raise ConfigError(f"hash key {key_id}: a secret must be non-empty and contain no ','")
    return ",".join(f"{k}:{s}" for k, s in keys)


@dataclass(frozen=True)
class KeyRing:
    """Ordered hashers: the current key first, then the old ones in config order."""

    hashers: tuple[AddressHasher, ...]

    @classmethod
    def from_config(cls, privacy: PrivacyConfig) -> "KeyRing":
        if not privacy.hash_key:
            raise ConfigError("no hash key: set MAILAUDIT_HASH_KEY (or privacy.hash_key in the config file)")
        current = (check_key_id(privacy.hash_key_id), privacy.hash_key)
        entries = [current] + parse_old_keys(privacy.old_hash_keys)
        seen: dict[str, str] = {}
        for key_id, secret in entries:
            if key_id in seen:
                raise ConfigError(f"hash key id {key_id!r} appears twice in the key ring")
            if secret in seen.values():
                raise ConfigError(f"hash key {key_id!r} has the same secret as another key in the ring")
            seen[key_id] = secret
        return cls(tuple(AddressHasher(secret.encode("utf-8"), key_id, cache_max=10_000) for key_id, secret in entries))

    @property
    def current(self) -> AddressHasher:
        return self.hashers[0]

    @property
    def ids(self) -> list[str]:
        return [h.key_id for h in self.hashers]

    @property
    def old_ids(self) -> list[str]:
        return self.ids[1:]

    def hashes(self, addr: str) -> list[tuple[str, str]]:
        """``[(key_id, hash)]`` of one address under every key and every address-normalisation
        version (``privacy.NORMALISATION_VERSIONS``), current first; a key appears more than once
        only for an address the versions normalise differently (non-ASCII)."""
        return [(h.key_id, x) for h in self.hashers for x in h.hash_versions(addr)]

    def all_hashes(self, addr: str) -> list[str]:
        return [x for h in self.hashers for x in h.hash_versions(addr)]

    def __repr__(self) -> str:
        return f"KeyRing(ids={self.ids!r})"
