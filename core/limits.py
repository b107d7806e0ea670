"""The bounds of what a user may ask for: checked up front, as usage errors, by the command line and
the Python API alike."""

import os

from videolm.core.errors import UsageError

MAX_SEED = 2**63 - 1  # seeds feed torch.Generator.manual_seed and numpy; sample i uses seed + i
MAX_SAMPLES = 10_000  # samples are made a batch at a time and written at once, so memory stays flat; this bounds the disk
MAX_FRAMES = 1025  # 2 minutes at 8 fps, made by chaining `extend`
MAX_PROMPT_CHARS = 2000  # far beyond any caption; the model's context bounds the prompt's tokens too
MAX_STEPS = 10_000_000  # training steps


def memory_bytes() -> int | None:
    """This machine's physical memory, where the system says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_held(num: int, item_bytes: int, what: str, flag: str = "--num") -> None:
    """Refuse, up front, ``num`` items of ``item_bytes`` each that a command holds in memory at once
    when they would take more than half of this machine's memory."""
    have = memory_bytes()
    need = num * item_bytes
    if have and need > have // 2:
        raise UsageError(f"{flag} {num}: holding {num:,} {what} takes about {need / 2**30:.1f} GiB, more than half "
                         f"of this machine's {have / 2**30:.0f} GiB; use a smaller {flag}")
