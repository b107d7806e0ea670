"""Where commands write, checked before any work, and never at the cost of a user's files.

Every folder videolm writes holds a marker, ``.videolm-output.json``: the command that wrote it
and every file it wrote. ``--overwrite`` replaces only such a folder, and only when everything in
it is listed there; it never touches ``.``, ``~``, ``/``, a folder above the working directory or
the home folder, a symbolic link or a repository. Three shapes of output:

- `atomic_output_dir`: the folder appears whole at the end or not at all (``data shapes``,
  ``tokenize``, ``compare``, ``probe fit``);
- `StreamingOutput`: each file is written atomically as soon as it is done and listed at once,
  so a killed run leaves only complete, listed files (``generate``);
- `check_run_dir`: a training run's folder, which a rerun of the same command resumes.

Single files (``eval --out``, ``media convert``, ``refiner apply``) go through `check_output_file`.
All checks raise `UsageError` (exit 2) with one line naming the path.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import tempfile
import warnings
from pathlib import Path

from videolm.core.errors import UsageError
from videolm.core.models import SHIPPED_DIR, shipped_models

MARKER = ".videolm-output.json"
# the hidden temporary name an atomic writer gives a file before renaming it into place
# (videolm.data.media and `write_atomic`): ".NAME.PID-HEX8.tmp"
_TEMP = re.compile(r"^\.(?P<name>.+)\.\d+-[0-9a-f]{8}\.tmp$")


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


# ------------------------------------------------------------------------------------ checks


def _protected(path: Path) -> str | None:
    """Why ``path`` (resolved) may never be replaced, or None."""
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if path == Path(path.anchor):
        return "is the root of the file system"
    if path == cwd or cwd.is_relative_to(path):
        return "is the working directory or a folder above it"
    if path == home or home.is_relative_to(path):
        return "is the home folder or a folder above it"
    if (path / ".git").exists() or (path / ".hg").exists() or (path / ".svn").exists():
        return "is a repository"
    return None


def _writable_parent(path: Path, flag: str) -> None:
    """Fail unless a file can really be created in the nearest existing folder at or above ``path``."""
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise UsageError(f"{flag} {path}: {probe} is a broken symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {path}: {probe} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".videolm-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write in {probe} ({_reason(e)})") from None


def read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files", []), list) else None


def foreign_files(folder: Path) -> list[str]:
    """Paths under ``folder`` (relative, POSIX) that its marker does not list: what videolm did not
    write. Temporary files of listed ones (a killed atomic write) count as videolm's."""
    marker = read_marker(folder)
    listed = set(marker.get("files", [])) if marker else set()
    foreign = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel == MARKER or (path.is_dir() and not path.is_symlink()):
            continue
        temp = _TEMP.match(path.name)
        base = (path.parent / temp["name"]).relative_to(folder).as_posix() if temp else None
        if path.is_symlink() or (rel not in listed and base not in listed and base != MARKER):
            foreign.append(rel)
    return foreign


def _check_replaceable(out: Path, flag: str) -> None:
    why = _protected(out.resolve())
    if why:
        raise UsageError(f"{flag} {out}: {why}; --overwrite never replaces it (choose a new folder)")
    if read_marker(out) is None:
        raise UsageError(f"{flag} {out}: not a folder videolm wrote (no {MARKER}); --overwrite replaces only "
                         "videolm's own output folders (choose a new folder)")
    foreign = foreign_files(out)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UsageError(f"{flag} {out}: holds files videolm did not write ({foreign[0]}{more}); "
                         "--overwrite leaves it alone (choose a new folder)")


def _real_folder(out: Path, flag: str) -> bool:
    """Fail on a symbolic link or a file at ``out``; whether it is a folder with something in it."""
    if out.is_symlink():
        raise UsageError(f"{flag} {out}: is a symbolic link; give a real folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out}: exists and is not a folder")
    return out.is_dir() and any(out.iterdir())


