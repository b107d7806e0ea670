"""The `videolm` command line: one entry point over one module per command group.

Exit codes: 0 success, 2 bad usage or a bad input file, 1 a failure while working, 130
interrupted (Ctrl-C), 143 terminated (SIGTERM, as `kill` and job schedulers send; it stops the
command the way Ctrl-C does, so its outputs are cleaned up or kept whole, never left half-written). Every error is one line on stderr naming the problem; ``--debug`` (anywhere on the
line) shows the traceback too. A group's module (and with it torch and the models) is imported only
when one of its commands runs, so ``videolm --help`` answers at once.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import traceback
import warnings
from importlib.metadata import PackageNotFoundError, version

from videolm.cli.args import Command
from videolm.core import clock
from videolm.core.errors import UsageError, VideolmError

# group -> (the module whose COMMANDS (a group's subcommands) or COMMAND it runs, one line of help)
GROUPS: dict[str, tuple[str, str]] = {
    "data": ("videolm.cli.data", "make or index datasets (Shapes, a folder of your videos, example inputs)"),
    "tokenizer": ("videolm.cli.tokenizer", "train, evaluate and bundle the video and audio tokenizers"),
    "tokenize": ("videolm.cli.tokenize", "encode clips once into token shards for LM training"),
    "lm": ("videolm.cli.lm", "train the prefix language model, put it in a model folder"),
    "generate": ("videolm.cli.generate", "generate video (or audio) for a task from a trained model"),
    "tasks": ("videolm.cli.tasks", "list the tasks, what each needs and makes (or the words prompts are read in)"),
    "eval": ("videolm.cli.evaluate", "score a model's tasks on held-out Shapes clips, as one JSON object"),
    "probe": ("videolm.cli.probe", "train the probe classifier that evaluation uses"),
    "finetune": ("videolm.cli.finetune", "teach a trained model a new task (full or LoRA) from a YAML config"),
    "refiner": ("videolm.cli.refiner", "train, evaluate and apply the diffusion refiner"),
    "dit": ("videolm.cli.dit", "train the diffusion transformer baseline"),
    "compare": ("videolm.cli.compare", "the AR model against the DiT baseline on the same prompts and seeds"),
    "media": ("videolm.cli.media", "inspect and convert media files"),
}


def _help() -> str:
    width = max(map(len, GROUPS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in GROUPS.items())
    return ("usage: videolm [--version] [--debug] COMMAND ...\n\n"
            "videolm: an autoregressive, token-based video language model.\n\n"
            f"commands:\n{rows}\n\n"
            "`videolm COMMAND --help` describes a command and its flags.\n")


def _version() -> str:
    try:
        return f"videolm {version('videolm')}"
    except PackageNotFoundError:
        return "videolm (not installed)"


def command(path: str) -> tuple[str, Command]:
    """The command a name names ("generate", "data shapes"), with its program name."""
    group, _, sub = path.partition(" ")
    module = importlib.import_module(GROUPS[group][0])
    if hasattr(module, "COMMAND"):
        return f"videolm {group}", module.COMMAND
    return f"videolm {group} {sub}", module.COMMANDS[sub]


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_help(), end="")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(_version())
        return 0
    group = argv[0]
    if group not in GROUPS:
        raise UsageError(f"videolm: unknown command {group!r} (choose from {', '.join(GROUPS)}; see --help)")
    module = importlib.import_module(GROUPS[group][0])
    if hasattr(module, "COMMAND"):
        return module.COMMAND(f"videolm {group}", argv[1:])
    subs = module.COMMANDS
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        width = max(map(len, subs))
        rows = "\n".join(f"  {name:<{width}}  {cmd.help}" for name, cmd in subs.items())
        print(f"usage: videolm {group} {{{','.join(subs)}}} ...\n\n{GROUPS[group][1]}\n\ncommands:\n{rows}\n")
        return 0 if len(argv) > 1 else 2
    if argv[1] not in subs:
        raise UsageError(f"videolm {group}: unknown command {argv[1]!r} (choose from {', '.join(subs)}; see --help)")
    return subs[argv[1]](f"videolm {group} {argv[1]}", argv[2:])


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it unwinds as from Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    if os.getpid() != _MAIN_PID[0]:  # a forked worker: die as SIGTERM asks; its parent cleans up
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _MAIN_PID[1] = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise Terminated


_MAIN_PID: list = [0, False]  # the command's process, and whether a SIGTERM arrived


def _say_stopped() -> None:
    """One line for a stop, from the first process only: a data-parallel run's other processes
    (Lightning sets their ranks) stop with it and say nothing more."""
    if all(os.environ.get(k, "0") in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK")):
        print(f"videolm: {'terminated' if _MAIN_PID[1] else 'interrupted'}", file=sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"videolm: warning: {_one_line(message)}\n"


def _original(text: str) -> str:
    """The message of an error raised in a DataLoader worker, which torch wraps in its traceback
    ("Caught MediaError in DataLoader worker process 0. Original Traceback ... MediaError: msg")."""
    if not text.startswith("Caught ") or "Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def _first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to ``limit`` characters: never a library's
    many-line report."""
    lines = str(e).strip().splitlines()
    text = _one_line(lines[0]) if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # anywhere on the line
    if not debug:
        warnings.formatwarning = _one_line_warning
    _MAIN_PID[:] = [os.getpid(), False]
    handles = (threading.current_thread() is threading.main_thread()  # only there can Python take a signal
               and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN)  # ignored by who started us: it stays so
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if handles else None
    try:
        with clock.command():
            return dispatch(argv)
    except VideolmError as e:
        if debug:
            traceback.print_exc()
        text = _one_line(_original(str(e)))
        print(f"videolm: error: {text if len(text) <= 600 else text[:597] + '...'}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Lightning turns a stop into exit(1) and back: the flag says which it was
        _say_stopped()
        return 143 if _MAIN_PID[1] else 130
    except BrokenPipeError:  # the reader went away (`videolm tasks --words | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # the machine failed us while working: a full disk, a vanished folder
        if debug:
            traceback.print_exc()
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"videolm: error: {where}{e.strerror or _first_line(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        if debug:
            traceback.print_exc()
        print("videolm: error: out of memory (try a smaller --batch-size or --num-samples)", file=sys.stderr)
        return 1
    except Exception as e:  # a bug or an unforeseen failure: still one line unless --debug
        if _MAIN_PID[1]:  # a SIGTERM to the whole group: a DataLoader worker died of it first
            _say_stopped()
            return 143
        if debug:
            traceback.print_exc()
        print(f"videolm: error: unexpected {type(e).__name__}: {_first_line(e)} (rerun with --debug for details)",
              file=sys.stderr)
        return 1
    finally:
        if handles:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["GROUPS", "command", "dispatch", "main"]


if __name__ == "__main__":
    sys.exit(main())
