"""`videolm lm fit`: the prefix LM trained on a task mixture, from token shards or tokenizing on the fly.

The trainer (`videolm.train.lm_module`) sees ids only; this module picks the data, turns clips into
sequences through the tasks named in the config, sizes the model to the vocabulary, and hands
the trainer a function that writes sample outputs (generated with the engine, decoded through
the tokenizers) every ``train.sample_every`` steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from videolm.core.config import check_clip_numbers, check_range, to_dict
from videolm.core.errors import ConfigError
from videolm.core.limits import memory_bytes
from videolm.core.models import LM_DIR, resolve_model
from videolm.core.outputs import write_json_atomic as write_json
from videolm.data.media import write_audio, write_grid, write_video
from videolm.data.shards import TokenShards
from videolm.data.sources import ClipSource
from videolm.lm.data import Buckets, TaskSequences
from videolm.lm.model import LMConfig, VideoLM, load_videolm
from videolm.lm.positions import positions_of, set_positions
from videolm.tasks.base import Task, build_tasks, clip_length, tokens_per_frame
from videolm.tasks.generation import generate_codes
from videolm.tasks.tokenizing import ClipTokenizer, LazySamples
from videolm.tokenizers.geometry import SPACE_DOWN, parse_clip_size, size_name
from videolm.tokenizers.vocab import Vocabulary
from videolm.train.lm_module import LMTrainConfig, fit


@dataclass
class LMDataConfig:
    shards: str | list[str] | None = field(default=None, metadata={"flags": ["--shards"], "excludes": ["source"]})  # a
    #   folder written by `videolm tokenize`, or several (same tokenizers; each of one clip size; repeat the flag)
    source: str | None = field(default=None, metadata={"excludes": ["shards"]})  # or tokenize on the fly: "shapes", a
    #   folder of videos or a clip pack (on the command line it replaces the config's shards, and --shards its source)
    num: int = 100_000  # on the fly: Shapes training clips (seeds 0 .. num-1) or a folder's first clips
    frames: int = 17  # on the fly: clip size
    height: int = 64
    width: int = 64
    buckets: dict[str, float] = field(default_factory=dict)  # the mix of clip sizes and durations: "HxWxN" (or
    #   "HxW" at data.frames) -> weight. With shards, each folder joins the bucket of its clips' size; on the fly,
    #   each bucket is clips of its size (num each). Empty: the shards in proportion to their clips, or one size
    model: str | None = None  # tokenizers (to tokenize on the fly and decode samples); None: the shards'
    tasks: dict[str, float] = field(default_factory=lambda: {"t2v": 1.0, "v2a": 1.0})  # name or module:Class -> weight
    text_dropout: float = 0.1  # classifier-free guidance: the text is emptied this often in training
    val_shards: str | list[str] | None = None  # held-out token shards (`videolm tokenize --split eval`):
    #                                            their loss is logged every train.val_every steps (repeat the flag for several)

    def __post_init__(self):
        if (self.shards is None) == (self.source is None):
            raise ConfigError("data: give exactly one of shards (token shards) or source (tokenize on the fly; "
                              "with --shards, pass --data.source null if the config has a source)")
        if not self.tasks:
            raise ConfigError("data.tasks: name at least one task")
        check_clip_numbers(self)
        check_range(self, 0, 1, "text_dropout")
        bad = {name: w for name, w in self.tasks.items() if not w >= 0}
        if bad or not sum(self.tasks.values()) > 0:
            raise ConfigError(f"data.tasks: weights must be >= 0 and not all 0 (got {bad or self.tasks})")
        self.sizes()  # checks the bucket names
        bad = {name: w for name, w in self.buckets.items() if not (w >= 0 and math.isfinite(w))}
        if bad or (self.buckets and not sum(self.buckets.values()) > 0):
            raise ConfigError(f"data.buckets: weights must be finite, >= 0 and not all 0 (got {bad or self.buckets})")

    def sizes(self) -> dict[tuple[int, int, int], float]:
        """(height, width, frames) -> weight of each bucket."""
        out = {}
        for name, weight in self.buckets.items():
            try:
                key = parse_clip_size(name, self.frames, "data.buckets:")
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if key in out:
                raise ConfigError(f"data.buckets: {name!r} names the size {size_name(*key)} twice")
            out[key] = weight
        return out


@dataclass
class SampleConfig:
    """Sample outputs written every ``train.sample_every`` steps, for the first clips of the data."""

    clips: int = 2  # per task
    cfg_scale: float = 3.0  # classifier-free guidance for tasks with text
    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0

    def __post_init__(self):
        check_range(self, 0, None, "clips", "cfg_scale", "temperature", "seed")
        check_range(self, 1, None, "top_k")


@dataclass
class LMFitConfig:
    preset: str = "tiny"  # the model's size (a preset of LMConfig)
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the LMConfig preset's fields
    data: LMDataConfig = field(default_factory=lambda: LMDataConfig(shards="runs/tokens/shapes-64"))
    train: LMTrainConfig = field(default_factory=LMTrainConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)
    out: str = "runs/lm"  # the run folder (a rerun resumes it)
    init: str | None = None  # start from these weights (a model folder: save_pretrained's, or a run's
    #                          model/); the preset and model overrides are then not used,
    #                          except model.positions, which switches it (e.g. to "grid")


def training_data(cfg: LMDataConfig):
    """The samples (shards, or clips tokenized on the fly) mixed over the size buckets, their
    vocabulary (holding the geometry tokens of every size) and the tokenizers' model folder."""
    sizes = cfg.sizes()
    if cfg.shards is not None:
        folders = _shard_folders(cfg.shards, "data.shards")
        vocab = Vocabulary.load(folders[0].folder)
        for f in folders:
            vocab.extend(Vocabulary.load(f.folder))
            vocab.add_geometry(*clip_size(f))
        model = cfg.model or folders[0].model
        if not sizes:
            return (folders[0] if len(folders) == 1 else ConcatDataset(folders)), vocab, model
        groups = {key: [f for f in folders if clip_size(f) == key] for key in sizes}
        stray = [f"{f.folder} ({size_name(*clip_size(f))})" for f in folders if clip_size(f) not in sizes]
        if stray:
            raise ConfigError(f"data.shards: {', '.join(stray)} fit no bucket of data.buckets "
                              f"({', '.join(cfg.buckets)})")
        empty = [size_name(*key) for key, group in groups.items() if not group and sizes[key] > 0]
        if empty:
            raise ConfigError(f"data.buckets: no shard folder holds clips of {', '.join(empty)}")
        parts = [(g[0] if len(g) == 1 else ConcatDataset(g)) for g in groups.values() if g]
        return Buckets(parts, [sizes[k] for k, g in groups.items() if g]), vocab, model

    tokenizer = ClipTokenizer(cfg.model or "shapes-64")
    parts = []
    for h, w, n in sizes or [(cfg.height, cfg.width, cfg.frames)]:
        tokenizer.vocab.add_geometry(h, w, n)
        source = ClipSource(data=cfg.source, num=cfg.num, frames=n, height=h, width=w)
        parts.append(LazySamples(source.dataset(), tokenizer))
    samples = Buckets(parts, list(sizes.values())) if sizes else parts[0]
    return samples, tokenizer.vocab, str(tokenizer.folder)


