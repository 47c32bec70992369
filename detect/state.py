"""Detection state as versioned, size-limited JSON: never pickle.

A detector replica restores a partition's state from a store other replicas (and whoever can write to
that ClickHouse table) write to, so loading it must not be able to run code. This module turns the
engine's state objects into plain JSON values and back, and only ever rebuilds instances of classes
on an explicit allow-list (``register``, or every class of an allowed detection module,
``register_module``, looked up in the imported module): unknown class names are an error, never an import.

Encoding: ``None``/bool/int/float/str and lists stay as they are; other containers are tagged objects
(``{"$t": [...]}`` tuple, ``"$s"`` set, ``"$f"`` frozenset, ``"$q"`` deque, ``"$b"`` bytes/bytearray,
``"$o"`` OrderedDict, ``"$d"`` dict with non-string keys); an allowed object is ``{"$c": name, ...}``
with either its own ``to_state()`` (rebuilt by ``cls.from_state``) or its attributes (slots or
``__dict__``, minus the ones the class declares derived, which ``load_state`` re-binds from config).

Wire form (``dumps``/``loads``): ``"mailaudit-state/1;z;" + base64(zlib(json))`` or, uncompressed,
``"mailaudit-state/1;j;" + json``; both directions enforce a size limit (a decompression bomb stops at
the limit rather than at the memory ceiling).
"""

from __future__ import annotations

import base64
import json
import zlib
from collections import OrderedDict, deque
from typing import Any

WIRE_VERSION = "mailaudit-state/1"
MAX_BYTES = 64 * 1024 * 1024          # decompressed JSON, per partition checkpoint


class StateError(ValueError):
    """Unreadable, unknown-format or oversized state."""


class StateTooLarge(StateError):
    pass


_CLASSES: dict[str, type] = {}
_SKIP: dict[type, frozenset[str]] = {}


def register(cls: type, name: str | None = None, skip: tuple[str, ...] = ()) -> type:
    """Allow ``cls`` in state (``skip``: attributes rebuilt from config on load, not stored)."""
    key = name or f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"
    have = _CLASSES.get(key)
    if have is not None and have is not cls:
        raise ValueError(f"state class name {key!r} already registered for {have!r}")
    _CLASSES[key] = cls
    _SKIP[cls] = frozenset(skip)
    cls.__state_name__ = key if "__state_name__" not in cls.__dict__ else cls.__state_name__
    return cls


# Detection modules whose classes may appear in state (their helper classes change with their
# authors' tuning, so they are allowed by module). Only these fixed names are ever imported.
_TRUSTED_MODULES = ("spikes", "novelty", "org", "slips", "incidents", "signals", "exposure", "engine")
_MODULES: dict[str, Any] = {}


def register_module(module: Any) -> None:
    """Allow every class defined in ``module`` (see ``_TRUSTED_MODULES`` for the built-in ones). A state
    names such a class ``short_module.QualName``; it is looked up in the module, never imported by name
    from the state."""
    _MODULES[module.__name__.rsplit(".", 1)[-1]] = module


def _module(short: str) -> Any:
    mod = _MODULES.get(short)
    if mod is None and short in _TRUSTED_MODULES:
        import importlib

        mod = _MODULES[short] = importlib.import_module(f"mailaudit.detect.{short}")
    return mod


def _module_class(name: str) -> type | None:
    short, _, qual = name.partition(".")
    mod = _module(short)
    if mod is None or not qual:
        return None
    obj: Any = mod
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and obj.__module__ == mod.__name__:
        return obj
    return None


def _state_name(t: type) -> str | None:
    name = t.__dict__.get("__state_name__")
    if name is not None and _CLASSES.get(name) is t:
        return name
    short = t.__module__.rsplit(".", 1)[-1]
    if (short in _MODULES or short in _TRUSTED_MODULES) and t.__module__.endswith(f"detect.{short}") \
            and _module(short) is not None and _module(short).__name__ == t.__module__:
        name = f"{short}.{t.__qualname__}"
        if _module_class(name) is t:
            return name
    return None


def _enc_siblings(d: Any) -> Any:
    """message id -> (address ids: a tuple or a set, expiry): tens of thousands of entries per busy
    service, so columns instead of one tagged object per entry (about 10x faster than the generic
    form). The stored form is the one older checkpoints have ([set, expiry] lists in memory then);
    ``DetectionEngine.load_state`` turns either into its live entries."""
    if type(d) is not dict or not all(type(v) in (tuple, list) and len(v) == 2 and type(v[0]) in (tuple, set)
                                       and type(v[1]) is int and type(k) is str for k, v in d.items()):
        return encode(d)
    vals = d.values()
    # A tuple of ids goes in as it is (json.dumps writes it as an array): no fresh list per entry on
    # the poll loop, where the snapshot is taken, and none for the collector to scan.
    return {"$sib": [list(d), [v[0] if type(v[0]) is tuple else list(v[0]) for v in vals], [v[1] for v in vals]]}


def _enc_queue(q: Any) -> Any:
    """deque of (expiry, message id) pairs, as two columns."""
    if type(q) is not deque or not all(type(x) is tuple and len(x) == 2 for x in q):
        return encode(q)
    return {"$sq": [[x[0] for x in q], [x[1] for x in q]], "n": q.maxlen}


# Fast forms for the few attributes that dominate a checkpoint's size: (class state name, attribute).
_CODECS = {("engine._Service", "siblings"): _enc_siblings, ("engine._Service", "sibling_q"): _enc_queue}


