"""The pattern catalogue (issue 12, item 3): benign and leaking sending practice, not drawn from the simulator.

API::

    from corpus import PATTERNS, load_split, make_split
    p = PATTERNS["concatenated_to_2019"]
    stream = p.generate(scale=1.0)          # Stream(events=[wire v1 dicts in send order], leak_ids={...})
    p.cls, p.deadline                       # "visible_list", "first_copy"   (benign: "benign", None)
    split = load_split()                    # {"tune": [...], "test": [...], ...} from split.json

Split procedure (fixed before any tuning, recorded in split.json, never re-run to move a pattern):
patterns are grouped by class; each class's names are sorted, then shuffled with
``random.Random("mailaudit-corpus-split-v1:" + class)``; positions 0, 2, 4, ... go to ``tune`` and
1, 3, 5, ... to ``test`` (a class with an odd count gives ``tune`` the extra one). So every class
(benign and each leak kind) is on both sides, and the assignment depends on nothing but the names.

Batches: patterns added later (``pattern(..., batch=N)``) are split among themselves by the same
procedure with the salt ``"mailaudit-corpus-split-v1:batchN:" + class``, and recorded in split.json
before anyone runs a detector on them; an earlier batch's assignment never changes.
Batch 1 (54 patterns, commit 40afa10); batch 2 (5 rhythm patterns for issue 13, ``rhythms.py``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from . import benign, leaks, rhythms  # noqa: F401  (registers the patterns)
from .base import CLASSES, FIRST_COPY, LEAK_CLASSES, REGISTRY, Pattern, Stream

PATTERNS: dict[str, Pattern] = dict(sorted(REGISTRY.items()))
SPLIT_FILE = Path(__file__).with_name("split.json")
SPLIT_SALT = "mailaudit-corpus-split-v1:"

__all__ = ["PATTERNS", "CLASSES", "FIRST_COPY", "LEAK_CLASSES", "Pattern", "Stream", "SPLIT_FILE",
           "make_split", "load_split"]


def make_split(classes: dict[str, str], batch: int = 1) -> dict[str, list[str]]:
    """The documented procedure for one batch: ``{pattern name: class}`` -> ``{"tune": [...], "test": [...]}``."""
    salt = SPLIT_SALT if batch == 1 else f"{SPLIT_SALT}batch{batch}:"
    tune, test = [], []
    for cls in sorted(set(classes.values())):
        names = sorted(n for n, c in classes.items() if c == cls)
        random.Random(salt + cls).shuffle(names)
        tune += names[0::2]
        test += names[1::2]
    return {"tune": sorted(tune), "test": sorted(test)}


def load_split(path: Path = SPLIT_FILE) -> dict:
    return json.loads(Path(path).read_text())
