"""All-or-nothing output folders: a command writes into a hidden sibling and renames it at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from videolm.tokenizers.errors import UsageError


def check_output_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse (as a usage error) to write over a folder that has something in it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: folder exists and is not empty (choose another or pass --overwrite)")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False):
    """Yield a temporary folder beside ``out``; on success it becomes ``out``, on failure it vanishes.

    So an interrupted or failed command never leaves a half-written ``out`` behind, and an
    existing ``out`` is only replaced (with ``overwrite``) once the new one is complete.
    """
    out = check_output_dir(out, overwrite).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
