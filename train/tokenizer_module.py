"""Training the media tokenizers with Lightning: `videolm tokenizer fit --config configs/tokenizer/NAME.yaml`.

One Lightning module serves both modalities; what differs (how a batch becomes a tensor, the
reconstruction loss, the metrics) sits in a small per-modality adapter. The run folder holds::

    OUT/checkpoints/last.ckpt   weights, optimizers, budget, random state, data position: a rerun
                                resumes exactly (`videolm.core.training`)
    OUT/samples/step_NNNNNN.png reconstruction grids (video: originals above, reconstructions below)
    OUT/metrics.jsonl           one JSON line per log step and per validation
    OUT/model/                  the trained tokenizer, save_pretrained format (safetensors + config.json)

Video loss: L1 + MSE on pixels, the quantizer's aux loss (LFQ entropy / commitment), and, if
enabled, a hinge GAN loss from a 3D patch discriminator switched on after `start_step` steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from videolm.core.config import check_range
from videolm.core.errors import ConfigError
from videolm.core.training import RunModule, TrainArgs, fit_run, lr_factor, resolve_precision
from videolm.tokenizers.modality import AudioModality, VideoModality, codebook_stats, collate_clips

# ------------------------------------------------------------------------------------- configs


@dataclass
class AdversarialConfig:
    enabled: bool = False
    start_step: int = 2000  # the discriminator and its loss switch on after this many steps
    weight: float = 0.1
    channels: int = 32
    lr: float = 2e-4

    def __post_init__(self):
        check_range(self, 0, None, "start_step", "weight")
        check_range(self, 1, None, "channels")
        check_range(self, 0, None, "lr", low_open=True)


@dataclass
class TrainConfig(TrainArgs):
    steps: int = field(default=20_000, metadata={"flags": ["--steps"]})  # optimizer steps
    batch_size: int = field(default=8, metadata={"flags": ["--batch-size"]})  # clips per step
    precision: str = "32-true"  # "bf16-mixed" where the hardware has it
    checkpoint_every: int = 100  # checkpoints/last.ckpt (what a rerun resumes from) every N steps
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    contrast_weight: float = 0.0  # video: extra loss weight on pixels that differ from their frame's median
    aux_weight: float = 1.0
    audio_crop_seconds: float = 1.0  # audio trains on random crops of this length
    video_crop_frames: int | None = None  # video trains on random windows of 1 + 4k frames (None: whole clips)
    video_crop_size: int | None = None  # ... and random square crops of this size, a multiple of 8 (None: whole)
    val_every: int = 500  # validation, sample grids and GIFs, and model export every N steps
    val_clips: int = 32
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    freeze_encoder: bool = False  # train the decoder only: the codes stay as they are (a decoder fine-tuning stage)
    strategy: Literal["auto", "ddp"] = "auto"  # ddp: data-parallel over `devices` processes (GPUs, or CPU + gloo)
    devices: int | str = 1  # processes (GPUs) per machine; "auto": every GPU
    num_nodes: int = 1  # machines
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)

    def __post_init__(self):
        super().__post_init__()
        check_range(self, 1, None, "val_every", "val_clips", "num_nodes")
        check_range(self, 0, None, "l1_weight", "mse_weight", "contrast_weight", "aux_weight")
        check_range(self, 0, None, "audio_crop_seconds", low_open=True)
        if self.video_crop_frames is not None and (self.video_crop_frames < 1 or (self.video_crop_frames - 1) % 4):
            raise ConfigError(f"video_crop_frames={self.video_crop_frames} must be 1 + 4k (1, 5, 9, ...)")
        if self.video_crop_size is not None and (self.video_crop_size < 8 or self.video_crop_size % 8):
            raise ConfigError(f"video_crop_size={self.video_crop_size} must be a multiple of 8")


# ------------------------------------------------------------------------------------ modalities


# --------------------------------------------------------------------------------- discriminator


class PatchDiscriminator3d(nn.Module):
    """A 3D patch discriminator: real/fake logits for overlapping space-time patches."""

    def __init__(self, channels: int = 32):
        super().__init__()
        c = channels

        def block(cin, cout, stride):
            return [nn.Conv3d(cin, cout, 4, stride=stride, padding=1), nn.GroupNorm(min(8, cout // 4), cout), nn.LeakyReLU(0.2)]

        self.net = nn.Sequential(
            nn.Conv3d(3, c, (3, 4, 4), stride=(1, 2, 2), padding=1), nn.LeakyReLU(0.2),
            *block(c, 2 * c, (2, 2, 2)), *block(2 * c, 4 * c, (2, 2, 2)),
            nn.Conv3d(4 * c, 1, 3, padding=1),
        )

    def forward(self, x):  # (B, 3, T, H, W) -> (B, 1, T', H', W')
        return self.net(x)


# ----------------------------------------------------------------------------------- the module


class TokenizerModule(RunModule):
    """Trains a media tokenizer; manual optimization so the GAN's two optimizers stay explicit.
    Every ``val_every`` steps (and at the end) it measures the held-out clips, writes sample
    grids and exports the model."""

    def __init__(self, model: nn.Module, modality, cfg: TrainConfig, out: Path, val_batches: list[dict]):
        super().__init__(cfg, out)
        self.model, self.modality = model, modality
        self.automatic_optimization = False
        self.discriminator = PatchDiscriminator3d(cfg.adversarial.channels) if cfg.adversarial.enabled else None
        if cfg.freeze_encoder:  # before Lightning wraps the model (DDP registers what needs gradients)
            for part in self._frozen():
                part.requires_grad_(False)
        self.val_batches = val_batches
        self._validated_at = -1
        self._t0, self._clips = time.perf_counter(), 0

    def _frozen(self) -> list[nn.Module]:
        return [self.model.encoder, self.model.bottleneck] if self.cfg.freeze_encoder else []

    # -- optimization
    def configure_optimizers(self):
        cfg = self.cfg
        params = self.model.decoder.parameters() if cfg.freeze_encoder else self.model.parameters()
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        if self.discriminator is None:
            return opt
        return [opt, torch.optim.AdamW(self.discriminator.parameters(), lr=cfg.adversarial.lr, betas=(0.5, 0.9))]

    def on_train_start(self):
        super().on_train_start()
        self._t0 = time.perf_counter()

    def training_step(self, batch, batch_idx):
        cfg, step = self.cfg, self.steps_done
        opts = self.optimizers()
        opt = opts[0] if isinstance(opts, list) else opts
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg, self.elapsed_now())
        x = self.modality.inputs(batch, train=True)
        for part in self._frozen():
            part.eval()  # a VQ codebook's EMA and dead-code revival stay still too
        out = self.model(x)
        recon_loss, logs = self.modality.loss(x, out.recon, cfg, self.model)
        loss = recon_loss + cfg.aux_weight * out.aux_loss
        gan = self.discriminator is not None and step >= cfg.adversarial.start_step
        if gan:
            g_loss = -self.discriminator(out.recon).mean()
            loss = loss + cfg.adversarial.weight * g_loss
            logs["g_loss"] = g_loss.item()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=cfg.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        if gan:
            logs["d_loss"] = self._discriminator_step(opts[1], x, out.recon.detach())
        self._clips += x.shape[0]
        self._last = (loss.detach(), out.aux_loss.detach(), logs, opt)
        return loss

    def after_step(self, step: int) -> None:
        if step % self.cfg.log_every == 0:
            self._log_train(step, *self._last)
        if step % self.cfg.val_every == 0 or step == self.cfg.steps:
            self._validate_and_export(step)

    def finish(self) -> None:
        self._validate_and_export(self.steps_done)

    def extra_state(self) -> dict:
        return {"validated_at": self._validated_at}

    def load_extra_state(self, state: dict) -> None:
        self._validated_at = int(state.get("validated_at", -1))

    def _discriminator_step(self, d_opt, real, fake) -> float:
        d_loss = F.relu(1 - self.discriminator(real)).mean() + F.relu(1 + self.discriminator(fake)).mean()
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        d_opt.step()
        return d_loss.item()

    def _log_train(self, step, loss, aux, logs, opt):
        elapsed = time.perf_counter() - self._t0
        row = {"step": step, "minutes": round(self.elapsed / 60, 2), "loss": loss.item(), "aux": aux.item(),
               "lr": opt.param_groups[0]["lr"],
               "clips_per_s": self._clips / max(elapsed, 1e-9), **logs}
        self._t0, self._clips = time.perf_counter(), 0
        self._append_metrics(row)

    # -- validation
    @torch.no_grad()
    def _validate_and_export(self, step: int) -> None:
        """Held-out reconstruction metrics (one line), sample grids of the first batch, the model."""
        if step == self._validated_at:
            return
        self._validated_at = step
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        values: dict[str, list] = {}
        codes = []
        for i, batch in enumerate(self.val_batches):
            x = self.modality.inputs({k: v.to(self.device) for k, v in batch.items()}, train=False)
            out = self.model(x)
            for k, v in self.modality.metrics(x, out.recon).items():
                values.setdefault(k, []).append(v.float().cpu())
            codes.append(self.modality.flat_codes(out.codes.cpu()))
            if i == 0 and self.trainer.is_global_zero:
                self.modality.write_samples(x, out.recon, self.out / "samples" / f"step_{step:06d}")
        self.model.train(was_training)
        if codes:
            row = {"step": step, **{f"val_{k}": torch.cat(v).mean().item() for k, v in values.items()},
                   **codebook_stats(torch.cat(codes), self.model.config.codebook_size)}
            self._append_metrics(row)
        self._export()
        self.finish_cost = time.perf_counter() - start  # the run's end does this again: the budget keeps room
        self._t0 += time.perf_counter() - start  # throughput counts training time only

    # -- outputs
    def _append_metrics(self, row: dict):
        if self.trainer.is_global_zero:
            self.metrics.append(row)

    def _export(self):
        if self.trainer.is_global_zero:
            self.model.save_pretrained(self.out / "model", dtype=self.cfg.save_dtype)


# ------------------------------------------------------------------------------------------ fit


def fit(model: nn.Module, modality: str, cfg: TrainConfig, train_data: Dataset, val_data: Dataset,
        out: str | Path, run_config: dict | None = None) -> Path | None:
    """Train (resuming exactly from OUT/checkpoints/last.ckpt if present); returns OUT/model (None
    in the other processes of a data-parallel run)."""
    if modality == "video":
        adapter = VideoModality(cfg.video_crop_frames, cfg.video_crop_size)
    else:
        adapter = AudioModality(cfg.audio_crop_seconds)
    items = [val_data[i] for i in range(min(len(val_data), cfg.val_clips))]
    val_batches = [collate_clips(items[i:i + cfg.batch_size]) for i in range(0, len(items), cfg.batch_size)]
    module = TokenizerModule(model, adapter, cfg, Path(out), val_batches)
    trainer = fit_run(module, train_data, cfg, "tokenizer fit", collate_clips, precision=resolve_precision(cfg),
            devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy, run_config=run_config)
    return Path(out) / "model" if trainer.is_global_zero else None