def clip_size(shards: TokenShards) -> tuple[int, int, int]:
    """(height, width, frames) of a shard folder's clips (its first clip's)."""
    first = shards[0]
    return int(first["height"]), int(first["width"]), clip_length(first)


def _shard_folders(shards: str | list[str], what: str) -> list[TokenShards]:
    """One shard folder or several, written by the same tokenizers."""
    folders = [TokenShards(f) for f in ([shards] if isinstance(shards, str) else shards)]
    if len({f.model for f in folders}) > 1:
        raise ConfigError(f"{what}: the folders were written by different tokenizers "
                          f"({', '.join(sorted(str(f.model) for f in folders))})")
    return folders


def held_out_data(cfg: LMDataConfig, vocab: Vocabulary, tasks, row_len: int) -> TaskSequences | None:
    """The held-out shards as sequences of the training mixture (no text dropout), or None.
    ``vocab``: the training data's, which must hold the held-out clips' sizes too."""
    if cfg.val_shards is None:
        return None
    folders = _shard_folders(cfg.val_shards, "data.val_shards")
    for f in folders:
        theirs = Vocabulary.load(f.folder)
        h, w, n = clip_size(f)
        if theirs.range("video") != vocab.range("video") or theirs.range("text") != vocab.range("text"):
            raise ConfigError(f"data.val_shards: {f.folder} was written with another vocabulary than the training data's")
        if (h, w) not in vocab.resolutions or n not in vocab.lengths:
            raise ConfigError(f"data.val_shards: {f.folder} holds {size_name(h, w, n)} clips, a size the training "
                              "data does not have")
    samples = folders[0] if len(folders) == 1 else ConcatDataset(folders)
    return TaskSequences(samples, tasks, list(cfg.tasks.values()), 0.0, row_len)


