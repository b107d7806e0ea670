"""SoundStream-style audio tokenizer: a 1D conv autoencoder with a residual vector quantizer.

After Zeghidour et al., "SoundStream: An End-to-End Neural Audio Codec" (arXiv:2107.03312),
without the adversarial losses: a strided conv encoder turns 16 kHz mono audio into one latent
vector per ``hop`` samples (``hop = prod(strides)``, 320 -> 50 frames/s), a residual VQ
(``vector_quantize_pytorch.ResidualVQ``, 4 levels x 1024 codes) turns each latent into 4 code
ids, and a mirrored transposed-conv decoder turns the summed codes back into a waveform.

Codes are laid out ``(B, F, Q)``: audio frame by audio frame, level 0 (coarsest) to Q-1. A 2.125 s
Shapes clip (34000 samples) gives F = ceil(34000 / 320) = 107 frames, i.e. 107 x 4 = 428 tokens.

The module-level metrics (`stft_distance`, `dominant_frequency`, `frequency_agreement`) are what
evaluation uses to score a reconstruction against its reference.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import ResidualVQ

from videolm.core.errors import ConfigError
from videolm.core.saving import Pretrained, TokenizerOutput


@dataclass
class AudioTokenizerConfig:
    """Sizes, quantizer options and loss weights of an `AudioTokenizer`. Plain JSON types only."""

    name: str = "default"
    sample_rate: int = 16000
    strides: list[int] = field(default_factory=lambda: [2, 4, 5, 8])  # encoder order; decoder mirrors it
    channels: int = 8  # width of the first (full-rate) stage
    max_channels: int = 128  # channels double per stride up to this cap
    stage_channels: list[int] | None = None  # derived: width at each rate, len(strides) + 1
    latent_dim: int = 64  # the dimension the quantizer sees (= codebook dimension)
    kernel_size: int = 7  # residual units' dilated convs
    dilations: list[int] = field(default_factory=lambda: [1, 3, 9])
    hop: int | None = None  # derived: samples per token frame, prod(strides)
    # quantizer (vector-quantize-pytorch VectorQuantize options, per level)
    num_quantizers: int = 4
    codebook_size: int = 1024
    kmeans_init: bool = True  # SoundStream: codebooks start as k-means of the first training batch
    kmeans_iters: int = 10
    codebook_decay: float = 0.95  # EMA decay of the codebook updates
    # Codes whose EMA usage (vectors per step) falls below this are re-seeded from the batch. Keep it
    # well under (batch frames) / codebook_size, or codes in steady use get replaced every step.
    threshold_ema_dead_code: float = 0.1
    commitment_weight: float = 1.0
    # Reconstruction loss. On Shapes (pure tones), a log term floored 45-60 dB under the peak, or
    # the STFT terms without the waveform L1, stalled training at a near-silent output for
    # hundreds of steps; L1 + SC + log-magnitude floored at 30 dB learns the tones in ~300 steps.
    waveform_weight: float = 1.0  # L1 on samples
    sc_weight: float = 1.0  # multi-resolution STFT spectral convergence
    log_mag_weight: float = 1.0  # multi-resolution STFT log-magnitude L1
    stft_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    stft_eps: float = 1e-5  # absolute magnitude floor before the log
    stft_range_db: float | None = 30.0  # also floor magnitudes this far below each reference's peak

    def __post_init__(self):
        if not self.strides or any(s < 2 for s in self.strides):
            raise ConfigError(f"strides={self.strides}: need at least one stride, each >= 2")
        if min(self.channels, self.max_channels, self.latent_dim, self.num_quantizers, self.codebook_size) < 1:
            raise ConfigError("channels, max_channels, latent_dim, num_quantizers and codebook_size must be >= 1")
        if self.codebook_size > 2**20 or self.num_quantizers > 64:
            raise ConfigError(f"codebook_size={self.codebook_size}, num_quantizers={self.num_quantizers}: at most "
                              "2^20 codes and 64 levels")
        if self.kernel_size % 2 == 0 or not self.dilations:
            raise ConfigError(f"kernel_size={self.kernel_size} must be odd and dilations non-empty")
        if self.stage_channels is None:
            self.stage_channels = [min(self.channels * 2**i, self.max_channels) for i in range(len(self.strides) + 1)]
        if len(self.stage_channels) != len(self.strides) + 1:
            raise ConfigError(f"stage_channels={self.stage_channels}: need len(strides) + 1 = {len(self.strides) + 1} widths")
        hop = math.prod(self.strides)
        if self.hop is not None and self.hop != hop:
            raise ConfigError(f"hop={self.hop} does not match strides {self.strides} (product {hop})")
        self.hop = hop
        if not self.stft_sizes or any(n < 16 for n in self.stft_sizes):
            raise ConfigError(f"stft_sizes={self.stft_sizes}: need at least one FFT size, each >= 16")

    @property
    def frame_rate(self) -> float:
        """Token frames per second (50 for 16 kHz and hop 320)."""
        return self.sample_rate / self.hop

    @classmethod
    def from_name(cls, name: str, **overrides) -> AudioTokenizerConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown audio tokenizer preset {name!r} (choose from {', '.join(PRESETS)})")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    # 0.66 M parameters; 1.19 M values with the codebooks' buffers: 2.4 MB of fp16 weights.
    "default": dict(name="default"),
    # Tiny, for tests: same hop and token layout as default.
    "debug": dict(
        name="debug", channels=4, max_channels=16, latent_dim=8, kmeans_iters=2, stft_sizes=[256, 512]
    ),
}


# ------------------------------------------------------------------------------------- modules


class ResidualUnit(nn.Module):
    """ELU -> dilated conv -> ELU -> 1x1 conv, plus the input (SoundStream Fig. 2)."""

    def __init__(self, channels: int, dilation: int, cfg: AudioTokenizerConfig):
        super().__init__()
        k = cfg.kernel_size
        self.block = nn.Sequential(
            nn.ELU(),
            nn.Conv1d(channels, channels, k, dilation=dilation, padding=dilation * (k - 1) // 2),
            nn.ELU(),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x):  # (B, C, L)
        return x + self.block(x)


def residual_units(channels: int, cfg: AudioTokenizerConfig) -> list[nn.Module]:
    return [ResidualUnit(channels, d, cfg) for d in cfg.dilations]


def down(c_in: int, c_out: int, stride: int) -> nn.Conv1d:
    """Kernel 2*stride, output length exactly L / stride for L a multiple of stride."""
    return nn.Conv1d(c_in, c_out, 2 * stride, stride=stride, padding=(stride + 1) // 2)


def up(c_in: int, c_out: int, stride: int) -> nn.ConvTranspose1d:
    """Kernel 2*stride, output length exactly L * stride (the inverse of `down`)."""
    return nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride=stride, padding=(stride + 1) // 2, output_padding=stride % 2)


class Encoder(nn.Sequential):
    def __init__(self, cfg: AudioTokenizerConfig):
        ch = cfg.stage_channels
        layers: list[nn.Module] = [nn.Conv1d(1, ch[0], 7, padding=3)]
        for i, s in enumerate(cfg.strides):
            layers += [*residual_units(ch[i], cfg), nn.ELU(), down(ch[i], ch[i + 1], s)]
        layers += [nn.ELU(), nn.Conv1d(ch[-1], cfg.latent_dim, 3, padding=1)]
        super().__init__(*layers)


class Decoder(nn.Sequential):
    def __init__(self, cfg: AudioTokenizerConfig):
        ch = cfg.stage_channels
        layers: list[nn.Module] = [nn.Conv1d(cfg.latent_dim, ch[-1], 7, padding=3)]
        for i, s in reversed(list(enumerate(cfg.strides))):
            layers += [nn.ELU(), up(ch[i + 1], ch[i], s), *residual_units(ch[i], cfg)]
        layers += [nn.ELU(), nn.Conv1d(ch[0], 1, 7, padding=3)]
        super().__init__(*layers)


class AudioTokenizer(nn.Module, Pretrained):
    """Audio (B, S) at ``config.sample_rate`` <-> codes (B, F, Q), F = ceil(S / hop).

    With the default hop of 320, a 34000-sample Shapes clip becomes 107 frames x 4 levels = 428
    tokens. Inputs of any length are zero-padded at the end to a multiple of the hop; outputs are
    cropped back to S.

    The quantizer always runs in fp32, also under autocast: vector-quantize-pytorch's distances,
    k-means init and EMA updates are unreliable in fp16/bf16 (NaNs, codes dying).
    """

    config_class: ClassVar[type] = AudioTokenizerConfig
    kind: ClassVar[str] = "audio_tokenizer"

    def __init__(self, config: AudioTokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = ResidualVQ(
            dim=config.latent_dim,
            num_quantizers=config.num_quantizers,
            codebook_size=config.codebook_size,
            kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters,
            decay=config.codebook_decay,
            threshold_ema_dead_code=config.threshold_ema_dead_code,
            commitment_weight=config.commitment_weight,
        )

    # ---------------------------------------------------------------------------------- shapes

    @property
    def hop(self) -> int:
        return self.config.hop

    def num_frames(self, num_samples: int) -> int:
        """Token frames for ``num_samples`` samples: ceil(num_samples / hop)."""
        return -(-num_samples // self.hop)

    def _pad(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim != 2 or audio.shape[-1] < 1 or not audio.is_floating_point():
            raise ValueError(f"audio: expected a float (B, S) tensor with S >= 1, got {tuple(audio.shape)} {audio.dtype}")
        return F.pad(audio, (0, self.num_frames(audio.shape[-1]) * self.hop - audio.shape[-1]))  # (B, F * hop)

    # ------------------------------------------------------------------------------- quantizer

    def quantize(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents (B, F, D) -> (quantized (B, F, D) fp32, codes (B, F, Q) int64, aux loss scalar)."""
        with torch.autocast(device_type=latents.device.type, enabled=False), self._no_init_in_eval():
            quantized, codes, losses = self.quantizer(latents.float())  # (B, F, D), (B, F, Q), (Q,)
        return quantized, codes, losses.sum()

    @contextlib.contextmanager
    def _no_init_in_eval(self):
        """Keep eval-mode calls free of side effects.

        vector-quantize-pytorch runs its k-means init on the first forward in eval mode too, so an
        untrained model's first ``encode`` would rewrite its codebooks from that one input. In eval
        mode an uninitialised codebook is used as it is (all zeros: every code id 0) instead.
        """
        pending = [] if self.training else [vq._codebook for vq in self.quantizer.layers if not vq._codebook.initted]
        for codebook in pending:
            codebook.initted.fill_(True)
        try:
            yield
        finally:
            for codebook in pending:
                codebook.initted.fill_(False)

    # ----------------------------------------------------------------------------- public API

    def forward(self, audio: torch.Tensor) -> TokenizerOutput:
        """audio (B, S) -> TokenizerOutput(recon (B, S), codes (B, F, Q) int64, aux_loss scalar)."""
        num_samples = audio.shape[-1]
        latents = self.encoder(self._pad(audio)[:, None])  # (B, D, F)
        quantized, codes, aux_loss = self.quantize(latents.transpose(1, 2))  # (B, F, D), (B, F, Q)
        recon = self.decoder(quantized.transpose(1, 2))[:, 0, :num_samples]  # (B, S)
        return TokenizerOutput(recon, codes, aux_loss)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, S) -> codes (B, F, Q) int64, F = ceil(S / hop)."""
        latents = self.encoder(self._pad(audio)[:, None])  # (B, D, F)
        return self.quantize(latents.transpose(1, 2))[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """codes (B, F, Q) -> audio (B, num_samples); ``num_samples`` defaults to F * hop."""
        if codes.ndim != 3 or codes.shape[-1] != self.config.num_quantizers:
            raise ValueError(f"codes: expected (B, F, {self.config.num_quantizers}), got {tuple(codes.shape)}")
        if num_samples is not None and not 0 < num_samples <= codes.shape[1] * self.hop:
            raise ValueError(f"num_samples={num_samples}: {codes.shape[1]} frames hold 1..{codes.shape[1] * self.hop}")
        with torch.autocast(device_type=codes.device.type, enabled=False):
            quantized = self.quantizer.get_output_from_indices(codes.long())  # (B, F, D)
        return self.decoder(quantized.transpose(1, 2))[:, 0, :num_samples]  # (B, S)

    def reconstruction_loss(self, audio: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted L1 on the waveform + multi-resolution STFT loss (SC + log-magnitude L1).

        Computed in fp32. Returns the loss and float logs: ``l1``, ``sc``, ``log_mag``, ``loss``.
        Add the quantizer's ``aux_loss`` from `forward` for the full training objective.
        """
        cfg = self.config
        with torch.autocast(device_type=audio.device.type, enabled=False):
            audio, recon = audio.float(), recon.float()
            l1 = F.l1_loss(recon, audio)
            sc, log_mag = multi_resolution_stft_loss(audio, recon, cfg.stft_sizes, cfg.stft_eps, cfg.stft_range_db)
            loss = cfg.waveform_weight * l1 + cfg.sc_weight * sc + cfg.log_mag_weight * log_mag
        logs = dict(zip(("l1", "sc", "log_mag", "loss"), torch.stack([l1, sc, log_mag, loss]).tolist()))  # one sync
        return loss, logs


