"""Typed values from YAML text for mgm.config: the checks behind its messages (type, closest key, override syntax)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and its source."""


def type_name(tp: Any) -> str:
    if typing.get_args(tp):  # list[float] rather than list
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: expected {type_name(tp)}, got {value!r} ({type(value).__name__}) in {source}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return coerce(value, arm, key, source)
            except ConfigError:
                pass
        raise bad
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise bad
        return [coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def closest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else f" Valid keys: {', '.join(sorted(options))}."


def flatten(tree: Any, source: str) -> list[tuple[str, Any]]:
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(tree).__name__}")
    items = []
    for section, body in tree.items():
        if not isinstance(body, dict):
            raise ConfigError(f"'{section}' in {source}: a section must be a mapping of keys, got {body!r}")
        items += [(f"{section}.{key}", value) for key, value in body.items()]
    return items


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` -> (dotted key, value parsed as YAML: 3 -> int, true -> bool, [1,2] -> list)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' on the command line: expected section.key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{text}' on the command line: expected section.key=value, the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"override '{text}' on the command line: value is not valid YAML ({e})") from None
    return key.strip(), value