def build_model(cfg: LMFitConfig, vocab_size: int, vocab) -> VideoLM:
    """The preset, sized to the vocabulary (rounded up to a multiple of 64) unless set."""
    overrides = {"vocab_size": -(-vocab_size // 64) * 64, "pad_id": vocab["<pad>"], "bos_id": vocab["<bos>"],
                 "eos_id": vocab["<eos>"], **cfg.model}
    lm = LMConfig.from_name(cfg.preset, **overrides)
    need, have = 16 * lm.num_params(), memory_bytes()  # fp32 weights, gradients and AdamW's two moments
    on_cpu = cfg.train.accelerator == "cpu" or not torch.cuda.is_available()
    if on_cpu and have and need > have:
        raise ConfigError(f"model: {lm.num_params() / 1e9:.1f} B parameters need about {need / 2**30:.0f} GiB to train, "
                          f"more than this machine's {have / 2**30:.0f} GiB (check the preset and model sizes)")
    if lm.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={lm.vocab_size} is smaller than the vocabulary ({vocab_size} ids)")
    if lm.max_seq_len < cfg.train.row_len:
        raise ConfigError(f"train.row_len={cfg.train.row_len} exceeds the model's max_seq_len={lm.max_seq_len}")
    return VideoLM.from_lm_config(lm)


def check_grid_tokens(sample: dict) -> None:
    """Grid positions lay each latent frame out as one ``H/8 x W/8`` map; refuse clips whose video
    tokenizer lays frames out otherwise (``vqvae2``'s two maps)."""
    h, w = int(sample["height"]), int(sample["width"])
    gh, gw = h // SPACE_DOWN, w // SPACE_DOWN
    if tokens_per_frame(sample) != gh * gw:
        raise ConfigError(f"model.positions: grid positions need one {gh}x{gw} map of tokens per latent frame at "
                          f"{h}x{w}; these clips have {tokens_per_frame(sample)} (a vqvae2 tokenizer?). "
                          "Use positions: sequence")


def warm_start(folder: str, vocab, row_len: int, positions: str | None = None) -> VideoLM:
    """The model saved in ``folder``, checked against the data's vocabulary: a second stage of
    training with a fresh schedule (the first stage's optimizer state is not carried over).
    ``positions`` ("sequence" or "grid"), where given, switches the model to those positions."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ConfigError(f"init: {folder} is not a model folder (no config.json)")
    if (path / "vocab.json").is_file() and not vocab.extends(Vocabulary.load(path)):
        raise ConfigError(f"init: {folder} was trained with another vocabulary than the data's (the data's "
                          "must hold every token of it at the same id)")
    model = load_videolm(path)
    size = model.config.vocab_size
    if size < len(vocab) or model.config.pad_token_id != vocab["<pad>"]:
        raise ConfigError(f"init: {folder} has {size} ids; the data needs {len(vocab)} with <pad>={vocab['<pad>']}")
    if model.config.max_position_embeddings < row_len:
        raise ConfigError(f"train.row_len={row_len} exceeds the model's max_seq_len="
                          f"{model.config.max_position_embeddings}")
    if positions is not None and positions != positions_of(model.config):
        set_positions(model, positions)
    return model.float().train()  # float32 master weights (a bundle stores float16); from_pretrained gives eval mode


def run_fit(cfg: LMFitConfig):
    """Train as ``cfg`` says; returns OUT/model (None on the extra processes of a multi-process run)."""
    samples, vocab, model_dir = training_data(cfg.data)
    tasks = build_tasks(list(cfg.data.tasks), vocab)
    data = TaskSequences(samples, tasks, list(cfg.data.tasks.values()), cfg.data.text_dropout, cfg.train.row_len)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, len(vocab), vocab) if cfg.init is None else warm_start(
        cfg.init, vocab, cfg.train.row_len, cfg.model.get("positions"))
    if positions_of(model.config) == "grid":
        check_grid_tokens(samples[0])
    sample = None
    if cfg.train.sample_every:
        sample = SampleWriter(tasks, samples, model_dir, Path(cfg.out) / "samples", cfg.samples)
    held_out = held_out_data(cfg.data, vocab, tasks, cfg.train.row_len)
    out = fit(model, cfg.train, data, cfg.out, [t.name for t in tasks], vocab=vocab, pad_id=vocab["<pad>"],
              sample=sample, run_config={"entry": "lm fit", **to_dict(cfg)}, held_out=held_out)
    if out is not None:  # the sizes and lengths the model was trained on, for `lm bundle` and `generate`
        write_json(Path(out) / "clip.json", trained_sizes(cfg.data, vocab))
    return out


def trained_sizes(cfg: LMDataConfig, vocab: Vocabulary, fps: int = 8) -> dict:
    """``clip.json`` of a trained LM: the clip it makes by default (the largest-weight bucket's size)
    and every size and length it was trained on."""
    sizes = cfg.sizes() or {(cfg.height, cfg.width, cfg.frames): 1.0}
    if cfg.shards is not None and not cfg.buckets:
        sizes = {}
        for f in _shard_folders(cfg.shards, "data.shards"):
            sizes[clip_size(f)] = sizes.get(clip_size(f), 0) + len(f)
    h, w, n = max(sizes, key=lambda k: (sizes[k], k == (64, 64, 17)))
    trained = [list(k) for k, weight in sizes.items() if weight > 0]
    return {"frames": n, "height": h, "width": w, "fps": fps, "sizes": trained}


class SampleWriter:
    """``(model, step)`` -> for each task, outputs generated for the first clips it accepts, decoded
    and written beside the truth: video as ``step_NNNNNN_TASK.png`` (truth above, generated below)
    and ``.gif`` (truth | generated), audio as ``.wav`` (generated, then truth)."""

    def __init__(self, tasks: list[Task], samples, model_dir: str | None, out: Path, cfg: SampleConfig):
        self.tasks, self.out, self.cfg = tasks, Path(out), cfg
        self.model_dir = model_dir
        self._tokenizer = None
        self.prompts = {t.name: _first_accepted(t, samples, cfg.clips) for t in tasks}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.model_dir is None:
                raise ConfigError("samples need the tokenizers: set data.model to a model folder")
            self._tokenizer = ClipTokenizer(self.model_dir)
        return self._tokenizer

    def __call__(self, model: VideoLM, step: int) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for task in self.tasks:
            items = self.prompts[task.name]
            if items:
                codes = self.generate(model, task, items)
                self.write(task, items, codes, self.out / f"step_{step:06d}_{task.name}")

    def generate(self, model: VideoLM, task: Task, items: list[dict]) -> list[torch.Tensor]:
        """Each item's generated output as local codes of the task's output shape."""
        return generate_codes(model, task, items, cfg_scale=self.cfg.cfg_scale, temperature=self.cfg.temperature,
                              top_k=self.cfg.top_k, generator=self.cfg.seed)

    def write(self, task: Task, items: list[dict], codes: list[torch.Tensor], stem: Path) -> None:
        tok = self.tokenizer
        truth = [task.to_media(task.target_codes(item), item, tok) for item in items]
        made = [task.to_media(c, item, tok) for c, item in zip(codes, items)]
        if task.output == "video":
            truth_v, made_v = np.stack([m.video for m in truth]), np.stack([m.video for m in made])  # (B, T, H, W, 3)
            write_grid(stem.with_suffix(".png"), np.concatenate([truth_v, made_v]))
            write_video(stem.with_suffix(".gif"), np.concatenate([truth_v[0], made_v[0]], axis=2), fps=8)
        else:
            write_audio(stem.with_suffix(".wav"), np.concatenate([made[0].audio, truth[0].audio]))




def bundle_lm(lm: str | Path, out: str | Path, dtype: str = "float16", clip: dict | None = None,
              guidance_scale: float = 4.0) -> dict:
    """Put a trained LM (``RUN/model``) into a model folder as ``OUT/lm/`` (weights stored as
    ``dtype``; loaded back as float32), with its vocabulary, the clip size it makes and its default
    classifier-free guidance for tasks with text (in ``generation_config.json``, the one place every
    command reads it from). The LM's vocabulary must lay out text, video and audio exactly as the
    folder's tokenizers do."""
    lm, out = Path(lm), resolve_model(out)
    if not (lm / "config.json").is_file():
        raise ConfigError(f"--lm {lm}: not a trained LM folder (no config.json); give RUN/model")
    theirs, ours = Vocabulary.load(lm), Vocabulary.load(out)
    for block in ("text", "video", "audio"):
        if theirs.range(block) != ours.range(block):
            raise ConfigError(f"--lm {lm}: its vocabulary places {block} ids at {theirs.range(block)}, the folder's "
                              f"tokenizers at {ours.range(block)}; train the LM on shards from this folder")
    model = load_videolm(lm)
    target = out / LM_DIR
    target.mkdir(parents=True, exist_ok=True)
    model.generation_config.guidance_scale = guidance_scale
    model.to(getattr(torch, dtype)).save_pretrained(target)
    theirs.save(target)
    if clip is None and (lm / "clip.json").is_file():  # written by `lm fit`: the sizes it trained on
        clip = json.loads((lm / "clip.json").read_text())
    write_json(target / "clip.json", clip or {"frames": 17, "height": 64, "width": 64, "fps": 8})
    compute = training_compute(lm.parent)
    if compute is not None:
        (target / "training.json").write_text(json.dumps(compute, indent=2) + "\n")
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    return {"folder": str(target), "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "tasks": theirs.tasks, "lm_mb": round(size, 2)}


def training_compute(run: Path) -> dict | None:
    """Steps, minutes, threads and core-hours of the run folder a model was exported from (its
    metrics.jsonl and run.json), or None when those are not there. A run that started from
    another model's weights (``init``) adds that model's compute, when it can be found (its run
    folder, or a ``training.json`` beside it), and lists both under ``stages``."""
    metrics, config = run / "metrics.jsonl", run / "run.json"
    if not metrics.is_file() or not config.is_file():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "minutes" in r]
    if not rows:
        return None
    saved = json.loads(config.read_text())
    train = saved.get("train", {})
    threads = train.get("threads") or torch.get_num_threads()
    device = "gpu" if train.get("accelerator") == "gpu" else "cpu"
    hours = rows[-1]["minutes"] / 60
    unit = "core_hours" if device == "cpu" else "gpu_hours"
    this = {"steps": rows[-1]["step"], "minutes": round(rows[-1]["minutes"], 1), "device": device,
            "threads": threads, unit: round(hours * (threads if device == "cpu" else 1), 2)}
    before = _init_compute(saved.get("init"), run)
    if before is None:
        return this
    stages = before.pop("stages", [before]) + [this]
    total = {"steps": sum(s["steps"] for s in stages), "minutes": round(sum(s["minutes"] for s in stages), 1)}
    for key in ("core_hours", "gpu_hours"):
        if any(key in s for s in stages):
            total[key] = round(sum(s.get(key, 0.0) for s in stages), 2)
    return {**total, "stages": stages}


def _init_compute(init: str | None, run: Path) -> dict | None:
    """The training compute of the model a run started from, or None."""
    if not init:
        return None
    for folder in (Path(init), run.parent / init):
        if (folder / "training.json").is_file():
            return json.loads((folder / "training.json").read_text())
        if folder.is_dir() and folder.parent != run:  # a run's model/: that run's compute (never this run's own)
            found = training_compute(folder.parent)
            if found is not None:
                return found
    return None


def _first_accepted(task: Task, samples, num: int) -> list[dict]:
    found = []
    for i in range(min(len(samples), 64)):
        if len(found) == num:
            break
        sample = samples[i]
        if task.accepts(sample):
            found.append(sample)
    return found


__all__ = ["LMDataConfig", "LMFitConfig", "SampleConfig", "SampleWriter", "build_model", "bundle_lm", "generate_codes",
           "run_fit",
           "training_data"]
