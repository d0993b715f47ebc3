"""Typed, frozen settings built from plain data, with every problem collected at once.

A settings class is a frozen dataclass whose fields are declared with :func:`setting`
(default, docstring, constraints). :func:`build` walks the data against the type hints and
appends one message per problem, each naming its key path, so a user sees every mistake in
one run (patroni's validator does the same).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    doc: str = "",
    *,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    pattern: str | None = None,
    min_len: int | None = None,
    max_len: int | None = None,
) -> Any:
    """A settings field: its default, what it means, and the range it must fall in."""
    meta = {
        "doc": doc,
        "ge": ge,
        "le": le,
        "gt": gt,
        "pattern": re.compile(pattern) if pattern else None,
        "min_len": min_len,
        "max_len": max_len,
    }
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a default_factory-free immutable default")
    if dataclasses.is_dataclass(default) or isinstance(default, (tuple, Mapping)):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin = get_origin(tp)
    if origin is tuple:
        return "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _check_constraints(value: Any, meta: Mapping[str, Any], path: str, problems: list[str]) -> bool:
    ok = True
    ge, le, gt = meta.get("ge"), meta.get("le"), meta.get("gt")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if ge is not None and value < ge:
            problems.append(f"{path}: must be >= {ge}, got {value}")
            ok = False
        if gt is not None and value <= gt:
            problems.append(f"{path}: must be > {gt}, got {value}")
            ok = False
        if le is not None and value > le:
            problems.append(f"{path}: must be <= {le}, got {value}")
            ok = False
    pattern = meta.get("pattern")
    if pattern is not None and isinstance(value, str) and not pattern.fullmatch(value):
        problems.append(f"{path}: {_describe(value)} does not match {pattern.pattern}")
        ok = False
    min_len, max_len = meta.get("min_len"), meta.get("max_len")
    if min_len is not None and hasattr(value, "__len__") and len(value) < min_len:
        problems.append(f"{path}: needs at least {min_len} item(s)")
        ok = False
    if max_len is not None and hasattr(value, "__len__") and len(value) > max_len:
        problems.append(f"{path}: at most {max_len} allowed, got {len(value)}")
        ok = False
    return ok


Converter = Callable[[Any, str, list[str]], Any]
_CONVERTERS: dict[Any, Converter] = {}


def register_converter(tp: Any, fn: Converter) -> None:
    """Teach :func:`convert` a type it cannot build itself (e.g. an IP network union)."""
    _CONVERTERS[tp] = fn


def convert(tp: Any, data: Any, path: str, problems: list[str]) -> Any:
    """Convert ``data`` to type ``tp``; on a problem append it and return None."""
    custom = _CONVERTERS.get(tp)
    if custom is not None:
        return custom(data, path, problems)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if data is None:
            return None
        if len(args) == 1:
            return convert(args[0], data, path, problems)
    if tp is Any:
        return data
    from_config = getattr(tp, "from_config", None)
    if from_config is not None:
        return from_config(data, path, problems)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, data, path, problems)
    if tp is bool:
        if isinstance(data, bool):
            return data
    elif tp is int:
        if isinstance(data, int) and not isinstance(data, bool):
            return data
    elif tp is float:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return float(data)
    elif tp is str:
        if isinstance(data, str):
            return data
    elif origin is Literal:
        if data in get_args(tp):
            return data
    elif origin is tuple:
        if isinstance(data, (list, tuple)):
            (item_tp, *_rest) = get_args(tp)
            out = []
            for i, item in enumerate(data):
                out.append(convert(item_tp, item, _join(path, i), problems))
            return tuple(out)
    elif origin in (dict, Mapping):
        if isinstance(data, Mapping):
            key_tp, val_tp = get_args(tp)
            result: dict[Any, Any] = {}
            for k, v in data.items():
                key = convert(key_tp, k, _join(path, str(k)), problems)
                result[key] = convert(val_tp, v, _join(path, str(k)), problems)
            return types.MappingProxyType(result)
    else:  # pragma: no cover - a programming error, not a user one
        raise TypeError(f"unsupported settings type {tp!r} at {path}")
    problems.append(f"{path}: expected {_type_name(tp)}, got {_describe(data)}")
    return None


def build(cls: type[T], data: Any, path: str, problems: list[str]) -> T:
    """Build the frozen dataclass ``cls`` from a mapping, collecting problems."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(f"{path or '<top>'}: expected a mapping, got {_describe(data)}")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            expected = ", ".join(sorted(fields))
            problems.append(f"{_join(path, str(key))}: unknown key (expected one of: {expected})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        fpath = _join(path, name)
        if name in data:
            count = len(problems)
            value = convert(hints[name], data[name], fpath, problems)
            if len(problems) == count:
                _check_constraints(value, f.metadata, fpath, problems)
            if value is not None:
                values[name] = value
        elif f.default is _MISSING and f.default_factory is _MISSING:
            problems.append(f"{fpath}: required")
    try:
        obj = cls(**values)
    except TypeError:
        # A required field was missing: the problem is already recorded.
        return _placeholder(cls)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            problems.extend(check(path))
        except (TypeError, AttributeError, KeyError):
            pass  # a field it looks at is already reported as broken
    return obj


def _placeholder(cls: type[T]) -> T:
    """An instance with defaults where it has them, so checks further up can go on."""
    obj = object.__new__(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default is not _MISSING:
            value = f.default
        elif f.default_factory is not _MISSING:
            value = f.default_factory()
        else:
            value = None
        object.__setattr__(obj, f.name, value)
    return obj


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, doc) for every setting, for docs and ``imctl config show``."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            rows.extend(describe(tp, key))
            continue
        if f.default is not _MISSING:
            default = repr(f.default)
        elif f.default_factory is not _MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((key, default, f.metadata.get("doc", "")))
    return rows
