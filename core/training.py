"""The training-run skeleton every videolm trainer shares (tokenizers, LM, fine-tuning, refiner, DiT).

A run folder holds ``checkpoints/last.ckpt`` and ``metrics.jsonl``; a rerun of the same command
resumes it exactly: a run killed at any moment and resumed ends with the same weights (bit for
bit on a CPU) and the same ``metrics.jsonl`` (its wall-clock fields aside) as one that was never
stopped. What makes that so:

- the data order is a function of the seed and the position in the run (`ResumableSampler`), and
  every random choice made while building an item (task draws, text dropout, crops) comes from a
  generator seeded by the item's place in that order (`seeded_item`), so neither prefetching nor
  DataLoader workers move anything;
- the checkpoint holds the weights, the optimizer, the steps done, the wall-clock time spent,
  every global random generator (torch, CUDA, numpy, Python) and the trainer's own running sums;
  it is written atomically after everything a step logs, and read back with ``weights_only=True``
  (tensors and plain values, never a pickle of code);
- on resume, ``metrics.jsonl`` is cut back to the checkpoint's step before anything is appended.

Subclasses of `RunModule` write ``training_step`` and the hooks `before_step`, `after_step`,
`finish`, `extra_state` and `load_extra_state`; `fit_run` builds the loader and the Trainer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import random
import shutil
import signal
import time
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from videolm.core import clock
from videolm.core.config import check_range, to_dict
from videolm.core.errors import ConfigError, UsageError
from videolm.core.models import shipped_models
from videolm.core.outputs import MARKER, check_apart, check_run_dir, mark_run_dir

CHECKPOINT = Path("checkpoints") / "last.ckpt"
METRICS = "metrics.jsonl"
WALL_CLOCK_FIELDS = ("minutes", "tokens_per_s", "clips_per_s", "items_per_s")  # differ between identical runs


# ------------------------------------------------------------------------------------ schedule


def lr_factor(step: int, cfg, elapsed_s: float = 0.0) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio` at the end of the budget. `cfg` is any
    training config with `warmup_steps`, `steps`, `max_minutes` and `min_lr_ratio`.

    The budget ends at `steps` or, if set, after `max_minutes` of training, whichever comes first,
    so a run cut by the clock still finishes its decay.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.max_minutes:
        progress = max(progress, elapsed_s / (60 * cfg.max_minutes))
    progress = min(1.0, progress)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_precision(cfg) -> str:
    """``cfg.precision`` for Lightning: ``auto`` is bf16-mixed on a GPU with bf16, else 32-true;
    ``auto-bf16`` also picks bf16-mixed on a CPU that multiplies bf16 in hardware."""
    if cfg.precision not in ("auto", "auto-bf16"):
        return cfg.precision
    gpu = cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cfg.precision == "auto-bf16" and cpu_has_native_bf16() else "32-true"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX, as Linux lists them in
    /proc/cpuinfo). There, bf16-mixed training runs about 1.4-2x faster than float32 (its matrix
    products ~5x: benchmarks/lm_train.py); elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


# what `precision` and `accelerator` may be: videolm's own choices, then Lightning's
PRECISIONS = ("auto", "auto-bf16", *typing.get_args(L.fabric.connector._PRECISION_INPUT_STR),
              *typing.get_args(L.fabric.connector._PRECISION_INPUT_STR_ALIAS))
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


@dataclass
class TrainArgs:
    """The training section every run shares (the tokenizers', the LM's, fine-tuning's, the
    refiner's and the DiT's configs extend it): budget, schedule, hardware, checkpoints."""

    steps: int = field(default=10_000, metadata={"flags": ["--steps"]})  # optimizer steps
    max_minutes: float | None = field(default=None, metadata={"flags": ["--max-minutes"]})  # wall-clock budget,
    #   kept across resumes; training stops at whichever limit comes first
    batch_size: int = field(default=16, metadata={"flags": ["--batch-size"]})  # items per step (and process)
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 200  # linear warmup
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # gradient norm clip (0: none)
    precision: str = "auto"  # auto: bf16-mixed on a GPU with bf16, else 32-true; or any Lightning precision
    accelerator: str = "auto"  # cpu, gpu or auto
    log_every: int = 50  # a metrics.jsonl line every N steps
    checkpoint_every: int = 200  # checkpoints/last.ckpt (what a rerun resumes from) every N steps
    threads: int | None = field(default=None, metadata={"flags": ["--threads"]})  # torch CPU threads per process
    workers: int = 0  # DataLoader workers
    seed: int = 0

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"accelerator={self.accelerator!r}: choose one of {', '.join(ACCELERATORS)}")
        check_range(self, 1, None, "steps", "batch_size", "log_every", "checkpoint_every", "threads")
        check_range(self, 0, None, "warmup_steps", "weight_decay", "grad_clip", "workers", "lr")
        check_range(self, 0, 2**63 - 1, "seed")
        check_range(self, 0, None, "max_minutes", low_open=True)
        check_range(self, 0, 1, "min_lr_ratio")


# ---------------------------------------------------------------------------------------- data


def item_seed(seed: int, position: int, stream: int = 0) -> int:
    """The seed (a 63-bit integer) of the item at ``position`` of a run seeded ``seed``; ``stream``
    keeps other uses of the pair (the epochs' permutations) apart."""
    state = np.random.SeedSequence([seed, stream, position]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


class ResumableSampler(Sampler):
    """An endless stream of keys ``(index, item_seed)`` over a dataset of ``n`` items: one
    permutation per epoch, drawn from ``(seed, epoch)``. Positions are counted from the start of
    the run, so a resumed run sets `start_batch` and carries on with the very keys it would have
    drawn. Under several processes, rank ``r`` of ``world`` takes the r-th slice of every global
    batch.

    ``groups = (sizes, window)`` orders data kept in shards, such as a clip pack streamed through a
    small cache (`videolm.data.packs.ClipPack.shard_order`): items come in runs of ``sizes[j]`` (group j
    holds the next ``sizes[j]`` indices), and each epoch visits the groups in a shuffled order,
    ``window`` groups at a time, items shuffled within each window, so a group is read in one
    stretch per epoch (as webdataset's shard shuffle and buffer do)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 groups: tuple[Sequence[int], int] | None = None):
        if n < 1:
            raise ConfigError("the training data holds no items")
        if groups is not None and (sum(groups[0]) != n or groups[1] < 1):
            raise ValueError(f"groups of {sum(groups[0])} items in windows of {groups[1]} for {n} items")
        self.n, self.batch_size, self.seed, self.shuffle, self.groups = n, batch_size, seed, shuffle, groups
        self.start_batch, self.rank, self.world = 0, 0, 1
        self._epoch, self._perm = -1, None

    def _index(self, position: int) -> int:
        epoch, k = divmod(position, self.n)
        if not self.shuffle:
            return k
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(item_seed(self.seed, epoch, stream=1))
            self._epoch, self._perm = epoch, self._permutation(g)
        return self._perm[k]

    def _permutation(self, g: torch.Generator) -> list[int]:
        if self.groups is None:
            return torch.randperm(self.n, generator=g).tolist()
        sizes, window = self.groups
        starts = np.cumsum([0, *sizes])
        order = torch.randperm(len(sizes), generator=g).tolist()
        perm = []
        for w in range(0, len(order), window):
            items = torch.cat([torch.arange(starts[j], starts[j + 1]) for j in order[w:w + window]])
            perm += items[torch.randperm(len(items), generator=g)].tolist()
        return perm

    def __iter__(self):
        batch = self.start_batch
        while True:
            first = (batch * self.world + self.rank) * self.batch_size
            for position in range(first, first + self.batch_size):
                yield self._index(position), item_seed(self.seed, position)
            batch += 1


def seeded_item(dataset: Dataset, key):
    """``dataset[index]`` for a key ``(index, seed)``, with torch's global generator seeded by
    ``seed`` while the item is made (and left as it was after)."""
    index, seed = key if isinstance(key, tuple) else (key, None)
    if seed is None:
        return dataset[index]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dataset[index]


class SeededItems(Dataset):
    """A dataset read by `ResumableSampler` keys: each item made under its own seed. A dataset
    that handles keys itself (``takes_keys = True``, e.g. `videolm.lm.data.TaskSequences`) is
    passed the keys unchanged, a batch at a time."""

    def __init__(self, inner: Dataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key):
        if getattr(self.inner, "takes_keys", False):
            return self.inner[key]
        return seeded_item(self.inner, key)

    def __getitems__(self, keys: Sequence):
        if getattr(self.inner, "takes_keys", False) and hasattr(self.inner, "__getitems__"):
            return self.inner.__getitems__(list(keys))
        return [self[key] for key in keys]


# ------------------------------------------------------------------------------- random state


def rng_state() -> dict:
    """Every global random generator's state, as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------------------------ metrics


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, each with a ``step``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a kill
                continue
        return rows

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def truncate(self, step: int) -> None:
        """Keep the lines of steps up to ``step`` (what the checkpoint there had written)."""
        if not self.path.is_file():
            return
        kept = [r for r in self.rows() if isinstance(r, dict) and r.get("step", 0) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------- module


class RunModule(L.LightningModule):
    """A Lightning module with videolm's run mechanics: the step and wall-clock budget (kept across
    resumes), `after_step` logging, checkpoints every ``cfg.checkpoint_every`` steps and at the end
    (written after the step's logging, atomically), and exact resume. ``cfg`` needs ``steps``,
    ``max_minutes``, ``checkpoint_every`` and ``seed``."""

    def __init__(self, cfg, out: str | Path):
        super().__init__()
        self.cfg, self.out = cfg, Path(out)
        self.metrics = MetricsLog(self.out / METRICS)
        self.steps_done = 0  # optimizer steps taken, over every run of this folder
        self.elapsed = 0.0  # wall-clock seconds of training, over every run of this folder
        self.sampler: ResumableSampler | None = None
        self._rng = None
        self._run_start = self._elapsed_before = 0.0
        self.started: float | None = None  # when the command began (`videolm.core.clock`): budgets count set-up too
        self.finish_cost = 0.0  # seconds finish()'s work took when it last ran (subclasses measure it)
        self.checkpoint_cost = 0.0  # seconds the last checkpoint took to write

    # -- what subclasses write

    def before_step(self, step: int) -> None:
        """Before the step that takes ``steps_done`` from ``step`` to ``step + 1`` (e.g. the lr)."""

    def after_step(self, step: int) -> None:
        """After step ``step`` (1-based): logging, validation, samples. A checkpoint follows."""

    def finish(self) -> None:
        """At the end of training, before the final checkpoint: the last log line, the export."""

    def extra_state(self) -> dict:
        """Running state of the subclass to keep in the checkpoint (tensors and plain values)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # -- Lightning hooks

    def setup(self, stage: str) -> None:
        if self.sampler is not None:
            self.sampler.rank, self.sampler.world = self.global_rank, self.trainer.world_size

    def on_train_start(self) -> None:
        self._run_start = self.started if self.started is not None else time.perf_counter()
        self._elapsed_before = self.elapsed
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None

    def elapsed_now(self) -> float:
        """Wall-clock seconds of training so far (rank 0's when the schedule follows the clock)."""
        elapsed = self._elapsed_before + time.perf_counter() - self._run_start
        return self.shared(elapsed) if self.cfg.max_minutes else elapsed

    def budget_spent(self) -> bool:
        """Whether the steps are done or the minutes spent. The clock runs from the command's start
        (set-up, data loading and validation included), and stops early by what the run's end took
        last time (`finish_cost` and `checkpoint_cost`), so the whole command ends close to the
        budget; a step that starts within the budget is taken, so even a tiny budget trains one."""
        minutes = self.cfg.max_minutes
        end_cost = self.finish_cost + self.checkpoint_cost
        return self.steps_done >= self.cfg.steps or bool(
            minutes and self.shared(self.elapsed + end_cost) >= 60 * minutes)

    def shared(self, value: float) -> float:
        """Rank 0's ``value`` under several processes, so that all agree (on the lr, on stopping)."""
        if self.trainer.world_size > 1:
            return float(self.trainer.strategy.broadcast(value, src=0))
        return value

    def on_train_batch_start(self, batch, batch_idx):
        if self.budget_spent():
            self.trainer.should_stop = True
            return -1
        self.before_step(self.steps_done)
        return None

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.steps_done += 1
        self.elapsed = self.elapsed_now()
        self.after_step(self.steps_done)
        if self.steps_done % self.cfg.checkpoint_every == 0:
            self.save_resume_checkpoint()

    def on_train_end(self) -> None:
        self.elapsed = self.elapsed_now()
        self.finish()
        self.save_resume_checkpoint()

    def save_resume_checkpoint(self) -> None:
        start = time.perf_counter()
        self._save_checkpoint()
        self.checkpoint_cost = time.perf_counter() - start

    def _save_checkpoint(self) -> None:
        path = self.out / CHECKPOINT
        tmp = path.with_name(f".{path.name}.tmp")
        if self.trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.trainer.save_checkpoint(tmp)
        if self.trainer.is_global_zero:
            os.replace(tmp, path)
        self.trainer.strategy.barrier()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["videolm"] = {"steps": self.steps_done, "elapsed": self.elapsed, "rng": rng_state(),
                                 "extra": self.extra_state(), "end_costs": [self.finish_cost, self.checkpoint_cost]}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("videolm")
        if not isinstance(state, dict) or "steps" not in state:
            raise UsageError(f"{self.out / CHECKPOINT}: not a checkpoint of this videolm version; move it away "
                             "to start the run afresh")
        self.steps_done, self.elapsed = int(state["steps"]), float(state["elapsed"])
        self.finish_cost, self.checkpoint_cost = (float(v) for v in state.get("end_costs", (0.0, 0.0)))
        self._rng = state["rng"]
        if self.sampler is not None:
            self.sampler.start_batch = self.steps_done
        self.load_extra_state(state.get("extra", {}))
        if self.trainer.is_global_zero:
            self.metrics.truncate(self.steps_done)


# ---------------------------------------------------------------------------------------- fit


def quiet_training() -> None:
    """Lightning's and the libraries' chatter off: videolm reports through metrics.jsonl."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for noise in (".*does not have many workers", ".*LeafSpec.*is deprecated", ".*on_train_batch_start.*-1",
                  ".*dirpath has changed", ".*resuming from a checkpoint that ended before the epoch ended",
                  ".*Using ModelCheckpoint with manual optimization", ".*infinite.*"):
        warnings.filterwarnings("ignore", message=noise)
    try:  # vector-quantize-pytorch logs a k-means warning through loguru on every small first batch
        from loguru import logger

        logger.disable("vector_quantize_pytorch")
    except ImportError:
        pass


def read_checkpoint(path: Path) -> None:
    """Fail with one line naming ``path`` unless it reads as tensors and plain values."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many kinds here; none may reach the user raw)
        text = str(e)
        if "global" in text.lower():  # an object of some module: code that unpickling would run
            first = "it holds objects other than tensors and plain values, which videolm never loads"
        elif isinstance(e, (pickle.UnpicklingError, EOFError, RuntimeError)):
            first = "truncated, or not a checkpoint"
        else:
            first = (text.strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"{path}: cannot resume from it ({first}); move it away to start the run afresh") from None
    if not isinstance(state, dict) or "videolm" not in state:
        raise UsageError(f"{path}: not a videolm checkpoint; move it away to start the run afresh")


# settings a rerun may change and still resume the run: its length, budget, hardware and logging
# (a section's name: all of it), and what only evaluation, validation and samples read
RESUME_MAY_CHANGE = ("out", "paths", "train.steps", "train.max_minutes", "train.threads", "train.workers",
                     "train.log_every", "train.checkpoint_every", "train.val_every", "train.sample_every",
                     "train.val_sequences", "train.val_clips", "train.precision", "train.accelerator", "train.devices",
                     "train.num_nodes", "train.strategy", "data.val_shards", "data.encode_batch", "eval", "samples")


def _flat(d: dict) -> dict:
    """A run's settings one level down: a section's as ``section.key``; deeper values whole."""
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def check_resume(out: Path, run_config: dict) -> None:
    """A rerun into a run folder with a checkpoint resumes that run, so it must be that run: refuse,
    before anything changes, settings other than those a resume may change (`RESUME_MAY_CHANGE`),
    naming them. A setting the folder's run.json does not record (an older version's) passes."""
    if not (out / CHECKPOINT).exists():
        return
    try:
        before = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(before, dict):
        return
    was, now = _flat(before), _flat(json.loads(json.dumps(run_config)))
    missing = object()

    def differs(key: str, other: dict, value) -> bool:
        if any(key == k or key.startswith(f"{k}.") for k in RESUME_MAY_CHANGE):
            return False
        if key in other:
            return not _same_setting(other[key], value)
        return key.split(".")[0] in other  # its section was empty there

    changed = [k for k, v in now.items() if differs(k, was, v)]
    changed += [k for k, v in was.items() if k not in now and differs(k, now, v)]
    if changed:
        shown = "; ".join(f"{k}: {was.get(k, missing)!r} there, {now.get(k, missing)!r} now"
                          for k in changed[:3]).replace(repr(missing), "unset")
        more = f"; and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise UsageError(f"--out {out}: holds a run with other settings ({shown}{more}); rerun with its own "
                         "settings to resume it, or choose a new --out")


def _same_setting(a, b) -> bool:
    """Two values of one setting in run.json mean the same run: equal, a flag's list of one against
    a config's single value, or two spellings (relative, absolute, with ``..``) of one existing path."""
    one = lambda v: v[0] if isinstance(v, list) and len(v) == 1 else v  # noqa: E731
    a, b = one(a), one(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b))
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b:
        try:
            return os.path.samefile(a, b)
        except (OSError, ValueError):
            return False
    return False


def check_hardware(cfg) -> None:
    """A GPU asked for where there is none: one line, before any work."""
    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(f"--train.accelerator {cfg.accelerator}: no GPU that torch can use here "
                         "(use cpu or auto)")
    if cfg.accelerator == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--train.accelerator mps: no Apple GPU here (use cpu or auto)")


def _named_paths(value) -> list[str]:
    """Every setting's text that names an existing file or folder or a shipped model (data,
    tokenizers, models to start from): a run's inputs, which its folder may neither be, hold nor
    lie in (`check_apart`)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _named_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _named_paths(v)]
    named = isinstance(value, str) and value and (os.path.exists(value) or value in shipped_models())
    return [value] if named else []


@contextlib.contextmanager
def starting_run(cfg, command: str):
    """A fit command's run folder (``cfg.out``) checked before any work: new, empty, or this
    command's own run with the same settings (a rerun resumes it); the hardware asked for exists.
    A run that fails before its first checkpoint leaves nothing behind, not even the caches it
    began to fill (pairs, latents), so a corrected rerun starts cleanly; one stopped (Ctrl-C, kill)
    keeps what it cached, in a folder marked as its run's, for the rerun that resumes it."""
    settings = to_dict(cfg)
    check_apart(cfg.out, _named_paths({k: v for k, v in settings.items() if k != "out"}))
    out = check_run_dir(cfg.out, command)
    check_resume(out, {"entry": command, **settings})
    check_hardware(cfg.train)
    fresh = "made" if not out.exists() else "empty" if not any(out.iterdir()) else None
    try:
        yield cfg
    except KeyboardInterrupt:
        if fresh and out.is_dir() and any(p.name != MARKER for p in out.iterdir()):
            mark_run_dir(out, command)
        else:
            _drop_unstarted(out, fresh)
        raise
    except BaseException:
        _drop_unstarted(out, fresh)
        raise


def _drop_unstarted(out: Path, fresh: str | None) -> None:
    """A run that this call began and that failed before its first checkpoint leaves nothing behind
    (there is nothing to resume): its folder is emptied, and removed if this call made it."""
    if fresh and out.is_dir() and not (out / CHECKPOINT).exists():
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # not cut short
        try:
            for entry in out.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            if fresh == "made":
                with contextlib.suppress(OSError):
                    out.rmdir()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def fit_run(module: RunModule, data: Dataset, cfg, command: str, collate_fn=None, *, devices=1, num_nodes: int = 1,
            strategy="auto", precision: str = "32-true", grad_clip: float | None = None,
            run_config: dict | None = None) -> L.Trainer:
    """Train ``module`` on ``data`` (read through a `ResumableSampler` in batches of
    ``cfg.batch_size``), resuming from OUT/checkpoints/last.ckpt if there is one. The wall-clock
    budget runs from the command's start (`videolm.core.clock`). Returns the Trainer
    (``is_global_zero`` tells the main process)."""
    module.started = clock.started()
    out = module.out
    if len(data) < cfg.batch_size:
        raise ConfigError(f"train.batch_size={cfg.batch_size} is more than the {len(data)} training items")
    quiet_training()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    last = out / CHECKPOINT
    if last.exists():
        read_checkpoint(last)  # a bad checkpoint stops the run before anything in the folder changes
    if run_config is not None:
        check_resume(out, run_config)
    check_hardware(cfg)
    main = os.environ.get("LOCAL_RANK", "0") == "0"  # the main process of each machine (DDP starts the others)
    fresh = None  # None: an earlier run's folder; "made": made by this call; "empty": an empty folder it fills
    if main and not out.exists():
        fresh = "made"
    elif main and not any(out.iterdir()):
        fresh = "empty"
    if main:
        mark_run_dir(out, command)
        if not last.exists():
            module.metrics.clear()  # a fresh run: the lines of an earlier, abandoned one go
        if run_config is not None:
            (out / "run.json").write_text(json.dumps(run_config, indent=2) + "\n")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module.sampler = ResumableSampler(len(data), cfg.batch_size, seed=cfg.seed, groups=getattr(data, "shard_order", None))
    loader = DataLoader(SeededItems(data), batch_size=cfg.batch_size, sampler=module.sampler,
                        num_workers=cfg.workers, collate_fn=collate_fn, drop_last=True,
                        persistent_workers=cfg.workers > 0,
                        # workers that decode media start from a fresh process, not a fork of this one: a
                        # lock held at the fork (FFmpeg's, in this suite under load) left a worker waiting forever
                        multiprocessing_context="forkserver" if cfg.workers and getattr(data, "decodes_media", False)
                        else None,
                        generator=torch.Generator().manual_seed(cfg.seed))  # never the global generator
    trainer = L.Trainer(
        max_epochs=-1, max_steps=-1, accelerator=cfg.accelerator, devices=devices, num_nodes=num_nodes,
        strategy=strategy, precision=precision, gradient_clip_val=grad_clip or None,
        gradient_clip_algorithm="norm", logger=False, enable_checkpointing=False,
        enable_progress_bar=os.isatty(2), enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, use_distributed_sampler=False, default_root_dir=out,
    )
    try:
        trainer.fit(module, loader, ckpt_path=str(last) if last.exists() else None, weights_only=True)
    except SystemExit:  # Lightning turns Ctrl-C into exit(1); say it was an interruption
        _drop_unstarted(out, fresh)
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    except BaseException:
        _drop_unstarted(out, fresh)
        raise
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # gloo's threads torn down now, not by a racing exit
    return trainer


__all__ = ["ACCELERATORS", "CHECKPOINT", "METRICS", "PRECISIONS", "RESUME_MAY_CHANGE", "WALL_CLOCK_FIELDS", "MetricsLog",
           "ResumableSampler", "RunModule", "SeededItems", "TrainArgs", "check_hardware", "check_resume",
           "cpu_has_native_bf16", "fit_run", "item_seed", "lr_factor", "quiet_training", "read_checkpoint",
           "resolve_precision", "rng_state", "seeded_item", "set_rng_state", "starting_run"]
