"""Strict dataclass <-> plain data conversion, shared by every config in videolm.

``from_dict(cls, data)`` builds a dataclass from nested dicts/lists (from YAML or JSON), checking
on the way down: unknown keys, missing required keys and wrong types are `ConfigError`s naming
the key's dotted path. ``to_dict`` is the inverse.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, Union

from videolm.core.errors import ConfigError, VideolmError


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, checking keys and types on the way down."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {_join(where, unknown[0])!r} (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {_join(where, name)!r}")
    try:
        return cls(**kwargs)
    except VideolmError as e:  # a check in __post_init__: say where in the config it failed
        text = str(e)
        if not where or text.startswith(where):
            raise
        raise ConfigError(f"{where}.{text}" if re.match(r"\w+=", text) else f"{where}: {text}") from e


def check_range(obj: Any, low: float | None = None, high: float | None = None, *names: str,
                low_open: bool = False) -> None:
    """A `ConfigError` unless each field ``names`` of ``obj`` (None fields skipped) lies in
    ``[low, high]`` (``(low, high]`` with ``low_open``): for the checks of a config's ``__post_init__``."""
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and value > high
        if below or above or value != value:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            raise ConfigError(f"{name}={value!r} must be {' and '.join(x for x in (lo, hi) if x)}")


def check_clip_numbers(cfg: Any) -> None:
    """A data section's clip fields (those it has of num, frames, height, width, fps): at least
    one clip of 1 + 4k frames, a size in multiples of 8, a positive frame rate."""
    check_range(cfg, 1, None, *[n for n in ("num", "fps") if hasattr(cfg, n)])
    frames = getattr(cfg, "frames", None)
    if frames is not None and (frames < 1 or (frames - 1) % 4):
        raise ConfigError(f"frames={frames} must be 1 + 4k (1, 5, 9, 13, 17, ...)")
    for name in ("height", "width"):
        size = getattr(cfg, name, None)
        if size is not None and (size < 8 or size % 8):
            raise ConfigError(f"{name}={size} must be a multiple of 8")


def revalidate(cfg: Any) -> Any:
    """``cfg`` rebuilt through `from_dict`, so every check runs again (after flags changed fields)."""
    return from_dict(type(cfg), to_dict(cfg))


def to_dict(obj: Any) -> Any:
    """A dataclass as plain, YAML/JSON-ready data."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return origin(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, where): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value!r} is not a finite number")
        return float(value)
    if tp in (int, str, bool) and type(value) is not tp:
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value
