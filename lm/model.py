"""The prefix language model: a Llama-form decoder that *is* a `transformers` model.

`VideoLM` subclasses `LlamaForCausalLM` and adds no parameters and no numerics of its own, so
its outputs equal `LlamaForCausalLM`'s on the same weights, and ``save_pretrained`` /
``from_pretrained`` (safetensors), PEFT's LoRA and the rest of the Hugging Face tooling work on
it unchanged. Sizes are named presets of `LMConfig`; `to_llama_config` turns one into the
`LlamaConfig` that the checkpoint's ``config.json`` holds, and `VideoLM.lm_config` reads it back.

Prefix-LM attention (`videolm.lm.masks`) reaches the model as an additive 4D mask, which
transformers passes through to its attention as it is: `VideoLM.logits` does the conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from videolm.core.errors import ConfigError, UsageError
from videolm.core.saving import check_weights, read_json, weights_file
from videolm.lm.masks import attention_bias
from videolm.lm.positions import AXES, CONFIG_KEY, KINDS, GridRotaryEmbedding, positions_of


@dataclass
class LMConfig:
    """Sizes of the decoder. Plain JSON types only; derived fields are filled in `__post_init__`."""

    vocab_size: int = 8832  # the Shapes vocabulary (8783 ids) rounded up to a multiple of 64
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention when < n_heads; None: = n_heads
    ffn_hidden: int | None = None  # SwiGLU width; None: 8/3 d_model rounded up to ffn_multiple_of
    ffn_multiple_of: int = 64
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    pad_id: int = 0  # the vocabulary's <pad>, <bos>, <eos> (videolm.tokenizers.vocab.SPECIALS order)
    bos_id: int = 1
    eos_id: int = 2
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    # "sequence": RoPE at each token's index; "grid": video tokens at (t, h, w) (M-RoPE, lm/positions.py)
    positions: Literal["sequence", "grid"] = "sequence"

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.ffn_hidden is None:
            self.ffn_hidden = -(-8 * self.d_model // (3 * self.ffn_multiple_of)) * self.ffn_multiple_of
        sizes = {f: getattr(self, f) for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                                                "ffn_hidden", "ffn_multiple_of", "max_seq_len")}
        small = [f"{k}={v}" for k, v in sizes.items() if v < 1]
        if small:
            raise UsageError(f"LMConfig: {', '.join(small)}: sizes must be at least 1")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise UsageError(f"LMConfig: d_model={self.d_model} must split into n_heads={self.n_heads} "
                             "heads of even size (RoPE rotates pairs)")
        if self.n_heads % self.n_kv_heads:
            raise UsageError(f"LMConfig: n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.positions not in KINDS:
            raise UsageError(f"LMConfig: positions={self.positions!r}: choose from {', '.join(KINDS)}")
        if self.positions == "grid" and (self.d_model // self.n_heads) // 2 < AXES:
            raise UsageError(f"LMConfig: grid positions need at least {AXES} rotary frequencies per head")
        if max(self.pad_id, self.bos_id, self.eos_id) >= self.vocab_size:
            raise UsageError(f"LMConfig: special ids must be below vocab_size={self.vocab_size}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> LMConfig:
        if name not in PRESETS:
            raise UsageError(f"unknown LM preset {name!r}; choose from {', '.join(PRESETS)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(f"unknown LMConfig field {unknown[0]!r}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def num_params(self) -> int:
        """Parameter count of the model this config builds, without building it."""
        d, h, kv = self.d_model, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        attention = d * h + 2 * d * kv + h * d
        layer = attention + 3 * d * self.ffn_hidden + 2 * d
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * layer + embeddings + d


# Shapes chosen by parameter count at the default vocabulary (`LMConfig.num_params`).
PRESETS: dict[str, dict] = {
    # For tests: grouped-query attention on, so the engine's GQA path is exercised. 0.1 M.
    "debug": dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128,
                  max_seq_len=512),
    # The default CPU model: 10.9 M (6.4 M in the blocks, 4.5 M in embeddings and head).
    "tiny": dict(d_model=256, n_layers=8, n_heads=4),
    # 98 M
    "small": dict(d_model=768, n_layers=12, n_heads=12, ffn_hidden=2048),
    # 322 M
    "base": dict(d_model=1024, n_layers=24, n_heads=16, max_seq_len=4096),
    # 1.0 B, Llama-3.2-1B's block shape: 32 query heads over 8 key/value heads.
    "large": dict(d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden=8192, max_seq_len=4096),
}


def to_llama_config(cfg: LMConfig) -> LlamaConfig:
    """The `transformers` config of the model `cfg` describes (grid positions: one more key,
    `videolm.lm.positions.CONFIG_KEY`; a sequence-position config is plain Llama's)."""
    extra = {CONFIG_KEY: cfg.positions} if cfg.positions != "sequence" else {}
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        initializer_range=cfg.init_std,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=cfg.pad_id,
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
        attn_implementation=cfg.attn_implementation,
        **extra,
    )


