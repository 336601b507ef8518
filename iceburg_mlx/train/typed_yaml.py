"""YAML mappings into typed, frozen dataclasses: key checks, merging and coercion.

Generic machinery behind `config.py`. A schema is a tree of dataclasses whose fields carry
`metadata={"help": ...}` and optionally `aliases` (special spellings, e.g. {"all": -1}) and
`exclusive` (the name of a sibling that a layer setting this field clears, e.g. steps/epochs).
Values are coerced by the declared type; `--set` values arrive as raw text (`SetValue`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

import yaml

from iceburg_mlx.errors import ConfigError

NULL_TEXT = ("null", "~", "none", "None", "")


@functools.lru_cache(maxsize=None)
def type_hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations (the schema modules use `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    """Field objects by name."""
    return {f.name: f for f in dataclasses.fields(cls)}


def field_table(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key path, type, default, help) for every leaf field of a (nested) dataclass."""
    out = []
    hints = type_hints(cls)
    for name, f in fields_of(cls).items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            out.extend(field_table(tp, f"{prefix}{name}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append((prefix + name, type_name(tp), default, f.metadata.get("help", "")))
    return out


def type_name(tp: Any) -> str:
    """A short readable name for an annotation (`int | null`, `'a'|'b'`)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp)) if origin is None else str(tp).replace("typing.", "")


class _Bad(Exception):
    """Internal: a value that does not fit its field (message without location)."""


@dataclass(frozen=True)
class SetValue:
    """A raw `--set` value: kept as text for string fields, parsed as YAML otherwise."""

    text: str


def _coerce(value: Any, tp: Any, meta: dict) -> Any:
    aliases = meta.get("aliases", {})
    if isinstance(value, SetValue):
        if _accepts_str(tp) and not (_is_optional(tp) and value.text in NULL_TEXT) \
                and value.text not in aliases:
            value = value.text
        else:
            try:
                value = yaml.safe_load(value.text)
            except yaml.YAMLError:
                raise _Bad(f"cannot parse {value.text!r}") from None
    if isinstance(value, str) and value in aliases:
        return aliases[value]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, {})
            except _Bad as e:
                errors.append(str(e))
        raise _Bad(errors[0] if len(errors) == 1 else f"expected {type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise _Bad(f"must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _Bad(f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], {}) for v in value)
        if len(value) != len(args):
            raise _Bad(f"expected a list of {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, {}) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise _Bad(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Bad(f"expected a string, got {value!r}")
        return value
    raise _Bad(f"unsupported field type {tp!r}")  # pragma: no cover - schema bug


def _number(text: str) -> Any:
    """PyYAML (YAML 1.1) reads `1e-5` as a string; accept any Python float literal."""
    try:
        return float(text.replace("_", "")) if text.strip() else text
    except ValueError:
        return text


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _accepts_str(tp: Any) -> bool:
    if tp is str:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return all(isinstance(a, str) for a in args)
    if origin in (Union, types.UnionType):
        return any(_accepts_str(a) for a in args if a is not type(None))
    return False


def check_keys(label: str, data: dict, cls: type, prefix: str = "", removed: dict | None = None) -> None:
    """Raise ConfigError for an unknown key (with a did-you-mean), a `removed` key (with its note)
    or a section that is not a mapping."""
    known = fields_of(cls)
    hints = type_hints(cls)
    removed = removed or {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in removed:
            raise ConfigError(f"{label}: {path}: {removed[path]}")
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
            raise ConfigError(f"{label}: {path}: unknown key{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if isinstance(value, SetValue):
                raise ConfigError(f"{label}: {path}: is a section; set its keys, e.g. {path}.<key>=...")
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{label}: {path}: expected a mapping of {path}.* keys, got {value!r}")
            check_keys(label, value, tp, path + ".", removed)


def parse_overrides(overrides: typing.Iterable[str]) -> dict:
    """`["a.b=1", ...]` into a nested dict of `SetValue` leaves (later items win)."""
    tree: dict = {}
    for item in overrides:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set: {item!r}: expected key.sub=value")
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = SetValue(text.strip())
    return tree


def merge(dst: dict, src: dict, origin: dict, label: str, cls: type, prefix: str = "") -> None:
    """Deep-merge a checked layer into `dst`, recording in `origin` which layer set each key path."""
    known = fields_of(cls)
    hints = type_hints(cls)
    for key, value in src.items():
        path = prefix + key
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is not None:
                merge(dst.setdefault(key, {}), value, origin, label, tp, path + ".")
            continue
        other = known[key].metadata.get("exclusive")
        if other and other not in src:
            dst[other] = None  # setting one of an exclusive pair clears the inherited other
            origin[prefix + other] = label
        dst[key] = value
        origin[path] = label


def build(cls: type, data: dict, origin: dict, prefix: str = "") -> Any:
    """Instantiate the dataclass tree from merged raw values, coercing each by its type."""
    kwargs = {}
    hints = type_hints(cls)
    for name, f in fields_of(cls).items():
        tp = hints[name]
        path = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, data.get(name) or {}, origin, path + ".")
        elif name in data:
            try:
                kwargs[name] = _coerce(data[name], tp, dict(f.metadata))
            except _Bad as e:
                raise ConfigError(f"{origin.get(path, 'recipe')}: {path}: {e}") from None
    return cls(**kwargs)
