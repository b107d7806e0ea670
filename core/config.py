"""Configs, one declaration each: a dataclass read strictly from a YAML file, from JSON, or from flags.

``from_dict(cls, data)`` builds a dataclass from nested dicts and lists, checking on the way down:
unknown keys, missing required keys, wrong types and non-finite numbers are `ConfigError`s naming
the key's dotted path, and each dataclass's ``__post_init__`` checks its bounds (`check_range`).

The command line is derived from the same dataclasses (`add_flags`): every field is a flag named
after its key (``train.max_minutes`` -> ``--train.max-minutes``; a field may add short names in
its metadata, ``field(metadata={"flags": ["--max-minutes"]})``), its help is the comment on the
field's line, and the parsed flags are laid over the YAML file (``--config``) and built by
`from_dict`, so a file and its flags pass the same checks. A YAML config names the command it is
for::

    entry: lm fit             # the command it configures
    preset: tiny              # fields of that command's dataclass
    train: {steps: 1300, ...} # nested dataclasses are nested mappings
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import inspect
import io
import math
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from videolm.core.errors import ConfigError, VideolmError


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, checking keys and types on the way down."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(cls, data, where)
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


def check_keys(cls: type, data: dict, where: str = "") -> None:
    """Every key of ``data`` names a field of dataclass ``cls``; the first that does not is a
    `ConfigError` (``where``: the keys' place in the config, e.g. ``model``)."""
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {_join(where, unknown[0])!r} (allowed: {', '.join(fields)})")


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


# ------------------------------------------------------------------------------------- files


def resolve(path: str) -> Any:
    """Import ``"package.module:Name"``."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {path!r}: {e}") from e


def read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return data


def read_config(path: str | Path, entry: str) -> dict:
    """A YAML config's keys for command ``entry`` (its ``entry:`` checked and dropped)."""
    data = read_yaml(path)
    named = data.pop("entry", None)
    if named is None:
        raise ConfigError(f"{path}: missing 'entry:' naming the command this config is for")
    if named != entry:
        raise ConfigError(f"{path}: is a config for 'videolm {named}', not 'videolm {entry}'")
    return data


def load_config(path: str | Path, cls: type, entry: str) -> Any:
    """The dataclass ``cls`` a YAML config for command ``entry`` describes."""
    try:
        return from_dict(cls, read_config(path, entry))
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


# ------------------------------------------------------------------------------------- flags


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in a dataclass's source, for its flag's help: the comment on the
    field's line and the lines that continue it (``#   ...``, indented past the ``#``), after any
    comment lines standing right above the field."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        last, above, own = None, [], set()  # own: fields whose comment this class (re)writes
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4:
                is_field = tok.line.lstrip().startswith(tok.string + ":")
                last = tok.string if is_field else None
                if is_field and above:
                    out[last] = " ".join(above)
                    own.add(last)
                above = []
            elif tok.type == tokenize.OP and tok.start[1] == 4 and tok.string == "@":
                last, above = None, []  # a decorated method: comments above it are not a field's
            elif tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                own_line = tok.line.strip().startswith("#")
                if last is not None and (not own_line or tok.string.startswith("#   ")):
                    earlier = out.get(last, "") if last in own else ""  # a subclass's comment replaces its base's
                    out[last] = f"{earlier} {text}".strip()  # on the field's line, or continuing it
                    own.add(last)
                elif own_line and text:
                    above.append(text)
                    last = None
    return out


def _strip_optional(tp):
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return tp, False


def _one_or_many(tp) -> bool:
    """Whether ``tp`` is ``str | list[str]`` (optional or not): a field that takes one text or several."""
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return False
    return {a for a in typing.get_args(tp) if a is not type(None)} == {str, list[str]}


def _scalar(tp, optional: bool):
    """A converter from a flag's text to ``tp`` (None from 'null' when ``optional``)."""

    def convert(text: str):
        if optional and text.lower() in ("null", "none"):
            return None
        if tp is int:
            try:
                return int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if tp is float:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
            if not math.isfinite(value):
                raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
            return value
        return text

    return convert


def _structured(text: str):
    """A mapping or other structured value given as YAML text (``{t2v: 1.0, v2a: 2}``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid YAML ({str(e).splitlines()[0]})") from None


def add_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> list[str]:
    """One flag per field of dataclass ``cls`` (nested dataclasses: dotted names); returns the
    keys added. Flags are only set when given (they lie over the config file)."""
    hints = typing.get_type_hints(cls)
    docs = field_comments(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("flag") is False:
            continue
        tp, optional = _strip_optional(hints[f.name])
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            keys += add_flags(parser, tp, key + ".")
            continue
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        helptext = f.metadata.get("help") or docs.get(f.name, "")
        if not required and default not in (None, [], {}, ()):
            helptext = f"{helptext} (default {default})".strip()
        kwargs: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": helptext or None}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs.update(choices=list(args), type=type(args[0]), metavar="{" + ",".join(map(str, args)) + "}")
        elif origin in (list, tuple) and args and args[0] in (int, float, str):  # repeat the flag (or give a,b,c)
            convert = _comma_list(args[0]) if f.metadata.get("comma") else (lambda t, c=_scalar(args[0], False): [c(t)])
            kwargs.update(action="extend", type=convert, metavar=f.name.upper().rstrip("S") or None)
        elif _one_or_many(tp):  # str | list[str]: one value, or the flag repeated for several ("null": none)
            kwargs.update(action="extend", type=lambda t: [None] if t.lower() in ("null", "none") else [t],
                          metavar=f.name.upper().rstrip("S") or None)
        elif origin is dict or origin in (list, tuple) or tp is Any:
            kwargs.update(type=_structured, metavar="YAML")
        else:
            kwargs.update(type=_scalar(tp, optional), metavar=f.name.upper())
        names = getattr(parser, "flag_names", {})
        if f.metadata.get("excludes"):  # a flag for this field drops the config's value of those fields
            parser.flag_excludes = {**getattr(parser, "flag_excludes", {}),
                                    key: [prefix + other for other in f.metadata["excludes"]]}
        if f.metadata.get("positional"):
            kwargs.pop("dest")
            kwargs.pop("metavar", None)
            if origin in (list, tuple):
                kwargs["type"] = _scalar(args[0] if args else str, False)
            parser.add_argument(key, nargs="*" if origin in (list, tuple) else "?", metavar=f.name.upper(),
                                **{k: v for k, v in kwargs.items() if k != "action"})
            names[key] = f.name.upper()
        else:
            flags = [f"--{key.replace('_', '-')}", *f.metadata.get("flags", ())]
            parser.add_argument(*flags, **kwargs)
            names[key] = flags[-1] if f.metadata.get("flags") else flags[0]
        parser.flag_names = names
        keys.append(key)
    keys += _size_flag(parser, cls, prefix)
    return keys


SIZE_KEY = "<size>"  # the last part of a --size flag's key: it sets the section's height and width


def _size_flag(parser: argparse.ArgumentParser, cls: type, prefix: str) -> list[str]:
    """A section with ``height`` and ``width`` (and no ``size`` of its own) also takes ``--PREFIX.size
    HxW``, setting both; a ``data`` or ``world`` section's ``--data.size`` and ``--data.frames`` are
    also ``--size`` and ``--frames`` where the command has no flags of those names."""
    names = {f.name for f in dataclasses.fields(cls)}
    if not {"height", "width"} <= names or "size" in names:
        return []
    size = {"dest": prefix + SIZE_KEY, "default": argparse.SUPPRESS, "type": _size_text, "metavar": "HxW"}
    parser.add_argument(f"--{prefix}size", help="frame size N or HxW (sets height and width)", **size)
    if prefix in ("data.", "world."):
        _alias(parser, "--size", f"--{prefix}size", **size)
        if "frames" in names:
            _alias(parser, "--frames", f"--{prefix}frames", dest=prefix + "frames", default=argparse.SUPPRESS,
                   type=int, metavar="FRAMES")
    return [prefix + SIZE_KEY]


def _alias(parser: argparse.ArgumentParser, flag: str, of: str, **kwargs) -> None:
    """``flag`` as a second name of ``of``, unless the command already has a ``flag``."""
    try:
        parser.add_argument(flag, help=f"the same as {of}", **kwargs)
    except argparse.ArgumentError:
        pass


def size_pair(text) -> tuple[int, int]:
    """A frame size as ``(height, width)``: "64" -> (64, 64), "48x80" -> (48, 80); a ValueError
    naming the text otherwise. (Multiples of the tokenizer's stride are checked where they matter.)"""
    parts = str(text).strip().lower().split("x")
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) <= 8192 for p in parts):
        raise ValueError(f"{text!r}: write N or HxW (1 to 8192), e.g. 64 or 48x80")
    return int(parts[0]), int(parts[1])


