"""A minimal TOML writer for our own config dicts (stdlib reads TOML but cannot write it).

Used by ``config show`` and to hand a child process (``mailaudit run``, tests) the exact effective
config in a file instead of through a dozen environment variables.
"""

from __future__ import annotations

import json
from typing import Any, Mapping


def dumps(data: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _table(data, "", lines)
    return "\n".join(lines).strip() + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)   # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _table(data: Mapping[str, Any], prefix: str, lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if prefix and (scalars or not tables):
        lines.append(f"[{prefix}]")
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {_value(v)}")
    if scalars or (prefix and not tables):
        lines.append("")
    for k, v in tables.items():
        _table(v, f"{prefix}.{_key(k)}" if prefix else _key(k), lines)


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