# ------------------------------------------------------------------------------------ STFT loss


def stft_magnitude(audio: torch.Tensor, n_fft: int) -> torch.Tensor:
    """|STFT| of (B, S) audio with a Hann window and hop n_fft / 4: (B, n_fft // 2 + 1, frames)."""
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(audio, n_fft, hop_length=n_fft // 4, window=window, return_complex=True,
                      pad_mode="constant")  # (B, bins, frames)
    return spec.abs().clamp_min(1e-8)  # the floor keeps the gradient of |.| finite at 0


def multi_resolution_stft_loss(audio, recon, sizes, eps: float = 1e-5, range_db: float | None = None):
    """(spectral convergence, log-magnitude L1) of (B, S) signals, each averaged over FFT ``sizes``.

    Spectral convergence ||S - S'||_F / ||S||_F and mean |log S - log S'| (Yamamoto et al. 2020,
    Parallel WaveGAN, arXiv:1910.11480). Before the log, magnitudes are floored at ``eps`` and, if
    ``range_db`` is given, at ``range_db`` below the reference's peak (per example): pure tones
    have spectra that are almost all floor, and without a relative floor the log term's gradient
    (1/|S'|) on those bins drowns out everything else. FFT sizes above the signal's length are
    skipped.
    """
    sizes = [n for n in sizes if n <= audio.shape[-1]] or [min(sizes)]
    sc = log_mag = 0.0
    for n_fft in sizes:
        ref, out = stft_magnitude(audio, n_fft), stft_magnitude(recon, n_fft)  # (B, bins, frames)
        sc = sc + torch.linalg.vector_norm(ref - out) / torch.linalg.vector_norm(ref).clamp_min(eps)
        floor = torch.full_like(ref[:, :1, :1], eps)  # (B, 1, 1)
        if range_db is not None:
            floor = floor.maximum(ref.detach().amax(dim=(1, 2), keepdim=True) * 10 ** (-range_db / 20))
        log_mag = log_mag + (ref.maximum(floor).log() - out.maximum(floor).log()).abs().mean()
    return sc / len(sizes), log_mag / len(sizes)


