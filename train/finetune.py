"""`videolm finetune`: teach a pretrained model a task it has never seen, fully or with LoRA.

The new task is a `videolm.tasks.base.Task` subclass, built in or from the user's own module
(``task: my_module:MyTask``, with ``paths:`` naming folders to import it from). Its token is
appended to the model's vocabulary (`grow_vocab`: no existing id moves; the new embedding row
starts at the mean of the other task tokens' rows). Training data is made on the fly from Shapes
clips, with the built-in views and the task's own (`Task.views`), each field tokenized when a
drawn sequence first reads it (`LazySamples`); old tasks can be mixed in to keep the model from
forgetting them. The new task, and the old tasks named in ``eval.tasks``, are scored on held-out
clips before and after.

Run folder (``out``)::

    OUT/model/        a model folder `videolm generate --model OUT/model` loads: the base's
                      tokenizers and probe, lm/ with the fine-tuned weights (LoRA: merged) and the
                      grown vocabulary
    OUT/adapter/      LoRA only: the adapter alone (peft's adapter_config.json and
                      adapter_model.safetensors) and vocab.json; `load_adapter` puts it on the base
    OUT/report.json   before/after metrics, the new task's ceiling and copy baseline
    OUT/metrics.jsonl, OUT/checkpoints/  as `videolm lm fit` writes them (a rerun resumes); with
                      ``train.val_every``, the loss on the held-out evaluation clips too
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from videolm.core.config import check_range, to_dict
from videolm.core.errors import ConfigError, UsageError, VideolmError
from videolm.core.models import CUSTOM_CODE, CUSTOM_TASKS, LM_DIR, resolve_model
from videolm.core.saving import weights_file
from videolm.data.shapes_data import ShapesDataset
from videolm.evaluation.evaluate import evaluate_tasks
from videolm.evaluation.probe import load_probe
from videolm.lm.data import TaskSequences
from videolm.tasks.base import Task, task_class
from videolm.tasks.pipeline import Pipeline
from videolm.tasks.tokenizing import LazySamples
from videolm.tokenizers.vocab import Vocabulary
from videolm.train.lm_module import LMTrainConfig, fit

ADAPTER_DIR = "adapter"


@dataclass
class LoRASettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    train_task_token: bool = True  # also train the new task token's embedding row (peft's trainable tokens)

    def __post_init__(self):
        check_range(self, 1, None, "r")
        check_range(self, 0, None, "alpha", low_open=True)
        check_range(self, 0, 1, "dropout")
        if not self.target_modules:
            raise ConfigError("target_modules: name at least one module for LoRA")


@dataclass
class FinetuneData:
    num: int = 1024  # Shapes training clips (their fields tokenized as the sequences drawn read them)
    seed: int = 0
    weight: float = 1.0  # the new task's weight in the mixture
    mix: dict[str, float] = field(default_factory=dict)  # old tasks mixed in, with their weights
    # what the mixed-in old tasks learn: the true tokens (rehearsal), or the base model's own
    # distribution at each of their output tokens (distillation: the base's behaviour is the target)
    mix_targets: Literal["truth", "base"] = "truth"
    # project the new task's gradient off the mixed-in old tasks' whenever the two conflict, so that no
    # step raises their loss to first order (A-GEM, the old tasks of the batch as its memory; one more
    # gradient pass a step): none; model (one test over all the weights); tensor (each weight on its own)
    project: Literal["none", "model", "tensor"] = "none"
    text_dropout: float = 0.1
    batch_size: int = 16  # held-out clips tokenized at once (training clips are tokenized as they are drawn)

    def __post_init__(self):
        check_range(self, 1, None, "num", "batch_size")
        check_range(self, 0, None, "seed")
        check_range(self, 0, None, "weight", low_open=True)
        check_range(self, 0, 1, "text_dropout")
        bad = {name: w for name, w in self.mix.items() if not w >= 0}
        if bad:
            raise ConfigError(f"mix: weights must be >= 0 (got {bad})")


@dataclass
class FinetuneEval:
    num: int = 64  # held-out clips per task
    tasks: list[str] = field(default_factory=list)  # old tasks scored before and after
    metric: str = "color"  # the new task's headline metric: psnr, shape, color, size or direction
    batch_size: int = 16
    cfg_scale: float | None = None  # the base model's guidance (None: its generation_config.json)
    temperature: float = 1.0
    top_k: int | None = None

    def __post_init__(self):
        check_range(self, 1, None, "num", "batch_size", "top_k")
        check_range(self, 0, None, "cfg_scale", "temperature")


@dataclass
class FinetuneConfig:
    task: str = ""  # the new task: "module:Class" (or a built-in name)
    base: str = "shapes-64"  # a model folder or shipped name with an lm/
    paths: list[str] = field(default_factory=list)  # folders to import the task from
    method: Literal["full", "lora"] = "lora"
    freeze_layers: int = 0  # full: keep the embeddings and the first N decoder layers as they are (faster steps)
    token_init: str = "mean"  # the new task token's first rows: the task tokens' mean, one task's (a name), or orthogonal
    token_lr_scale: float = 1.0  # full: the new task token's embedding row learns at this multiple of train.lr
    # the saved weights: base + blend * (fine-tuned - base), the new task token's rows as trained (1: the
    # fine-tuned weights; below 1, WiSE-FT's weight-space ensemble, which gives back some of the old tasks)
    blend: float = 1.0
    lora: LoRASettings = field(default_factory=LoRASettings)
    data: FinetuneData = field(default_factory=FinetuneData)
    train: LMTrainConfig = field(default_factory=lambda: LMTrainConfig(steps=200, batch_size=8, row_len=1104, lr=3e-4,
                                                                       warmup_steps=20, sample_every=0))
    eval: FinetuneEval = field(default_factory=FinetuneEval)
    out: str = "runs/finetune"

    def __post_init__(self):
        if not self.task:
            raise ConfigError("task: name the new task (module:Class)")
        if self.freeze_layers < 0 or (self.freeze_layers and self.method != "full"):
            raise ConfigError(f"freeze_layers={self.freeze_layers}: a count >= 0, and only with method: full")
        if not self.token_lr_scale > 0 or (self.token_lr_scale != 1 and (self.method != "full" or self.freeze_layers)):
            raise ConfigError(f"token_lr_scale={self.token_lr_scale}: a positive multiple, and other than 1 only with "
                              "method: full and no freeze_layers")
        if not 0 < self.blend <= 1:
            raise ConfigError(f"blend={self.blend}: the fine-tune's share of the saved weights, in (0, 1]")
        if self.data.project not in ("none", "model", "tensor"):
            raise ConfigError(f"data.project={self.data.project!r}: choose none, model or tensor")
        if self.data.project != "none" and not self.data.mix:
            raise ConfigError("data.project: projecting onto the old tasks' gradient needs old tasks in data.mix")
        if self.data.mix_targets not in ("truth", "base"):
            raise ConfigError(f"data.mix_targets={self.data.mix_targets!r}: choose truth or base")
        if self.eval.metric not in ("psnr", "shape", "color", "size", "direction"):
            raise ConfigError(f"eval.metric={self.eval.metric!r}: choose psnr, shape, color, size or direction")


# --------------------------------------------------------------------------------- vocabulary


def grow_vocab(model, vocab: Vocabulary, name: str, like: str = "mean") -> int:
    """Add task ``name`` to ``vocab`` (a no-op if there) and make room for it in ``model``'s
    embedding and output layers. Its rows start at the mean of the other task tokens' rows; with
    ``like`` a task's name, at that task token's rows; with ``like="orthogonal"``, at a fixed
    random direction orthogonal to every other task token's row, as long as their mean row (a
    token the model reads as no task it knows, so that learning it moves the old tasks' tokens'
    processing least). Returns its id. No existing id moves."""
    if name in vocab.tasks:
        return vocab.task_id(name)
    from_all = like in ("mean", "orthogonal")  # placed by every task token's row, not one task's
    if not from_all and like not in vocab.tasks:
        raise ConfigError(f"token_init: {like!r} is not one of the model's tasks ({', '.join(vocab.tasks)}), "
                          "'mean' or 'orthogonal'")
    others = [vocab.task_id(t) for t in (vocab.tasks if from_all else [like])]
    new = vocab.add_task(name)
    rows = model.get_input_embeddings().weight.shape[0]
    if new >= rows:
        model.resize_token_embeddings(-(-(new + 1) // 64) * 64, mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            w = layer.weight
            known = w[others] if others else w[:rows]  # (K, D)
            w[new] = _orthogonal_row(known) if like == "orthogonal" else known.mean(0)
    return new


def _orthogonal_row(known: torch.Tensor) -> torch.Tensor:
    """A random ``(D,)`` row (seeded: the same every time) orthogonal to every row of ``known
    (K, D)``, with their mean length."""
    known = known.float()
    row = torch.randn(known.shape[1], generator=torch.Generator().manual_seed(0))  # (D,)
    basis = torch.linalg.qr(known.T).Q  # (D, K): orthonormal, spanning the known rows
    row = row - basis @ (basis.T @ row)
    return row * (known.norm(dim=1).mean() / row.norm())


# ----------------------------------------------------------------------------------- scoring


# -------------------------------------------------------------------------------------- run


def _as_base(load, base: str):
    """``load(base)`` (a model folder or its path), its errors naming the setting ``--base``."""
    try:
        return load(base)
    except UsageError as e:
        raise UsageError(str(e).replace("--model ", "--base ", 1)) from None


def resolve_base(base: str) -> Path:
    """The base model folder's path, checked (a missing one fails before any work)."""
    return _as_base(resolve_model, base)


