"""What every command shares: its flags derived from a dataclass (`videolm.core.config.add_flags`), a
YAML ``--config`` the flags lie over, input files looked at before any work, and progress bars.
Failures are usage errors (exit 2, one line)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from videolm.core.config import add_flags, from_flags, read_config, size_pair
from videolm.core.errors import ConfigError, MediaError, UsageError
from videolm.data import media
from videolm.data.worlds import is_world


class Parser(argparse.ArgumentParser):
    """argparse that raises a one-line UsageError instead of printing usage and exiting."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see --help)")


@dataclass
class Command:
    """One command: the dataclass its flags come from, what runs it, and its help. ``config``: the
    name a YAML file's ``entry:`` must give for ``--config`` to read it (None: no ``--config``);
    ``schema``: the dataclass such a file describes (default: ``args``; the library's config, where
    ``args`` adds what only the command line has, such as ``--out``)."""

    args: type
    run: Callable[[Any], int]
    help: str
    description: str = ""
    config: str | None = None
    schema: type | None = None

    def parser(self, prog: str) -> tuple[Parser, list[str]]:
        parser = Parser(prog=prog, description=self.description or self.help)
        if self.config:
            parser.add_argument("--config", help=f"a YAML config with 'entry: {self.config}'; flags override it")
        return parser, add_flags(parser, self.args)

    def __call__(self, prog: str, argv: list[str]) -> int:
        parser, keys = self.parser(prog)
        parsed = parser.parse_args(argv)
        base = read_config(parsed.config, self.config) if self.config and parsed.config else None
        try:
            args = from_flags(parsed, self.args, keys, base, getattr(parser, "flag_names", {}),
                              getattr(parser, "flag_excludes", {}))
        except ConfigError as e:  # name the file, unless a flag was the trouble
            text = str(e)
            key = re.match(r"([a-z_][\w.]*)[=:]", text)
            flag = f"--{key.group(1).replace('_', '-')}" if key else None
            if flag and any(a == flag or a.startswith(f"{flag}=") for a in argv):
                raise ConfigError(f"--{text}") from None  # a nested setting given as a flag
            from_file = self.config and parsed.config and not text.startswith(("-", "ROOT", "INPUT", "OUTPUT"))
            raise ConfigError(f"{parsed.config}: {text}" if from_file else text) from None
        return self.run(args)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))


def progress(total: int | None, desc: str, unit: str = "clip"):
    """A progress bar on stderr that appears only if the work takes longer than a second."""
    return tqdm(total=total, desc=desc, unit=unit, delay=1.0, file=sys.stderr, leave=False)


def size(text: str | None) -> tuple[int, int] | None:
    """'64' -> (64, 64); '64x96' -> (64, 96) as (height, width); None stays None."""
    if text is None:
        return None
    try:
        return size_pair(text)
    except ValueError as e:
        raise UsageError(f"--size {e}") from None


# ------------------------------------------------------------------------------------ inputs


def input_file(path, flag: str) -> Path:
    """``path`` as a readable file, or a usage error naming ``flag``."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, not a file")
    try:
        with open(p, "rb") as f:
            if not f.read(1):
                raise UsageError(f"{flag} {path}: file is empty")
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None
    return p


def input_folder(path, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{flag} {path}: no such folder")
    if not p.is_dir():
        raise UsageError(f"{flag} {path}: not a folder")
    return p


def media_input(path, flag: str, kind: str = "video"):
    """Look into a media input before any work: a video or image must have a picture, a sound file
    sound. Returns what `probe_video` learns (None for sound files)."""
    p = input_file(path, flag)
    try:
        if kind == "audio":
            media.probe_audio(p)
            return None
        return media.probe_video(p)
    except MediaError as e:
        raise UsageError(f"{flag} {path}: {e.cause}") from None


def data_input(data: str | None, flag: str = "--data") -> None:
    """A world ('shapes', 'photos', a mix like 'photos:3+shapes:1'), a folder of videos or a clip pack
    (a folder with pack.json, or a URL; a URL is checked when it is opened)."""
    if data and "://" in data:
        return
    if data and not is_world(data):
        input_folder(data, flag)
    elif data and Path(data).is_dir():
        warnings.warn(f"{flag} {data}: means the built-in world; for your folder of that name write ./{data}",
                      stacklevel=2)


__all__ = ["Command", "Parser", "data_input", "input_file", "input_folder", "media_input", "print_json", "progress",
           "size"]
