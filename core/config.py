"""YAML configs: each file names the command it is for, and is checked against that command's dataclass.

A config file looks like::

    entry: data shapes        # the command (entry point) it configures
    num: 1024                 # fields of that entry's dataclass
    world: {height: 64, ...}  # nested dataclasses are nested mappings

``load_config(path)`` reads it and builds the dataclass strictly: unknown keys, missing required
keys and wrong types are errors that name the file and the key, so a config can't rot silently.
Commands register their dataclass in ``ENTRY_POINTS`` (by import path, so nothing heavy is
imported until a config for it is loaded).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from videolm.core.errors import ConfigError, VideolmError
from videolm.core.schema import from_dict, to_dict  # noqa: F401  (re-exported)

# command name -> "module:DataclassName"
ENTRY_POINTS: dict[str, str] = {
    "data shapes": "videolm.data.shapes_data:ShapesDataConfig",
    "data folder": "videolm.data.folder:FolderConfig",
    "tokenizer fit": "videolm.train.tokenizer:TokenizerFitConfig",
    "lm fit": "videolm.train.lm:LMFitConfig",
    "finetune": "videolm.train.finetune:FinetuneConfig",
    "refiner fit": "videolm.train.refiner:RefinerFitConfig",
    "dit fit": "videolm.train.dit:DiTFitConfig",
}


def resolve(path: str) -> Any:
    """Import ``"package.module:Name"``."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {path!r}: {e}") from e


def entry_class(entry: str) -> type:
    if entry not in ENTRY_POINTS:
        raise ConfigError(f"unknown entry {entry!r}; known: {', '.join(sorted(ENTRY_POINTS))}")
    return resolve(ENTRY_POINTS[entry])


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


def load_config(path: str | Path, expect_entry: str | None = None) -> tuple[str, Any]:
    """Read a YAML config and build its entry's dataclass. Returns ``(entry, config)``."""
    data = read_yaml(path)
    entry = data.pop("entry", None)
    if entry is None:
        raise ConfigError(f"{path}: missing 'entry:' naming the command this config is for")
    if expect_entry is not None and entry != expect_entry:
        raise ConfigError(f"{path}: is a config for 'videolm {entry}', not 'videolm {expect_entry}'")
    try:
        return entry, from_dict(entry_class(entry), data)
    except VideolmError as e:
        raise ConfigError(f"{path}: {e}") from e
