"""Keyed hashing and masking of addresses: the audit log must not become the next leak.

STUB: interface fixed, implementation in progress.
"""

from __future__ import annotations


def mask_address(addr: str) -> str:
    """'john.doe@gmail.com' -> 'j***@gmail.com'."""
    raise NotImplementedError


class AddressHasher:
    """HMAC-SHA256(key, normalised address) -> 32 hex chars; caches within a batch."""

    def __init__(self, key: bytes, key_id: str = "k1"):
        raise NotImplementedError

    def hash(self, addr: str) -> str:
        raise NotImplementedError
