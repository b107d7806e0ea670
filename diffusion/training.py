"""Training either diffusion model (refiner or DiT) with Lightning: `DiffusionModule` and `fit`.

The module knows one thing about its model: ``loss_fn(model, batch) -> scalar``. AdamW, linear
warmup then cosine decay on the step or wall-clock budget (the schedule the tokenizers and the LM
use), gradient clipping, and an exponential moving average of the weights, which is what gets
exported (diffusion samples are markedly cleaner from EMA weights; DiT, Peebles & Xie 2023). The
run folder holds::

    OUT/checkpoints/last.ckpt   Lightning's checkpoint (optimizer, EMA and time budget): a rerun resumes
    OUT/metrics.jsonl           one JSON line per log step: step, minutes, loss, lr, items_per_s
    OUT/model/                  the EMA weights, exported by the caller's ``export(model, folder)``
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from videolm.lm.training import _quiet, resolve_precision  # the LM's precision rule, shared
from videolm.tokenizers.errors import ConfigError
from videolm.tokenizers.training import lr_factor


@dataclass
class DiffusionTrainConfig:
    steps: int = 20_000
    max_minutes: float | None = None  # wall-clock budget, kept across resumes; the first limit reached stops
    batch_size: int = 32
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0: export the raw weights
    precision: str = "auto"  # auto: bf16-mixed on a GPU with bf16, else 32-true
    accelerator: str = "auto"
    log_every: int = 50
    checkpoint_every: int = 200
    threads: int | None = None
    workers: int = 0
    seed: int = 0
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float16"

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay={self.ema_decay} must be in [0, 1)")


class DiffusionModule(L.LightningModule):
    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor],
                 cfg: DiffusionTrainConfig, out: str | Path, export: Callable[[nn.Module, Path], None],
                 run_config: dict | None = None):
        super().__init__()
        self.model, self.loss_fn, self.cfg, self.out, self.export = model, loss_fn, cfg, Path(out), export
        self.ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
                    if cfg.ema_decay else None)
        self.run_config = run_config
        self.elapsed = 0.0
        self._elapsed_before = self._run_start = 0.0
        self._loss_sum, self._count, self._items = 0.0, 0, 0
        self._interval_start = time.perf_counter()

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        other = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(0.9, 0.99))

    def on_fit_start(self):
        if self.run_config is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "run.json").write_text(json.dumps(self.run_config, indent=2) + "\n")

    def on_train_start(self):
        self._run_start, self._elapsed_before = time.perf_counter(), self.elapsed
        self._interval_start = time.perf_counter()

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step >= self.cfg.steps or (self.cfg.max_minutes and self.elapsed >= 60 * self.cfg.max_minutes):
            self.trainer.should_stop = True
            return -1
        for group in self.optimizers().param_groups:
            group["lr"] = self.cfg.lr * lr_factor(self.global_step, self.cfg, self.elapsed)

    def training_step(self, batch, batch_idx):
        loss = self.loss_fn(self.model, batch)
        self._loss_sum += float(loss.detach())
        self._count += 1
        self._items += self.cfg.batch_size
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.elapsed = self._elapsed_before + time.perf_counter() - self._run_start
        if self.global_step % self.cfg.log_every == 0:
            self._log()

    def _log(self):
        if not self._count:
            return
        row = {"step": self.global_step, "minutes": round(self.elapsed / 60, 3), "loss": self._loss_sum / self._count,
               "lr": self.optimizers().param_groups[0]["lr"],
               "items_per_s": round(self._items / max(time.perf_counter() - self._interval_start, 1e-9), 2)}
        self._loss_sum, self._count, self._items = 0.0, 0, 0
        self._interval_start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def trained_model(self) -> nn.Module:
        """The weights to ship: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def on_train_end(self):
        self._log()
        model = self.trained_model()
        was_training = model.training
        model.eval()
        self.export(model, self.out / "model")
        model.train(was_training)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["videolm"] = {"elapsed": self.elapsed}

    def on_load_checkpoint(self, checkpoint):
        self.elapsed = float(checkpoint.get("videolm", {}).get("elapsed", 0.0))


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor], data: Dataset,
        cfg: DiffusionTrainConfig, out: str | Path, export: Callable[[nn.Module, Path], None],
        collate_fn=None, run_config: dict | None = None) -> Path:
    """Train ``model`` on ``data`` by ``loss_fn``, resuming from OUT/checkpoints/last.ckpt if present;
    ``export(trained_model, OUT/model)`` writes the result. Returns OUT/model."""
    out = Path(out)
    if len(data) < cfg.batch_size:
        raise ConfigError(f"train.batch_size={cfg.batch_size} is more than the {len(data)} training items")
    _quiet()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = DiffusionModule(model, loss_fn, cfg, out, export, run_config)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers, drop_last=True,
                        collate_fn=collate_fn, persistent_workers=cfg.workers > 0)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "checkpoints", save_last=True,
                                                     every_n_train_steps=cfg.checkpoint_every, save_top_k=0)
    trainer = L.Trainer(
        max_epochs=-1, max_steps=cfg.steps, accelerator=cfg.accelerator, devices=1,
        precision=resolve_precision(cfg), gradient_clip_val=cfg.grad_clip or None, gradient_clip_algorithm="norm",
        logger=False, callbacks=[checkpoint], enable_progress_bar=os.isatty(2), enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=out,
    )
    last = out / "checkpoints" / "last.ckpt"
    trainer.fit(module, loader, ckpt_path=str(last) if last.exists() else None)
    return out / "model"