# -------------------------------------------------------------------------------------- metrics


def _as_batch(audio) -> torch.Tensor:
    """A numpy array or tensor, (S,) or (B, S), as a float32 (B, S) tensor."""
    t = audio.detach().float().cpu() if torch.is_tensor(audio) else torch.as_tensor(np.asarray(audio, np.float32))
    return t.reshape(-1, t.shape[-1])  # (B, S)


def stft_distance(ref, recon, sizes=(256, 512, 1024, 2048), range_db: float | None = 60.0) -> float:
    """Multi-resolution log-magnitude STFT L1 of ``recon`` against ``ref`` (lower is closer; 0 if equal).

    Both are numpy arrays or tensors of one shape, (S,) or (B, S). The mean of
    |log|STFT(ref)| - log|STFT(recon)|| (natural log) over bins, frames and FFT ``sizes`` (Hann
    window, hop n/4), with magnitudes floored at 1e-5 and at ``range_db`` below each reference's
    peak, so that differences far under the audible content (the floor of a pure tone) do not
    dominate the score.
    """
    ref, recon = _as_batch(ref), _as_batch(recon)
    if ref.shape != recon.shape:
        raise ValueError(f"stft_distance: shapes differ, {tuple(ref.shape)} vs {tuple(recon.shape)}")
    with torch.no_grad():
        return float(multi_resolution_stft_loss(ref, recon, list(sizes), 1e-5, range_db)[1])