def check_apart(out: str | Path, inputs, flag: str = "--out") -> None:
    """Refuse an output folder that is one of the ``inputs`` (files or folders), holds one (replacing
    it would delete it) or lies inside an input folder (inputs are read-only to videolm). Inputs
    that are not local paths (URLs, world names) or do not exist are passed over; a shipped
    model's name stands for its folder."""
    o = Path(out).resolve()
    for given in inputs:
        if given is None or "://" in str(given):
            continue
        if Path(given).exists():
            q = Path(given).resolve()
        elif str(given) in shipped_models():
            q = (SHIPPED_DIR / str(given)).resolve()
        else:
            continue
        if q == o:
            raise UsageError(f"{flag} {out}: is also an input; write the output elsewhere")
        if o in q.parents:
            raise UsageError(f"{flag} {out}: holds the input {given}; write the output elsewhere")
        if q in o.parents:
            raise UsageError(f"{flag} {out}: is inside the input folder {given}; videolm never writes into "
                             "the folders it reads")


def check_output_dir(out: str | Path, overwrite: bool = False, flag: str = "--out", inputs=()) -> Path:
    """Check, creating nothing, that ``out`` can become a command's output folder: a new or empty
    real folder in a writable place, or, with ``overwrite``, a folder videolm wrote earlier; never
    one of the command's ``inputs`` or a folder that holds or lies in one (`check_apart`)."""
    out = Path(out)
    why = _protected(out.resolve()) if overwrite and out.is_dir() else None
    if why:  # the root, a home or the working folder: named as such before what it holds
        raise UsageError(f"{flag} {out}: {why}; --overwrite never replaces it (choose a new folder)")
    check_apart(out, inputs, flag)
    if _real_folder(out, flag):
        if not overwrite:
            raise UsageError(f"{flag} {out}: folder exists and is not empty (choose another or pass --overwrite)")
        _check_replaceable(out, flag)
    _writable_parent(out, flag)
    if out.exists():
        _writable_parent(out.absolute().parent, flag)  # a whole new output is made beside it
    return out


def check_output_file(path: str | Path, overwrite: bool = False, inputs: tuple = (), flag: str = "--out") -> Path:
    """Check that a single output file can be written at ``path``: not an input nor inside an input
    folder (`check_apart`), not a folder or a symbolic link, in a writable folder; an existing file
    only with ``overwrite``."""
    path = Path(path)
    check_apart(path, inputs, flag)
    if path.is_symlink():
        raise UsageError(f"{flag} {path}: is a symbolic link; give a plain file name")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UsageError(f"{flag} {path}: exists (choose another name or pass --overwrite)")
    _writable_parent(path.parent if str(path.parent) else Path("."), flag)
    return path


def check_run_dir(out: str | Path, command: str, flag: str = "--out") -> Path:
    """A training run's folder: new, empty, or one this command wrote (a rerun resumes it)."""
    out = Path(out)
    if _real_folder(out, flag):
        owner = _run_owner(out)
        if owner is None:
            raise UsageError(f"{flag} {out}: folder exists and is not a videolm run folder (choose a new folder)")
        if owner != command:
            raise UsageError(f"{flag} {out}: is a run folder of 'videolm {owner}', not 'videolm {command}'")
    _writable_parent(out, flag)
    return out


def _run_owner(out: Path) -> str | None:
    marker = read_marker(out)
    if marker is not None:
        return marker.get("command")
    try:  # run folders from before the marker: their run.json names the command
        return json.loads((out / "run.json").read_text()).get("entry")
    except (OSError, ValueError, AttributeError):
        return None


def mark_run_dir(out: Path, command: str) -> None:
    """Make ``out`` (if needed) and mark it as ``command``'s run folder."""
    out.mkdir(parents=True, exist_ok=True)
    if read_marker(out) is None:
        write_json_atomic(out / MARKER, {"command": command, "kind": "run"})


# ------------------------------------------------------------------------------------ writing


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a hidden temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def _mark(folder: Path, command: str) -> None:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    write_json_atomic(folder / MARKER, {"command": command, "files": files})


def _clear(out: Path, flag: str) -> None:
    """Remove a folder videolm wrote, after checking again that nothing else is in it."""
    _check_replaceable(out, flag)
    shutil.rmtree(out)


