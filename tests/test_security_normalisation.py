"""Issue 14, finding 7: one mailbox, many spellings. IDNA (punycode) and Unicode domains, composed and
decomposed local parts hash the same under normalisation version 2, and every lookup (search,
`forget`, exposure report) also tries the version-1 spellings, so rows written before the change
are still found and erased."""

from __future__ import annotations

import secrets
import unicodedata

import pytest

from helpers import make_event
from mailaudit.config import PrivacyConfig
from mailaudit.detect.report import resolve
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.erasure import find_traces, forget
from mailaudit.ingest.keys import KeyRing
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher, normalise_address_v2, v1_spellings
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.schema import migrate

NFC = unicodedata.normalize("NFC", "José.Canary@Bücher.de")
NFD = unicodedata.normalize("NFD", "jose\u0301.canary@bu\u0308cher.de")
PUNY = "jose\u0301.canary@xn--bcher-kva.de"
SPELLINGS = [NFC, NFD, PUNY, unicodedata.normalize("NFC", PUNY).upper().replace("XN--", "xn--")]


def test_version_2_hashes_every_spelling_the_same():
    h = AddressHasher(b"k" * 32)
    assert len({h.hash(s) for s in SPELLINGS}) == 1
    assert normalise_address_v2(NFD) == unicodedata.normalize("NFC", "josé.canary") + "@xn--bcher-kva.de"
    # ASCII addresses: nothing changes, one hash per key.
    assert h.hash_versions("Plain.User@Example.COM") == [AddressHasher(b"k" * 32, normalisation=1).hash("plain.user@example.com")]
    assert normalise_address_v2("a@b.example") == "a@b.example"
    assert normalise_address_v2("x@xn--invalid-\u00e9") and normalise_address_v2("\udc80@\u00e9") is not None


def test_lookups_find_version_1_rows_of_every_spelling():
    v1 = AddressHasher(b"k" * 32, normalisation=1)
    v2 = AddressHasher(b"k" * 32)
    for query in SPELLINGS:
        found = set(v2.hash_versions(query))
        for stored in SPELLINGS:
            assert v1.hash(stored) in found and v2.hash(stored) in found, (query, stored)
    assert len(v1_spellings(NFC)) <= 7
    ring = KeyRing.from_config(PrivacyConfig(hash_key="k" * 32, old_hash_keys="k0:" + "o" * 32))
    assert len(ring.all_hashes(NFC)) == len(set(ring.all_hashes(NFC)))
    rows = [{"address_hash": v1.hash(NFD)}, {"address_hash": v2.hash(PUNY)}]
    assert resolve(rows, [NFC], [v2]) == 2 and all(r["address"] for r in rows)


@pytest.mark.servers
def test_forget_erases_old_and_new_rows_of_every_spelling(make_cfg):
    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    migrate(db)
    key = secrets.token_hex(16)
    privacy = PrivacyConfig(hash_key=key, hash_key_id="k1")
    ring = KeyRing.from_config(privacy)
    v1 = AddressHasher(key.encode(), "k1", normalisation=1)
    for i, (spelling, hasher) in enumerate([(NFD, v1), (PUNY, v1), (NFC, ring.current)]):
        rows = EventRows(privacy, hasher)
        rows.add(parse_event(make_event(i + 1, to=f"{spelling}, other@example.com",
                                        envelope=[spelling, "other@example.com"])))
        db.insert("events", rows.columns())
    stored = {h for (hs,) in db.execute("SELECT to_hashes FROM {db}.events") for h in hs}
    before = stored & set(ring.all_hashes(NFC))
    assert len(before) == 3, "three spellings, three different stored hashes"
    result = forget(db, ring, [SPELLINGS[3]], actor="test", reason="DSR-1")
    assert result.verified, result.traces
    assert not find_traces(db, sorted(before), [], masks=False)
    left = {h for (hs,) in db.execute("SELECT to_hashes FROM {db}.events") for h in hs}
    assert not (left & before) and any(h for h in left if not h.startswith("erased:"))
