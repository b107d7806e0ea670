"""World specs: "shapes", "photos", or a weighted mix such as "photos:3+shapes:1" (pure Python, so
the command line can tell a world from a folder without importing torch)."""

from __future__ import annotations

import math

from videolm.core.errors import UsageError

WORLDS = ("shapes", "photos")


def parse_world(spec: str) -> list[tuple[str, float]] | None:
    """``[(world, weight), ...]`` for a world spec, None for anything else (a folder)."""
    parts = []
    for part in spec.split("+"):
        name, _, weight = part.partition(":")
        if name not in WORLDS:
            return None
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise UsageError(f"data {spec!r}: weight {weight!r} of {name} is not a number") from None
        if not w > 0 or not math.isfinite(w):
            raise UsageError(f"data {spec!r}: the weight of {name} must be positive")
        parts.append((name, w))
    return parts


def is_world(spec: str | None) -> bool:
    return bool(spec) and parse_world(spec) is not None