def _say_leftovers(out: Path) -> None:
    """Name what a killed run of videolm left beside ``out`` (SIGKILL allows no clean-up): an earlier
    output it had set aside, an output it had not finished. Nothing here deletes them."""
    parent = out.absolute().parent
    if not parent.is_dir():
        return
    for kind, what in (("earlier", "an earlier output set aside"), ("partial", "an unfinished output")):
        for path in sorted(parent.glob(f".{glob.escape(out.name)}.{kind}-*")):
            if kind == "partial" and (path / MARKER).exists():
                what = "a finished output that could not take its place"
            warnings.warn(f"{path} holds {what} of {out} by a run of videolm that was killed; "
                          "move or delete it when you no longer need it", stacklevel=3)


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False, command: str = "videolm", flag: str = "--out",
                      inputs=()):
    """Yield a hidden folder beside ``out``; on success it is marked and becomes ``out``, on failure
    it vanishes. An existing ``out`` is replaced (with ``overwrite``) only once the new one is whole.
    ``inputs``: what the command reads (`check_apart`)."""
    out = check_output_dir(out, overwrite, flag, inputs).absolute()
    _say_leftovers(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    done = False
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        _mark(tmp, command)
        if out.is_dir() and not any(out.iterdir()):  # an empty folder (perhaps the working one) stays: fill it
            for entry in tmp.iterdir():
                os.replace(entry, out / entry.name)
        else:
            if out.exists():
                if not overwrite:
                    raise UsageError(f"{flag} {out}: something was written there meanwhile; the finished output "
                                     f"is kept in {tmp}")
                try:
                    _clear(out, flag)
                except UsageError as e:
                    raise UsageError(f"{e}; the finished output is kept in {tmp}") from None
            os.replace(tmp, out)
        done = True
    finally:
        if tmp.exists() and (done or not any(tmp.iterdir()) or not (tmp / MARKER).exists()):
            shutil.rmtree(tmp, ignore_errors=True)


class StreamingOutput:
    """An output folder filled a file at a time. `reserve` lists a name in the marker before the
    file is written (atomically, by the caller), so whatever a kill leaves is complete and listed."""

    def __init__(self, out: str | Path, overwrite: bool = False, command: str = "videolm", flag: str = "--out",
                 inputs=()):
        self.out, self.overwrite, self.command, self.flag = Path(out), overwrite, command, flag
        check_output_dir(self.out, overwrite, flag, inputs)
        self.files: list[str] = []
        self.earlier: Path | None = None  # an earlier output being overwritten, kept aside until `close`
        self.made = False  # `open` made the folder
        self.opened = False  # `open` has run (whole: signals wait until it is done)

    def open(self) -> Path:
        """Set an earlier output being overwritten aside (`close` deletes it, or puts it back), make
        the folder and its marker."""
        _say_leftovers(self.out)
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # all of it or none
        moved = made = False
        try:
            if self.out.is_dir() and any(self.out.iterdir()):
                _check_replaceable(self.out, self.flag)
                self.earlier = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.earlier-",
                                                     dir=self.out.absolute().parent))
                os.replace(self.out, self.earlier / "out")
                moved = True
            self.made = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            made = self.made
            write_json_atomic(self.out / MARKER, {"command": self.command, "files": self.files})
            self.opened = True
        except BaseException:  # only what this call made goes; an earlier output comes back
            if made:
                shutil.rmtree(self.out, ignore_errors=True)
            if moved:
                os.replace(self.earlier / "out", self.out)
            if self.earlier is not None:
                shutil.rmtree(self.earlier, ignore_errors=True)
                self.earlier = None
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return self.out

    def close(self, ok: bool, kept: bool = True) -> None:
        """The end of the command: the earlier output goes when ``ok``, or when the failed command
        ``kept`` something (the files it listed stay, as a stopped run's do); a command that failed
        before keeping anything leaves no output, and an earlier output as it was."""
        if not self.opened:  # stopped before `open`: nothing was moved or made
            return
        if not ok and not kept:
            shutil.rmtree(self.out, ignore_errors=True)
            if self.earlier is not None:
                os.replace(self.earlier / "out", self.out)
            elif not self.made:  # an empty folder the user gave stays, empty
                self.out.mkdir()
        if self.earlier is not None:
            shutil.rmtree(self.earlier, ignore_errors=True)
            self.earlier = None

    def reserve(self, *names: str) -> list[Path]:
        """List ``names`` (relative paths) as this command's files; returns their paths."""
        self.files += [n for n in names if n not in self.files]
        write_json_atomic(self.out / MARKER, {"command": self.command, "files": self.files})
        return [self.out / n for n in names]


__all__ = ["MARKER", "StreamingOutput", "atomic_output_dir", "check_apart", "check_output_dir", "check_output_file",
           "check_run_dir", "foreign_files", "mark_run_dir", "read_marker", "write_atomic", "write_json_atomic"]
