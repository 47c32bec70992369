"""Header parser speed: what the consumer pays per event, and on the leak-sized headers it must survive.

Figures are medians over ``repeats`` runs, wall clock (``*_ms``) and CPU time (``*_cpu_ms``). Big headers (10,000 addresses by default) in four shapes:
a plain comma list, display names, quoted "Last, First" names (all three fast path), addresses run
together with no separator (the split heuristic), and a group with comments and ';' (the full
tokenizer). Typical headers (1-3 addresses, the everyday mix) are timed cold, each value distinct so
the parser's result cache never answers, and warm, as a service's repeated From: is. The keyed hash
that follows every parsed address is timed alongside, cold and cached.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time

from mailaudit.ingest import addresses as _addresses
from mailaudit.ingest.addresses import parse_address_list
from mailaudit.ingest.privacy import AddressHasher

_FIRST = ["john", "jane", "olga", "wei", "fatima", "peter", "anna", "mike", "lisa", "ahmet"]
_LAST = ["doe", "smith", "ivanova", "zhang", "ali", "mueller", "rossi", "kim", "brown", "sato"]
_DOMAINS = ["gmail.com", "yahoo.co.uk", "outlook.com", "web.de", "orange.fr", "proton.me", "example.org",
            "mail.example.net", "icloud.com", "company.io"]


def _addresses_for(n: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        local = rng.choice([f"{first}.{last}{i}", f"{first[0]}{last}{i}", f"user{i}"])
        out.append((f"{local}@{rng.choice(_DOMAINS)}", first.capitalize(), last.capitalize()))
    return out


def _big_headers(n: int) -> dict[str, str]:
    people = _addresses_for(n, 1)
    return {
        "simple": ", ".join(a for a, _, _ in people),
        "display_names": ", ".join(f"{f} {l} <{a}>" for a, f, l in people),
        "quoted_names": ", ".join(f'"{l}, {f}" <{a}>' for a, f, l in people),
        "run_together": "".join(a for a, _, _ in people),
        "tokenizer": "Customers: " + "; ".join(f"{a} ({f} {l})" for a, f, l in people[: n // 2]) + "; "
                     + ", ".join(f"{f} {l} <{a}>" for a, f, l in people[n // 2:]) + ";",
    }


def _typical_headers(count: int, seed: int) -> list[str]:
    """The everyday mix of From/To/Cc values: 1-3 recipients, names plain, quoted or encoded."""
    rng = random.Random(seed)
    people = _addresses_for(count * 3, seed)
    out = []
    for i in range(count):
        k = rng.choice((1, 1, 1, 1, 2, 3))
        parts = []
        for a, f, l in people[3 * i: 3 * i + k]:
            form = rng.random()
            if form < 0.35:
                parts.append(a)
            elif form < 0.75:
                parts.append(f"{f} {l} <{a}>")
            elif form < 0.9:
                parts.append(f'"{l}, {f}" <{a}>')
            else:
                parts.append(f"=?utf-8?q?{f}_{l}?= <{a}>")
        out.append(", ".join(parts))
    return out


def _median_ms(fn, repeats: int) -> tuple[float, float]:
    """(wall, CPU) medians in ms. CPU time is the steadier figure when the machine is shared."""
    wall, cpu = [], []
    for _ in range(repeats):
        _addresses._CACHE.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return statistics.median(wall) * 1000.0, statistics.median(cpu) * 1000.0


def bench_parser(repeats: int = 5, runs: int | None = None, n: int = 10_000) -> dict:
    """Medians over ``repeats`` (``runs`` is the CLI's name for it); ``n`` addresses per big header."""
    repeats = max(1, int(runs or repeats))
    out: dict = {"addresses_per_big_header": n, "repeats": repeats}

    for shape, value in _big_headers(n).items():
        res = parse_address_list(value)
        if res.count != n:
            raise RuntimeError(f"{shape}: parsed {res.count} of {n} addresses")
        wall, cpu = _median_ms(lambda v=value: parse_address_list(v), repeats)
        out[f"{shape}_ms"] = round(wall, 2)
        out[f"{shape}_cpu_ms"] = round(cpu, 2)

    typical = _typical_headers(20_000, 7)

    def cold():
        for v in typical:
            parse_address_list(v)

    wall, cpu = _median_ms(cold, repeats)
    out["typical_us"] = round(wall * 1000.0 / len(typical), 2)
    out["typical_cpu_us"] = round(cpu * 1000.0 / len(typical), 2)
    out["typical_fast_path_share"] = round(sum(_addresses._fast(v) is not None for v in typical) / len(typical), 3)
    warm_set = typical[:200]
    for v in warm_set:
        parse_address_list(v)
    t0 = time.perf_counter()
    for _ in range(50):
        for v in warm_set:
            parse_address_list(v)
    out["typical_cached_us"] = round((time.perf_counter() - t0) * 1e6 / (50 * len(warm_set)), 3)
    out["typical_headers_per_s"] = int(1e6 / out["typical_cpu_us"])     # per core

    addrs = [a for a, _, _ in _addresses_for(20_000, 3)]
    hashes = []
    for _ in range(repeats):
        h = AddressHasher(b"bench-key")
        t0 = time.perf_counter()
        h.hash_many(addrs)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        h.hash_many(addrs)
        hashes.append((cold_s, time.perf_counter() - t0))
    out["hash_us"] = round(statistics.median(c for c, _ in hashes) * 1e6 / len(addrs), 3)
    out["hash_cached_us"] = round(statistics.median(w for _, w in hashes) * 1e6 / len(addrs), 3)
    out["python"] = sys.version.split()[0]
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)   # wall-clock figures inflate on a busy machine
    return out


if __name__ == "__main__":
    print(json.dumps(bench_parser(), indent=2))