def _size_text(text: str) -> tuple[int, int]:
    try:
        return size_pair(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _comma_list(tp):
    convert = _scalar(tp, False)

    def parse(text: str) -> list:
        return [convert(part.strip()) for part in text.split(",") if part.strip()]

    return parse


def from_flags(parsed: argparse.Namespace, cls: type, keys: list[str], base: dict | None = None,
               names: dict[str, str] | None = None, excludes: dict[str, list[str]] | None = None) -> Any:
    """``cls`` built from a config's keys (``base``) with the flags given laid over them; ``names``:
    how each key is written on the command line (for messages); ``excludes``: key -> keys whose
    config values a flag for that key drops (one of two alternatives, such as data.shards and
    data.source, given on the command line replaces the other one in the config)."""
    data = copy.deepcopy(base or {})
    for key, others in (excludes or {}).items():
        if key in vars(parsed):
            for other in others:
                node, parts = data, other.split(".")
                for part in parts[:-1]:
                    node = node.get(part) if isinstance(node, dict) else None
                if isinstance(node, dict) and other not in vars(parsed):
                    node.pop(parts[-1], None)
    for key in keys:
        if key not in vars(parsed):
            continue
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parts[:-1])}: the config gives a value where --{key} needs a mapping")
        value = getattr(parsed, key)
        if parts[-1] == SIZE_KEY:
            node["height"], node["width"] = value
        elif isinstance(value, list) and None in value:  # a repeatable flag given "null"
            if any(v is not None for v in value):
                raise ConfigError(f"{(names or {}).get(key, '--' + key)}: null (none) cannot go with other values")
            node[parts[-1]] = None
        else:
            node[parts[-1]] = value
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        missing = re.match(r"missing required key '(.+)'", str(e))
        if missing:
            key = missing.group(1)
            raise ConfigError(f"{(names or {}).get(key, '--' + key.replace('_', '-'))} is required") from None
        given = re.match(r"([\w.]+)=", str(e))
        if given and given.group(1) in vars(parsed):  # a bound a flag broke: say it with the flag's name
            key = given.group(1)
            raise ConfigError(f"{(names or {}).get(key, '--' + key)}{str(e)[len(key):]}") from None
        if given and given.group(1).rpartition(".")[2] in ("height", "width"):  # set by a --size flag
            size = given.group(1).rpartition(".")[0] + ("." if "." in given.group(1) else "") + SIZE_KEY
            if size in vars(parsed):
                h, w = getattr(parsed, size)
                raise ConfigError(f"--size {h}x{w}: {str(e)}") from None
        raise


__all__ = ["add_flags", "check_clip_numbers", "check_keys", "check_range", "field_comments", "from_dict", "from_flags",
           "load_config", "read_config", "read_yaml", "resolve", "revalidate", "size_pair", "to_dict"]