def _spectrum(audio) -> np.ndarray:
    """Hann-windowed magnitude spectrum of a 1D signal (mean removed)."""
    x = np.asarray(audio.detach().cpu().float() if torch.is_tensor(audio) else audio, dtype=np.float64)
    if x.ndim != 1 or x.size < 4:
        raise ValueError(f"expected a 1D signal of >= 4 samples, got shape {x.shape}")
    return np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))


def _peak_frequency(mag: np.ndarray, k: int, sample_rate: int, size: int) -> float:
    """Bin k refined to sub-bin accuracy by a parabola through the log magnitudes around it."""
    lo, mid, hi = np.log(mag[k - 1 : k + 2] + 1e-12)
    denom = lo - 2 * mid + hi
    offset = 0.5 * (lo - hi) / denom if denom < 0 else 0.0
    return float((k + offset) * sample_rate / size)


def dominant_frequency(audio, sample_rate: int) -> float:
    """The frequency in Hz of the strongest spectral peak of a 1D signal (DC excluded)."""
    mag = _spectrum(audio)
    k = int(np.argmax(mag[1:-1])) + 1  # keep both neighbours inside the spectrum
    return _peak_frequency(mag, k, sample_rate, 2 * (mag.size - 1) + (len(audio) % 2))


def dominant_frequencies(audio, sample_rate: int, tie_db: float = 1.0) -> list[float]:
    """Every spectral peak within ``tie_db`` of the strongest one: the dominant frequency, or the
    tied ones when two tones are equally loud (e.g. two Shapes objects of the same size)."""
    mag = _spectrum(audio)
    inner = mag[1:-1]
    is_peak = (inner >= mag[:-2]) & (inner >= mag[2:]) & (inner >= inner.max() * 10 ** (-tie_db / 20))
    size = 2 * (mag.size - 1) + (len(audio) % 2)
    return [_peak_frequency(mag, int(k) + 1, sample_rate, size) for k in np.flatnonzero(is_peak)]


def frequency_agreement(ref, recon, sample_rate: int, tol: float = 0.03, tie_db: float | None = 1.0) -> bool:
    """True when the dominant frequency of ``recon`` is within ``tol`` (relative) of ``ref``'s.

    With ``tie_db`` (default 1 dB), any of ``ref``'s peaks within that much of its strongest counts:
    when two tones are equally loud, the dominant one is a matter of FFT scalloping, not of the
    signal. ``tie_db=None`` is the strict single-peak version.
    """
    found = dominant_frequency(recon, sample_rate)
    targets = [dominant_frequency(ref, sample_rate)] if tie_db is None else dominant_frequencies(ref, sample_rate, tie_db)
    return any(abs(found - f) <= tol * f for f in targets)


__all__ = [
    "PRESETS",
    "AudioTokenizer",
    "AudioTokenizerConfig",
    "dominant_frequency",
    "dominant_frequencies",
    "frequency_agreement",
    "multi_resolution_stft_loss",
    "stft_distance",
]
