"""Flag types and input checks for the command line: every number bounded, every input file looked
at before a model is loaded or work starts. All failures are usage errors (exit 2, one line)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from videolm.core.errors import MediaError, UsageError

from videolm.core.limits import MAX_FRAMES, MAX_PROMPT_CHARS, MAX_SAMPLES, MAX_SEED, MAX_STEPS  # noqa: F401


def integer(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a whole number {bound}")
        return value

    return parse


def real(low: float, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite number in [low, high] (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (value <= low if low_open else value < low) or (high is not None and value > high):
            lo = f"{'above' if low_open else 'at least'} {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {lo}"
                                             + (f" and at most {high:g}" if high is not None else ""))
        return value

    return parse


def size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '64x96' -> (64, 96) as (height, width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use N or HxW, e.g. 64 or 64x96") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1 or max(parts) > 8192:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use N or HxW (1 to 8192), e.g. 64 or 64x96")
    return parts[0], parts[1]


POSITIVE = integer(1)
COUNT = integer(1, 100_000_000)
SEED = integer(0, MAX_SEED)
STEPS = integer(1, MAX_STEPS)
THREADS = integer(1, 4096)
BATCH = integer(1, 65_536)
MINUTES = real(0, None, low_open=True)
GUIDANCE = real(0, 100)
TEMPERATURE = real(0, 100)
TOP_P = real(0, 1, low_open=True)


def progress(total: int | None, desc: str, unit: str = "clip"):
    """A progress bar on stderr that appears only if the work takes longer than a second."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, delay=1.0, file=sys.stderr, leave=False)


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
    from videolm.data import media

    p = input_file(path, flag)
    try:
        if kind == "audio":
            media.probe_audio(p)
            return None
        return media.probe_video(p)
    except MediaError as e:
        raise UsageError(f"{flag} {path}: {e.cause}") from None


__all__ = ["BATCH", "COUNT", "GUIDANCE", "MAX_FRAMES", "MAX_SAMPLES", "MAX_SEED", "MINUTES", "POSITIVE", "SEED",
           "STEPS", "TEMPERATURE", "THREADS", "TOP_P", "input_file", "input_folder", "integer", "media_input",
           "progress", "real", "size"]