def _attr_names(obj: Any) -> list[str]:
    names: list[str] = []
    for k in type(obj).__mro__:
        for s in k.__dict__.get("__slots__", ()):
            if s not in names and s not in ("__dict__", "__weakref__"):
                names.append(s)
    if hasattr(obj, "__dict__"):
        names.extend(n for n in vars(obj) if n not in names)
    return names


def encode(v: Any) -> Any:
    """A JSON-serialisable value for ``v`` (see the module docstring)."""
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list:
        return [encode(x) for x in v]
    name = _state_name(t)
    if name is not None:
        if hasattr(v, "to_state") and hasattr(t, "from_state"):
            return {"$c": name, "s": encode(v.to_state())}
        if isinstance(v, tuple):                       # NamedTuple
            return {"$c": name, "t": [encode(x) for x in v]}
        skip = _SKIP.get(t, frozenset())
        attrs = {}
        for a in _attr_names(v):
            if a in skip or not hasattr(v, a):
                continue
            codec = _CODECS.get((name, a))
            attrs[a] = codec(getattr(v, a)) if codec is not None else encode(getattr(v, a))
        return {"$c": name, "a": attrs}
    if t is tuple:
        return {"$t": [encode(x) for x in v]}
    if t is set:
        return {"$s": [encode(x) for x in v]}
    if t is frozenset:
        return {"$f": [encode(x) for x in v]}
    if t is deque:
        return {"$q": [encode(x) for x in v], "n": v.maxlen}
    if t is bytes or t is bytearray:
        return {"$b": base64.b64encode(bytes(v)).decode("ascii"), "m": t is bytearray}
    if t is OrderedDict:
        return {"$o": [[encode(k), encode(x)] for k, x in v.items()]}
    if t is dict:
        if all(type(k) is str and not k.startswith("$") for k in v):
            return {k: encode(x) for k, x in v.items()}
        return {"$d": [[encode(k), encode(x)] for k, x in v.items()]}
    raise TypeError(f"cannot store a {t.__module__}.{t.__qualname__} in detection state (not registered)")


def decode(v: Any) -> Any:
    """The inverse of ``encode``; only registered classes are rebuilt."""
    if type(v) is list:
        return [decode(x) for x in v]
    if type(v) is not dict:
        return v
    if "$c" in v:
        cls = _CLASSES.get(v["$c"]) or _module_class(v["$c"])
        if cls is None:
            raise StateError(f"state names unknown class {v['$c']!r}")
        if "s" in v:
            return cls.from_state(decode(v["s"]))
        if "t" in v:
            return cls(*[decode(x) for x in v["t"]])
        obj = cls.__new__(cls)
        for a, x in v.get("a", {}).items():
            object.__setattr__(obj, a, decode(x))
        return obj
    if "$sib" in v:
        keys, ids, exps = v["$sib"]
        if not (len(keys) == len(ids) == len(exps)):
            raise StateError("corrupt sibling index")
        return {k: [set(i), x] for k, i, x in zip(keys, ids, exps)}
    if "$sq" in v:
        exps, keys = v["$sq"]
        return deque(zip(exps, keys), v.get("n"))
    if "$t" in v:
        return tuple(decode(x) for x in v["$t"])
    if "$s" in v:
        return {_hashable(decode(x)) for x in v["$s"]}
    if "$f" in v:
        return frozenset(_hashable(decode(x)) for x in v["$f"])
    if "$q" in v:
        return deque((decode(x) for x in v["$q"]), v.get("n"))
    if "$b" in v:
        b = base64.b64decode(v["$b"])
        return bytearray(b) if v.get("m") else b
    if "$o" in v:
        return OrderedDict((_hashable(decode(k)), decode(x)) for k, x in v["$o"])
    if "$d" in v:
        return {_hashable(decode(k)): decode(x) for k, x in v["$d"]}
    return {k: decode(x) for k, x in v.items()}


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        raise StateError("a list cannot be a set member or a dict key")
    return v


def dumps(doc: Any, compress: bool = True, max_bytes: int = MAX_BYTES) -> str:
    """``doc`` (already plain JSON values) in the wire form; ``StateTooLarge`` past ``max_bytes``."""
    return wrap(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), compress, max_bytes)


def wrap(raw: bytes, compress: bool = True, max_bytes: int = MAX_BYTES) -> str:
    """Compact JSON already encoded (UTF-8) in the wire form: the size limit, the header, the body."""
    if len(raw) > max_bytes:
        raise StateTooLarge(f"detection state is {len(raw)} bytes, over the {max_bytes}-byte limit")
    if not compress:
        return f"{WIRE_VERSION};j;" + raw.decode("utf-8")
    return f"{WIRE_VERSION};z;" + base64.b64encode(zlib.compress(raw, 1)).decode("ascii")   # speed over ratio


def loads(text: str, max_bytes: int = MAX_BYTES) -> Any:
    head, sep, body = text.partition(";")
    if not sep or head != WIRE_VERSION:
        raise StateError(f"not detection state of a known format (header {head[:40]!r})")
    kind, sep, body = body.partition(";")
    if kind == "j":
        raw = body.encode("utf-8")
    elif kind == "z":
        try:
            d = zlib.decompressobj()
            raw = d.decompress(base64.b64decode(body, validate=True), max_bytes + 1)
        except (ValueError, zlib.error) as e:
            raise StateError(f"corrupt detection state: {e}") from None
        if not d.eof:
            raise StateTooLarge(f"detection state is over the {max_bytes}-byte limit")
    else:
        raise StateError(f"unknown detection state encoding {kind!r}")
    if len(raw) > max_bytes:
        raise StateTooLarge(f"detection state is over the {max_bytes}-byte limit")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise StateError(f"corrupt detection state: {e}") from None