def _import_paths(paths: list[str]) -> None:
    for p in paths:
        folder = str(Path(p).absolute())
        if not Path(folder).is_dir():
            raise ConfigError(f"paths: {p} is not a folder")
        if folder not in sys.path:
            sys.path.insert(0, folder)


def _all_views(tasks: list[Task]):
    """One ``extra(clip)`` making the views every one of ``tasks`` reads (`Task.views`)."""
    def extra(clip: dict) -> dict:
        made = {}
        for task in tasks:
            made.update(task.views(clip))
        return made
    return extra


def _tokenize(pipe: Pipeline, clips: list[dict], extra, batch_size: int) -> list[dict]:
    samples = []
    for i in range(0, len(clips), batch_size):
        samples += pipe.tokenizer.encode(clips[i:i + batch_size], extra=extra)
    return samples


def run_finetune(cfg: FinetuneConfig, progress=None) -> dict:
    """Fine-tune as ``cfg`` says; returns the report (also written to OUT/report.json)."""
    started = time.perf_counter()
    _import_paths(cfg.paths)
    cls = task_class(cfg.task)
    pipe = _as_base(Pipeline.from_pretrained, cfg.base)
    for key, names in (("data.mix", cfg.data.mix), ("eval.tasks", cfg.eval.tasks)):
        for name in names:  # old tasks must be the base model's (a user's: by name or module:Class)
            try:
                pipe.task(name)
            except VideolmError as e:
                raise ConfigError(f"{key}: {name!r}: {str(e).split(': ', 1)[-1]}") from None
    if cfg.method == "lora":
        _check_targets(pipe.model, cfg.lora.target_modules)
    layers = pipe.model.config.num_hidden_layers
    if cfg.freeze_layers > layers:
        raise ConfigError(f"freeze_layers={cfg.freeze_layers}: {cfg.base}'s LM has {layers} layers")
    if cls.name in pipe.vocab.tasks:
        raise ConfigError(f"task {cls.name!r} is already one of {cfg.base}'s tasks; fine-tuning teaches a new one")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    out = Path(cfg.out)
    grow_vocab(pipe.model, pipe.vocab, cls.name, cfg.token_init)
    new = cls(pipe.vocab)
    new.training = False
    pipe._tasks[cls.name] = new
    old = [pipe.task(n) for n in cfg.eval.tasks]
    probe = load_probe(pipe.folder)
    held_out = ShapesDataset(cfg.eval.num, split="eval")
    eval_clips = [held_out[i] for i in range(len(held_out))]
    views = _all_views([new, *old, *(pipe.task(n) for n in cfg.data.mix)])  # a base's own user tasks have theirs
    eval_samples = _tokenize(pipe, eval_clips, views, cfg.data.batch_size)
    before, before_ids = evaluate_tasks(pipe, [new, *old], eval_clips, eval_samples, probe, cfg.eval)
    minutes = {"before": time.perf_counter() - started}  # loading, tokenizing the held-out clips, scoring them

    # tokenized as the training draws them: each sequence reads one or two of a clip's fields
    samples = LazySamples(ShapesDataset(cfg.data.num, seed=cfg.data.seed), pipe.tokenizer, extra=views)
    mixed = [type(pipe.task(n))(pipe.vocab) for n in cfg.data.mix]  # fresh, in training mode
    data = TaskSequences(samples, [new, *mixed], [cfg.data.weight, *cfg.data.mix.values()], cfg.data.text_dropout,
                         cfg.train.row_len)
    new.training = True
    # the base as it stands (the new token's rows included, so the vocabularies match): the target
    # of the mixed-in old tasks with mix_targets: base
    teacher = copy.deepcopy(pipe.model).float() if cfg.data.mix_targets == "base" and cfg.data.mix else None
    start = {k: v.detach().clone() for k, v in pipe.model.state_dict().items()} if cfg.blend < 1 else None
    model = pipe.model.train()
    peft_model = None
    if cfg.freeze_layers:
        _freeze(model, cfg.freeze_layers)
    if cfg.method == "lora":
        peft_model = _lora(model, cfg.lora, pipe.vocab.task_id(cls.name))
        model = peft_model.base_model.model  # the VideoLM, its layers wrapped in place
    held_out = TaskSequences(eval_samples, [new, *mixed], [cfg.data.weight, *cfg.data.mix.values()], 0.0,
                             cfg.train.row_len)  # the held-out clips: their loss every train.val_every steps
    fit(model, cfg.train, data, out, [t.name for t in (new, *mixed)], vocab=pipe.vocab, pad_id=pipe.vocab["<pad>"],
        run_config={"entry": "finetune", **to_dict(cfg)}, export=lambda state, folder: None, held_out=held_out,
        teacher=teacher, distill=list(cfg.data.mix) if teacher is not None else (),
        fast_rows=[pipe.vocab.task_id(cls.name)], fast_rows_scale=cfg.token_lr_scale,
        protect=list(cfg.data.mix) if cfg.data.project != "none" else (),
        protect_per_tensor=cfg.data.project == "tensor", command="finetune")
    del teacher
    new.training = False
    model.eval()
    minutes["training"] = time.perf_counter() - started - minutes["before"]

    report = {"task": cls.name, "method": cfg.method, "base": str(pipe.folder), "steps": cfg.train.steps,
              "metric": cfg.eval.metric, "before": before}
    if peft_model is not None:
        pipe.model = peft_model
        peft_model.save_pretrained(out / ADAPTER_DIR)
        pipe.vocab.save(out / ADAPTER_DIR)
        with peft_model.disable_adapter():
            _, disabled_ids = evaluate_tasks(pipe, old, eval_clips, eval_samples, probe, cfg.eval)
        report["old_tasks_identical_with_adapter_disabled"] = all(
            torch.equal(disabled_ids[t.name], before_ids[t.name]) for t in old)
        model = peft_model.merge_and_unload()
        pipe.model = model
    if start is not None:
        blend_weights(model, start, cfg.blend, keep=[pipe.vocab.task_id(cls.name)])
        del start
    save_model_folder(model, pipe, out / "model", tasks=(cls,))
    pipe.model = model.float().eval()
    after, _ = evaluate_tasks(pipe, [new, *old], eval_clips, eval_samples, probe, cfg.eval)
    report["after"] = after
    report["summary"] = _summary(cls.name, cfg.eval.metric, before, after, [t.name for t in old])
    minutes["after"] = time.perf_counter() - started - minutes["before"] - minutes["training"]  # saving, scoring
    report["summary"]["minutes"] = round((time.perf_counter() - started) / 60, 2)  # everything, evaluations included
    report["summary"]["minutes_by_stage"] = {k: round(v / 60, 2) for k, v in minutes.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def blend_weights(model, start: dict[str, torch.Tensor], share: float, keep: list[int] = ()) -> None:
    """Move ``model``'s weights back toward ``start`` (a state dict of the same model before
    fine-tuning): each becomes ``start + share * (weight - start)``, the weight-space ensemble of
    WiSE-FT (Wortsman et al., 2022, "Robust fine-tuning of zero-shot models"). The rows ``keep`` of
    the vocabulary-sized matrices (the new task token's, which the base never trained) stay as
    fine-tuned."""
    layers = {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values()
    with torch.no_grad():
        keep = list(keep)  # (an empty tuple would index the whole matrix)
        trained = [layer.weight[keep].clone() for layer in layers]
        for name, w in model.state_dict().items():
            if w.is_floating_point():
                w.lerp_(start[name].to(w.dtype), 1 - share)  # start + share * (w - start)
        for layer, rows in zip(layers, trained):
            layer.weight[keep] = rows


def _freeze(model, num_layers: int) -> None:
    """Full fine-tuning of the upper layers only: the embeddings and the first ``num_layers``
    decoder layers get no gradient, so the backward pass stops above them."""
    for module in [model.get_input_embeddings(), *model.model.layers[:num_layers]]:
        module.requires_grad_(False)


def _check_targets(model, names: list[str]) -> None:
    """Each of LoRA's ``target_modules`` must name layers of the model (as peft matches them: the
    end of a module's dotted name), before any work."""
    modules = [m for m, _ in model.named_modules()]
    missing = [n for n in names if not any(m == n or m.endswith(f".{n}") for m in modules)]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"lora.target_modules: {', '.join(missing)} name no layer of the LM (its linear layers: "
                          f"{', '.join(linear)})")


def _lora(model, settings: LoRASettings, token_id: int):
    from peft import LoraConfig, get_peft_model

    kw = {"trainable_token_indices": {"embed_tokens": [token_id]}} if settings.train_task_token else {}
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), **kw)
    return get_peft_model(model, config)