def from_llama_config(llama: LlamaConfig) -> LMConfig:
    """Read an `LMConfig` back from a `LlamaConfig` (e.g. one loaded from a checkpoint)."""
    rope = llama.rope_parameters or {}
    if rope.get("rope_type", "default") != "default" or llama.hidden_act != "silu":
        raise UsageError("this checkpoint uses a RoPE scaling or activation that LMConfig does not describe")
    if llama.head_dim != llama.hidden_size // llama.num_attention_heads:
        raise UsageError(f"this checkpoint's head_dim={llama.head_dim} is not hidden_size / heads, as LMConfig has it")
    eos = llama.eos_token_id[0] if isinstance(llama.eos_token_id, list) else llama.eos_token_id
    impl = llama._attn_implementation if llama._attn_implementation in ("sdpa", "eager") else "sdpa"
    return LMConfig(
        vocab_size=llama.vocab_size, d_model=llama.hidden_size, n_layers=llama.num_hidden_layers,
        n_heads=llama.num_attention_heads, n_kv_heads=llama.num_key_value_heads,
        ffn_hidden=llama.intermediate_size, rope_theta=rope.get("rope_theta", 10000.0),
        max_seq_len=llama.max_position_embeddings, norm_eps=llama.rms_norm_eps,
        tie_embeddings=llama.tie_word_embeddings, init_std=llama.initializer_range,
        pad_id=_or(llama.pad_token_id, 0), bos_id=_or(llama.bos_token_id, 1), eos_id=_or(eos, 2),
        attn_implementation=impl, positions=positions_of(llama),
    )


def _or(value, default):
    return default if value is None else value


class VideoLM(LlamaForCausalLM):
    """`LlamaForCausalLM` with a prefix-LM entry point. Same weights, same numerics, same files.
    A config with grid positions gets `GridRotaryEmbedding` in place of Llama's rotary module (no weights:
    the files stay Llama's; position ids may then be ``(B, T, 3)``)."""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        if positions_of(config) == "grid":
            self.model.rotary_emb = GridRotaryEmbedding(config)

    @classmethod
    def from_lm_config(cls, cfg: LMConfig | str, **overrides) -> VideoLM:
        """A freshly initialised model of preset ``cfg`` (a name or an `LMConfig`)."""
        if isinstance(cfg, str):
            cfg = LMConfig.from_name(cfg, **overrides)
        elif overrides:
            raise UsageError("overrides apply to a preset name, not to an LMConfig")
        return cls(to_llama_config(cfg))

    @property
    def lm_config(self) -> LMConfig:
        return from_llama_config(self.config)

    def logits(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, T, V)`` of ``ids (B, T)`` under a boolean attention ``mask (B, 1, T, T)``
        (True: may attend; None: causal) at RoPE ``positions (B, T)``, or ``(B, T, 3)`` for a model
        with grid positions (None: 0..T-1)."""
        if ids.dim() != 2:
            raise UsageError(f"ids must be (batch, length), got shape {tuple(ids.shape)}")
        if positions is not None and positions.dim() == 3:
            if positions_of(self.config) != "grid":
                raise UsageError("(batch, length, 3) positions need a model with grid positions")
            if mask is None:  # transformers reads 2D position ids for its own causal mask; give it one
                mask = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device).tril()[None, None]
        bias = None if mask is None else attention_bias(mask, self.dtype)  # (B, 1, T, T)
        return self(input_ids=ids, attention_mask=bias, position_ids=positions, use_cache=False).logits


def load_videolm(folder: str | Path) -> VideoLM:
    """A saved `VideoLM` (safetensors only), its config and weights checked before anything is
    allocated; every failure is one line naming the file. Transformers' progress bar and load
    report stay off stderr."""
    folder = Path(folder)
    config_path = folder / "config.json"
    data = read_json(config_path, f"{folder}: no config.json (not a saved language model)")
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path}: not a model config (a JSON object is needed)")
    try:
        llama = LlamaConfig.from_dict(data)
        from_llama_config(llama)  # sizes positive and consistent
    except Exception as e:  # noqa: BLE001  (transformers and our checks raise many kinds; one line each)
        raise ConfigError(f"{config_path}: not a valid language-model config ({_first(e)[:200]})") from None
    path = weights_file(folder)
    with torch.device("meta"):
        shell = VideoLM(llama)
    if llama.tie_word_embeddings:
        shell.lm_head = torch.nn.Identity()  # tied: the file holds the embedding once
    check_weights(path, shell, config_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        return VideoLM.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"{folder}: cannot load the language model ({_first(e)[:200]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _first(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


__all__ = ["PRESETS", "LMConfig", "VideoLM", "from_llama_config", "load_videolm", "to_llama_config"]
