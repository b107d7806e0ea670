"""What differs between training (and measuring) a video tokenizer and an audio one: how a batch becomes
a tensor (random space-time crops in training), the reconstruction loss, the metrics, how codes
count toward codebook usage, and the samples written to look at. `videolm.train.tokenizer_module`
trains either; `videolm.evaluation.tokenizer` measures either."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from videolm.core.metrics import psnr_per_clip, ssim_per_clip
from videolm.data.media import write_audio, write_grid, write_video
from videolm.tokenizers.audio import frequency_agreement, stft_distance
from videolm.tokenizers.video import to_frames


def video_batch(batch: dict) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) in [-1, 1]."""
    return batch["video"].permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


class VideoModality:
    """Video clips; training may use random space-time crops (the tokenizer is fully convolutional,
    so it learns the same operators on cheaper inputs and still encodes whole clips)."""

    name = "video"

    def __init__(self, crop_frames: int | None = None, crop_size: int | None = None):
        self.crop_frames, self.crop_size = crop_frames, crop_size

    def inputs(self, batch: dict, train: bool) -> torch.Tensor:
        x = video_batch(batch)  # (B, 3, T, H, W)
        if not train:
            return x
        _, _, t, h, w = x.shape
        if self.crop_frames and self.crop_frames < t:
            start = int(torch.randint(0, t - self.crop_frames + 1, ()))
            x = x[:, :, start:start + self.crop_frames]
        if self.crop_size and self.crop_size < min(h, w):
            top = 8 * int(torch.randint(0, (h - self.crop_size) // 8 + 1, ()))
            left = 8 * int(torch.randint(0, (w - self.crop_size) // 8 + 1, ()))
            x = x[..., top:top + self.crop_size, left:left + self.crop_size]
        return x

    def loss(self, x, recon, cfg, model) -> tuple[torch.Tensor, dict]:  # cfg: the training section
        # Pixels are clamped to [-1, 1] when decoded, so an output beyond the range costs nothing
        # where the target sits on the bound (black stays exactly black): the error is taken after a
        # straight-through clamp, whose gradient still pulls an out-of-range pixel back when needed.
        recon = recon + (recon.clamp(-1, 1) - recon).detach()
        err = recon - x  # (B, 3, T, H, W)
        l1, mse = err.abs().mean(), err.pow(2).mean()
        logs = {"l1": l1.item(), "mse": mse.item()}
        if cfg.contrast_weight:
            # Small objects on a plain background are a sliver of the pixels, so a plain mean
            # error learns them last; weighting pixels by how far they sit from the frame's
            # median (a cheap saliency) makes them count from the start.
            median = x.flatten(3).median(dim=3).values[..., None, None]  # (B, 3, T, 1, 1)
            weight = 1 + cfg.contrast_weight * (x - median).abs().mean(1, keepdim=True)  # (B, 1, T, H, W)
            weight = weight / weight.mean()
            l1, mse = (weight * err.abs()).mean(), (weight * err.pow(2)).mean()
        return cfg.l1_weight * l1 + cfg.mse_weight * mse, logs

    def metrics(self, x, recon) -> dict[str, torch.Tensor]:
        return {"psnr": psnr_per_clip(x, recon), "ssim": ssim_per_clip(x, recon)}

    @staticmethod
    def flat_codes(codes: torch.Tensor) -> torch.Tensor:  # (B, t, n) -> (B*t*n,): one codebook
        return codes.reshape(-1)

    def write_samples(self, x, recon, stem: Path) -> None:
        """A PNG grid (originals above, reconstructions below) and a GIF (original | reconstruction)."""
        n = min(4, x.shape[0])
        orig, rec = to_frames(x[:n]), to_frames(recon[:n].clamp(-1, 1))  # (n, T, H, W, 3)
        write_grid(stem.with_suffix(".png"), np.concatenate([orig, rec]))
        write_video(stem.with_suffix(".gif"), np.concatenate([orig[0], rec[0]], axis=2), fps=8)


class AudioModality:
    name = "audio"

    def __init__(self, crop_seconds: float = 1.0, sample_rate: int = 16000):
        self.crop_seconds, self.sample_rate = crop_seconds, sample_rate

    def inputs(self, batch: dict, train: bool) -> torch.Tensor:
        audio = batch["audio"].float()  # (B, S)
        n = int(self.crop_seconds * self.sample_rate)
        if train and audio.shape[1] > n:
            start = int(torch.randint(0, audio.shape[1] - n + 1, ()).item())
            audio = audio[:, start:start + n]
        return audio

    def loss(self, x, recon, cfg, model) -> tuple[torch.Tensor, dict]:  # cfg: the training section
        return model.reconstruction_loss(x, recon)

    def metrics(self, x, recon) -> dict[str, torch.Tensor]:
        xs, rs = x.float().cpu().numpy(), recon.float().cpu().numpy()
        agree = [float(frequency_agreement(a, b, 16000)) for a, b in zip(xs, rs)]
        strict = [float(frequency_agreement(a, b, 16000, tie_db=None)) for a, b in zip(xs, rs)]
        dist = [float(stft_distance(a, b)) for a, b in zip(xs, rs)]
        return {"frequency_agreement": torch.tensor(agree), "frequency_agreement_strict": torch.tensor(strict),
                "stft_distance": torch.tensor(dist)}

    @staticmethod
    def flat_codes(codes: torch.Tensor) -> torch.Tensor:  # (B, F, Q) -> (B*F, Q): one codebook per level
        return codes.reshape(-1, codes.shape[-1])

    def write_samples(self, x, recon, stem: Path) -> None:
        """Audio: a wav of the first original and its reconstruction, one after the other."""
        both = torch.cat([x[0], recon[0].clamp(-1, 1)]).float().cpu().numpy()
        write_audio(stem.with_suffix(".wav"), both)


def codebook_stats(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage (fraction of codes ever used) and perplexity (exp of the code entropy).

    `codes` is flat (N,) for one codebook, or (N, Q) for Q residual levels (averaged over levels).
    """
    levels = codes.reshape(-1, 1) if codes.ndim == 1 else codes
    usage, perplexity = [], []
    for q in range(levels.shape[1]):
        counts = torch.bincount(levels[:, q].long(), minlength=codebook_size).float()
        p = counts / counts.sum()
        usage.append((counts > 0).float().mean().item())
        perplexity.append(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()).item())
    return {"codebook_usage": float(np.mean(usage)), "perplexity": float(np.mean(perplexity))}


def collate_clips(items: list[dict]) -> dict:
    return {
        "video": torch.from_numpy(np.stack([it["video"] for it in items])),  # (B, T, H, W, 3) uint8
        "audio": torch.from_numpy(np.stack([it["audio"] for it in items])),  # (B, S) float32
    }


__all__ = ["AudioModality", "VideoModality", "codebook_stats", "collate_clips", "video_batch"]