def load_adapter(base: str | Path, adapter: str | Path, merge: bool = False):
    """The base model folder's LM with a saved LoRA adapter on it (its vocabulary grown as the
    adapter's says): a peft model, or with ``merge`` a plain `VideoLM` with the adapter merged in.
    Returns ``(model, vocab)``."""
    from peft import PeftModel  # only for LoRA

    weights_file(adapter, "adapter_model.safetensors")  # PEFT would fall back to a pickled .bin: never
    pipe = Pipeline.from_pretrained(base)
    vocab = Vocabulary.load(adapter)
    for name in vocab.tasks:
        if name not in pipe.vocab.tasks:
            grow_vocab(pipe.model, pipe.vocab, name)
    model = PeftModel.from_pretrained(pipe.model, str(adapter)).eval()
    return (model.merge_and_unload() if merge else model), vocab


def save_model_folder(model, pipe: Pipeline, folder: Path, dtype: torch.dtype = torch.float16,
                      tasks: tuple[type[Task], ...] = ()) -> Path:
    """A model folder `videolm generate --model` loads: the base's tokenizers (and probe), and
    ``lm/`` with ``model``'s weights (stored as ``dtype``) and the grown vocabulary. ``tasks``
    from outside the package get their module's source copied into ``lm/tasks/``."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(pipe.folder, folder, ignore=shutil.ignore_patterns(LM_DIR))
    lm = folder / LM_DIR
    lm.mkdir()
    if (pipe.folder / LM_DIR / CUSTOM_CODE).is_dir():  # the base's own tasks of a user's go along
        shutil.copytree(pipe.folder / LM_DIR / CUSTOM_CODE, lm / CUSTOM_CODE)
    model.to(dtype).save_pretrained(lm)
    model.float()
    pipe.vocab.save(lm)
    (lm / "clip.json").write_text(json.dumps(pipe.clip) + "\n")
    custom = dict(pipe.custom)
    for cls in tasks:
        if not cls.__module__.startswith("videolm."):
            (lm / CUSTOM_CODE).mkdir(exist_ok=True)
            shutil.copyfile(inspect.getsourcefile(cls), lm / CUSTOM_CODE / f"{cls.__module__.split('.')[-1]}.py")
            custom[cls.name] = f"{cls.__module__.split('.')[-1]}:{cls.__qualname__}"
    if custom:
        (lm / CUSTOM_TASKS).write_text(json.dumps(custom, indent=2) + "\n")
    return folder


def _summary(name: str, metric: str, before: dict, after: dict, old: list[str]) -> dict:
    new_before, new_after = before[name], after[name]
    summary = {f"{name}_{metric}_before": new_before.get(metric), f"{name}_{metric}_after": new_after.get(metric)}
    if "ceiling" in new_after:
        ceiling = new_after["ceiling"].get(metric)
        summary[f"{name}_{metric}_ceiling"] = ceiling
        if ceiling:
            summary["fraction_of_ceiling"] = round(new_after[metric] / ceiling, 4)
    if "baseline" in new_after:
        summary[f"{name}_{metric}_copy_baseline"] = new_after["baseline"].get(metric)
    for t in old:
        summary[f"{t}_change"] = {k: round(after[t][k] - before[t][k], 4) for k in before[t]
                                  if isinstance(before[t][k], (int, float)) and isinstance(after[t].get(k), (int, float))}
    return summary


__all__ = ["FinetuneConfig", "FinetuneData", "FinetuneEval", "LoRASettings", "blend_weights", "grow_vocab",
           "load_adapter", "resolve_base", "run_finetune", "save_model_folder"]
