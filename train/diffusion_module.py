"""Training either diffusion model (refiner or DiT) with Lightning: `DiffusionModule` and `fit`.

The module knows one thing about its model: ``loss_fn(model, batch) -> scalar``. AdamW, linear
warmup then cosine decay on the step or wall-clock budget (the schedule the tokenizers and the LM
use), gradient clipping, and an exponential moving average of the weights, which is what gets
exported (diffusion samples are markedly cleaner from EMA weights; DiT, Peebles & Xie 2023). The
run folder holds::

    OUT/checkpoints/last.ckpt   weights, EMA, optimizer, budget, random state, data position: a rerun
                                resumes exactly (`videolm.core.training`)
    OUT/metrics.jsonl           one JSON line per log step: step, minutes, loss, lr, items_per_s
    OUT/model/                  the EMA weights, exported by the caller's ``export(model, folder)``
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset

from videolm.core.errors import ConfigError
from videolm.core.training import RunModule, TrainArgs, fit_run, lr_factor, resolve_precision


@dataclass
class DiffusionTrainConfig(TrainArgs):
    steps: int = field(default=20_000, metadata={"flags": ["--steps"]})  # optimizer steps
    batch_size: int = field(default=32, metadata={"flags": ["--batch-size"]})  # crops or clips per step
    lr: float = 3e-4  # peak learning rate
    ema_decay: float = 0.999  # 0: export the raw weights
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float16"

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay} must be in [0, 1)")


class DiffusionModule(RunModule):
    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor],
                 cfg: DiffusionTrainConfig, out: str | Path, export: Callable[[nn.Module, Path], None]):
        super().__init__(cfg, out)
        self.model, self.loss_fn, self.export = model, loss_fn, export
        self.ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
                    if cfg.ema_decay else None)
        self._loss_sum, self._count, self._items = 0.0, 0, 0
        self._interval_start = time.perf_counter()

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        other = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(0.9, 0.99))

    def on_train_start(self):
        super().on_train_start()
        self._interval_start = time.perf_counter()

    def before_step(self, step: int) -> None:
        for group in self.optimizers().param_groups:
            group["lr"] = self.cfg.lr * lr_factor(step, self.cfg, self.elapsed_now())

    def training_step(self, batch, batch_idx):
        loss = self.loss_fn(self.model, batch)
        self._loss_sum += float(loss.detach())
        self._count += 1
        self._items += self.cfg.batch_size
        return loss

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if step % self.cfg.log_every == 0:
            self._log(step)

    def extra_state(self) -> dict:
        return {"loss_sum": self._loss_sum, "count": self._count}

    def load_extra_state(self, state: dict) -> None:
        self._loss_sum, self._count = float(state["loss_sum"]), int(state["count"])

    def _log(self, step: int):
        if not self._count:
            return
        row = {"step": step, "minutes": round(self.elapsed / 60, 3), "loss": self._loss_sum / self._count,
               "lr": self.optimizers().param_groups[0]["lr"],
               "items_per_s": round(self._items / max(time.perf_counter() - self._interval_start, 1e-9), 2)}
        self._loss_sum, self._count, self._items = 0.0, 0, 0
        self._interval_start = time.perf_counter()
        self.metrics.append(row)

    def trained_model(self) -> nn.Module:
        """The weights to ship: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def finish(self):
        self._log(self.steps_done)
        model = self.trained_model()
        was_training = model.training
        model.eval()
        self.export(model, self.out / "model")
        model.train(was_training)


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor], data: Dataset,
        cfg: DiffusionTrainConfig, out: str | Path, export: Callable[[nn.Module, Path], None],
        collate_fn=None, run_config: dict | None = None, command: str = "refiner fit") -> Path:
    """Train ``model`` on ``data`` by ``loss_fn``, resuming exactly from OUT/checkpoints/last.ckpt if
    present; ``export(trained_model, OUT/model)`` writes the result. Returns OUT/model."""
    module = DiffusionModule(model, loss_fn, cfg, out, export)
    fit_run(module, data, cfg, command, collate_fn, precision=resolve_precision(cfg), grad_clip=cfg.grad_clip,
            run_config=run_config)
    return Path(out) / "model"
