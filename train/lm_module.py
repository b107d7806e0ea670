"""Training the prefix LM with Lightning: `LMModule` and `fit`.

AdamW (no decay on norms), linear warmup then cosine decay, gradient clipping by norm, bf16-mixed
where the hardware has it; the loss falls on output tokens only and is logged per task. Devices,
nodes and the strategy (``auto``, ``ddp``, ``fsdp``) come from the config and go to Lightning as
they are: there is no distribution code here. The run folder holds::

    OUT/checkpoints/last.ckpt   weights, optimizer, budget, random state, data position: a rerun resumes
                                exactly (`videolm.core.training`)
    OUT/metrics.jsonl           one JSON line per log step: loss, loss_<task>, lr, tokens_per_s, padding;
                                with held-out data, a line every ``val_every`` steps: val_loss, val_loss_<task>
    OUT/samples/                whatever the sample function writes every ``sample_every`` steps
    OUT/model/                  the trained VideoLM (save_pretrained: config.json + model.safetensors)
                                and vocab.json

The LM sees ids only: sample videos are made by a function passed in by the tasks layer
(``sample(model, step)``), which generates with `videolm.lm.engine` and decodes through the
tokenizers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import Dataset
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.utils import logging as hf_logging

from videolm.core.config import check_range
from videolm.core.errors import ConfigError
from videolm.core.training import (
    RunModule,
    TrainArgs,
    fit_run,
    lr_factor,
    resolve_precision,
)
from videolm.lm.data import PackCollate, TaskBatch
from videolm.lm.engine import uses_grid
from videolm.lm.losses import (
    distill_losses,
    held_out_losses,
    output_logits,
    output_losses,
    project_conflict,
    weights_fingerprint,
)
from videolm.lm.model import VideoLM
from videolm.lm.positions import GridLayout
from videolm.tasks.base import grid_layout


@dataclass
class LMTrainConfig(TrainArgs):
    batch_size: int = field(default=16, metadata={"flags": ["--batch-size"]})  # sequences per step and device,
    #   packed into rows of row_len tokens
    weight_decay: float = 0.1  # on matrices and embeddings, not on norms
    precision: str = "auto"  # auto: bf16-mixed on a GPU with bf16, else 32-true; auto-bf16: also bf16-mixed on
    #   a CPU with native bf16 (AVX512-BF16 or AMX); or any Lightning precision
    checkpoint_every: int = 500  # checkpoints/last.ckpt (what a rerun resumes from) every N steps
    row_len: int = 1024  # tokens per packed row
    packing: bool = True  # False: one sequence per row, padded to the batch's longest (the baseline)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW's
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    sample_every: int = 0  # 0: no samples
    val_every: int = 0  # held-out loss every N steps and at the end (0: never; needs held-out data)
    val_sequences: int = 64  # held-out sequences scored each time (a fixed draw from the held-out data)

    def __post_init__(self):
        super().__post_init__()
        check_range(self, 1, None, "row_len", "num_nodes", "val_sequences")
        check_range(self, 0, None, "sample_every", "val_every")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas={self.betas}: need two values in [0, 1)")










def held_out_batches(data: Dataset, cfg: LMTrainConfig, pad_id: int = 0, seed: int = 1234,
                     grid: GridLayout | None = None) -> list[TaskBatch]:
    """A fixed draw of ``cfg.val_sequences`` examples from held-out ``data`` (its first items; the
    tasks drawn with their own seed, so training's random stream is untouched), packed as training
    packs them. The same batches are scored every time, so the curve moves only with the weights."""
    collate = PackCollate(cfg.row_len, pad_id, cfg.packing, grid)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        items = [data[i] for i in range(min(len(data), cfg.val_sequences))]
    return [collate(items[i:i + cfg.batch_size]) for i in range(0, len(items), cfg.batch_size)]




def _scale_row_steps(optimizer, weight: torch.Tensor, rows: Sequence[int], scale: float) -> None:
    """Make each of ``optimizer``'s steps move ``weight[rows]`` ``scale`` times as far as it
    would: for AdamW (its update, decoupled decay included, is proportional to the learning rate)
    that is a learning rate ``scale`` times larger for those rows alone, without splitting the
    matrix into parameters of its own."""
    if not weight.requires_grad:
        return
    index = torch.tensor(list(rows), device=weight.device)
    before = {}

    def pre(opt, args, kwargs):
        before["rows"] = weight.detach()[index].clone()

    def post(opt, args, kwargs):
        with torch.no_grad():
            weight[index] = before["rows"] + scale * (weight[index] - before["rows"])

    optimizer.register_step_pre_hook(pre)
    optimizer.register_step_post_hook(post)


class LMModule(RunModule):
    def __init__(self, model: VideoLM, cfg: LMTrainConfig, out: str | Path, task_names: Sequence[str],
                 vocab=None, sample: Callable[[VideoLM, int], None] | None = None,
                 export: Callable[[dict, Path], None] | None = None, held_out: list[TaskBatch] | None = None,
                 teacher: VideoLM | None = None, distill: Sequence[str] = (),
                 fast_rows: Sequence[int] = (), fast_rows_scale: float = 1.0, protect: Sequence[str] = (),
                 protect_per_tensor: bool = False):
        super().__init__(cfg, out)
        # input-embedding rows (a new task token's) that learn fast_rows_scale times the learning rate
        self.fast_rows, self.fast_rows_scale = list(fast_rows), float(fast_rows_scale)
        self.model, self.export = model, export
        # the tasks whose output tokens learn the teacher's distribution instead of the true token;
        # the teacher is kept out of the module tree (not trained, not in checkpoints)
        if distill and teacher is None:
            raise ConfigError(f"distilling {', '.join(distill)} needs a teacher model")
        unknown = sorted(set(distill) - set(task_names))
        if unknown:
            raise ConfigError(f"distill: {', '.join(unknown)} not among the trained tasks ({', '.join(task_names)})")
        self.distill = torch.tensor([name in distill for name in task_names])  # (K,) bool
        # the tasks whose gradient the others' may not oppose (A-GEM's projection, `project_conflict`)
        unknown = sorted(set(protect) - set(task_names))
        if unknown:
            raise ConfigError(f"protect: {', '.join(unknown)} not among the trained tasks ({', '.join(task_names)})")
        if protect and len(set(protect)) == len(set(task_names)):
            raise ConfigError("protect: at least one trained task must be left unprotected (its gradient is projected)")
        self.protect = torch.tensor([name in protect for name in task_names])  # (K,) bool
        self._protected_grads = None  # the protected tasks' gradient of the current step
        self.protect_per_tensor = protect_per_tensor
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False) if distill else None)
        self.held_out = held_out or []  # given only with cfg.val_every set
        self.task_names, self.vocab, self.sample = list(task_names), vocab, sample
        self._finished_at = -1  # the step `finish` last ran at (a finished run rerun logs nothing twice)
        self._reset_stats()

    def on_fit_start(self):
        super().on_fit_start()
        self.distill = self.distill.to(self.device)
        self.protect = self.protect.to(self.device)
        if self.protect.any() and self.trainer.world_size > 1:
            raise ConfigError("protect (gradient projection) runs on one process: its second gradient pass "
                              "bypasses DDP's gradient averaging")
        if self.teacher is not None:
            self.teacher.to(self.device)

    # -- optimization

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        other = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=tuple(self.cfg.betas))
        if self.fast_rows and self.fast_rows_scale != 1.0:
            _scale_row_steps(optimizer, self.model.get_input_embeddings().weight, self.fast_rows, self.fast_rows_scale)
        return optimizer

    def on_train_start(self):
        super().on_train_start()
        self._stats = {name: v.to(self.device) for name, v in self._stats.items()}
        self._interval_start = time.perf_counter()
        if self.held_out and self.steps_done == 0:
            self._validate(0)  # where the curve starts: the initial weights' held-out loss

    def before_step(self, step: int) -> None:
        for group in self.optimizers().param_groups:
            group["lr"] = self.cfg.lr * lr_factor(step, self.cfg, self.elapsed_now())

    def training_step(self, batch: TaskBatch, batch_idx):
        logits = output_logits(self.model, batch.rows)  # (N, V)
        nll, tasks = output_losses(self.model, batch, logits)  # (N,), (N,)
        k, loss = len(self.task_names), nll
        soft = self.distill[tasks]  # (N,): the distilled tasks' positions
        if self.teacher is not None and soft.any():
            kl = distill_losses(self.teacher, batch.rows, logits, soft)  # (S,)
            loss = nll.masked_scatter(soft, kl)  # (N,)
            self._stats["kl"] += kl.detach().double().sum()
            self._stats["kl_count"] += len(kl)
        if self.protect.any():
            mine = self.protect[tasks]  # (N,): the protected tasks' positions
            if mine.any() and not mine.all():
                # their gradient now (kept for on_before_optimizer_step); the others' goes through backward
                params = [p for p in self.model.parameters() if p.requires_grad]
                kept = loss.masked_fill(~mine, 0).sum() / len(loss)
                self._protected_grads = (params, torch.autograd.grad(kept, params, retain_graph=True,
                                                                     allow_unused=True))
                loss = loss.masked_fill(mine, 0)
        with torch.no_grad():
            self._stats["loss"] += torch.bincount(tasks, weights=nll.detach().float(), minlength=k).double()
            self._stats["count"] += torch.bincount(tasks, minlength=k).double()
            self._stats["tokens"] += (batch.rows.example >= 0).sum().double()
            self._stats["slots"] += batch.rows.example.numel()
        return loss.sum() / max(1, len(loss))

    def on_before_optimizer_step(self, optimizer):
        if self._protected_grads is None:
            return
        params, protected = self._protected_grads
        self._protected_grads = None
        projected, share = project_conflict([p.grad for p in params], protected, per_tensor=self.protect_per_tensor)
        for p, g in zip(params, projected):
            p.grad = g
        self._stats["projected"] += share
        self._stats["projectable"] += 1

    def after_step(self, step: int) -> None:
        if step % self.cfg.log_every == 0 or step == self.cfg.steps:
            self._log(step)
        if self.held_out and step % self.cfg.val_every == 0:
            start = time.perf_counter()
            self._validate(step)
            self._interval_start += time.perf_counter() - start  # throughput counts training time only
        if self.sample is not None and self.cfg.sample_every and step % self.cfg.sample_every == 0:
            start = time.perf_counter()
            self._write_samples(step)
            self._interval_start += time.perf_counter() - start  # throughput counts training time only

    # -- logging

    def _reset_stats(self, device=None):
        """Sums over the steps since the last log: loss and output tokens per task, real tokens, slots."""
        k, zeros = len(self.task_names), lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)
        self._stats = {"loss": zeros(k), "count": zeros(k), "tokens": zeros(), "slots": zeros(), "kl": zeros(),
                       "kl_count": zeros(), "projected": zeros(), "projectable": zeros()}
        self._interval_start = time.perf_counter()

    def extra_state(self) -> dict:
        return {"stats": {name: v.cpu() for name, v in self._stats.items()}, "finished_at": self._finished_at}

    def load_extra_state(self, state: dict) -> None:
        self._stats = {name: v.clone() for name, v in state["stats"].items()}
        self._finished_at = int(state.get("finished_at", -1))

    def _log(self, step: int):
        """One metrics line: the interval's statistics summed over every process."""
        stats = {name: self.trainer.strategy.reduce(v, reduce_op="sum") for name, v in self._stats.items()}
        loss, count = stats["loss"].cpu(), stats["count"].cpu()
        row = {"step": step, "minutes": round(self.elapsed / 60, 3),
               "loss": float(loss.sum() / count.sum().clamp(min=1)),
               "lr": self.optimizers().param_groups[0]["lr"],
               "tokens_per_s": round(float(stats["tokens"]) / max(time.perf_counter() - self._interval_start, 1e-9), 1),
               "padding": round(1 - float(stats["tokens"] / stats["slots"].clamp(min=1)), 4)}
        row.update({f"loss_{name}": float(loss[k] / count[k]) for k, name in enumerate(self.task_names) if count[k]})
        if float(stats["kl_count"]):  # the distilled tasks' KL to the teacher (their loss_<task> stays the true token's)
            row["kl_to_teacher"] = float(stats["kl"] / stats["kl_count"])
        if float(stats["projectable"]):  # the share of steps (or of tensors) where the gradient was projected
            row["projected"] = round(float(stats["projected"] / stats["projectable"]), 3)
        self._reset_stats(self.device)
        self._append_metrics(row)

    def _validate(self, step: int):
        """One line of held-out loss, overall and per task (rank 0 scores; FSDP shards the weights
        over ranks, so it is skipped there)."""
        if not self.trainer.is_global_zero or self.cfg.strategy == "fsdp":
            return
        loss, count = held_out_losses(self.model, self.held_out, len(self.task_names))
        row = {"step": step, "val_loss": float(loss.sum() / count.sum().clamp(min=1))}
        row.update({f"val_loss_{name}": float(loss[k] / count[k]) for k, name in enumerate(self.task_names) if count[k]})
        self._append_metrics(row)

    def _append_metrics(self, row: dict):
        if self.trainer.is_global_zero:
            self.metrics.append(row)

    # -- samples and the final model

    def _write_samples(self, step: int):
        if not self.trainer.is_global_zero or self.cfg.strategy == "fsdp":  # FSDP: no rank holds every weight
            return
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            self.sample(self.model, step)
        self.model.train(was_training)

    def finish(self):
        """Log the last partial interval, export the model (every rank takes part: under FSDP
        gathering the weights is collective) and, with several processes, record a fingerprint of
        each rank's weights. A rerun of a finished run exports again and logs nothing twice."""
        logged = self._finished_at == self.steps_done
        self._finished_at = self.steps_done
        if float(self.trainer.strategy.reduce(self._stats["slots"].clone(), reduce_op="sum")) > 0:
            self._log(self.steps_done)
        if self.held_out and self.steps_done % self.cfg.val_every and not logged:
            self._validate(self.steps_done)  # the final weights' held-out loss
        state = self.trainer.strategy.lightning_module_state_dict()
        if self.trainer.is_global_zero:
            if self.export is not None:
                self.export(state, self.out / "model")
            else:
                export_model(self.model.config, state, self.out / "model", self.vocab)
        if self.trainer.world_size > 1 and self.cfg.strategy != "fsdp" and not logged:
            prints = torch.zeros(self.trainer.world_size, 3, dtype=torch.float64, device=self.device)  # (W, 3)
            prints[self.global_rank] = weights_fingerprint(self.model)
            prints = self.trainer.strategy.reduce(prints, reduce_op="sum")  # each row from its rank (+ zeros: exact)
            self._append_metrics({"step": self.steps_done, "rank_weight_fingerprints": prints.tolist()})




def export_model(config, state: dict, folder: Path, vocab=None) -> Path:
    """Save the LightningModule state's ``model.*`` weights as a VideoLM folder (with the vocabulary)."""
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    with torch.device("meta"):
        model = VideoLM(config)
    model.load_state_dict(weights, assign=True)
    model.tie_weights()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        hf_logging.enable_progress_bar()
    if vocab is not None:
        vocab.save(folder)
    return folder


def fit(model: VideoLM, cfg: LMTrainConfig, train_data: Dataset, out: str | Path, task_names: Sequence[str],
        vocab=None, pad_id: int = 0, sample: Callable[[VideoLM, int], None] | None = None,
        run_config: dict | None = None, export: Callable[[dict, Path], None] | None = None,
        held_out: Dataset | None = None, teacher: VideoLM | None = None, distill: Sequence[str] = (),
        fast_rows: Sequence[int] = (), fast_rows_scale: float = 1.0, protect: Sequence[str] = (),
        protect_per_tensor: bool = False, command: str = "lm fit") -> Path | None:
    """Train on ``train_data`` (items: `videolm.lm.data.TaskExample`), resuming exactly from
    OUT/checkpoints/last.ckpt if present (`videolm.core.training`). Returns OUT/model on the main
    process, None on the others. ``export(state, OUT/model)`` replaces the default export of the
    trained weights (e.g. to save a LoRA adapter). ``held_out`` (items like ``train_data``'s, from
    clips not trained on) is scored every ``cfg.val_every`` steps. The output tokens of the tasks
    named in ``distill`` learn ``teacher``'s distribution (KL) instead of the true token
    (`distill_losses`). The input embedding's ``fast_rows`` learn at ``fast_rows_scale`` times the
    learning rate. The other tasks' gradient never opposes that of the tasks named in ``protect``
    (`project_conflict`: A-GEM; each parameter on its own with ``protect_per_tensor``)."""
    out = Path(out)
    if len(train_data) < cfg.batch_size:
        raise ConfigError(f"train.batch_size={cfg.batch_size} is more than the {len(train_data)} training clips "
                          "(the last partial batch is dropped, so nothing would train)")
    if cfg.val_every and held_out is None:
        raise ConfigError(f"train.val_every={cfg.val_every}: held-out loss needs held-out data (data.val_shards)")
    grid = None
    if uses_grid(model):
        if vocab is None:
            raise ConfigError("a model with grid positions trains with its vocabulary (fit(..., vocab=...))")
        grid = grid_layout(vocab)
    batches = held_out_batches(held_out, cfg, pad_id, grid=grid) if held_out is not None and cfg.val_every else None
    module = LMModule(model, cfg, out, task_names, vocab=vocab, sample=sample, export=export,
                      held_out=batches, teacher=teacher, distill=distill, fast_rows=fast_rows,
                      fast_rows_scale=fast_rows_scale, protect=protect, protect_per_tensor=protect_per_tensor)
    trainer = fit_run(module, train_data, cfg, command, PackCollate(cfg.row_len, pad_id, cfg.packing, grid),
                      devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=_strategy(cfg),
                      precision=resolve_precision(cfg), grad_clip=cfg.grad_clip, run_config=run_config)
    return out / "model" if trainer.is_global_zero else None


def _strategy(cfg: LMTrainConfig):
    if cfg.strategy != "fsdp":
        return cfg.strategy

    return FSDPStrategy(auto_wrap_policy={LlamaDecoderLayer})  # one FSDP unit per decoder layer


__all__ = ["LMModule", "LMTrainConfig", "distill_losses", "export_model", "fit", "lr_factor", "output_logits",
           "output_losses", "resolve_precision", "weights_fingerprint"]
