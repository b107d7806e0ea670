"""Positions that carry the grid: 3D rotary positions for visual tokens (M-RoPE).

With the default ``positions="sequence"`` every token's RoPE position is its index in its example,
so a video token knows where it sits in time, height and width only through the count of tokens
before it and the ``<res:HxW>`` token, and the same index means another place at another size.
``positions="grid"`` gives each token three position components ``(t, h, w)`` instead, as Qwen2-VL's
multimodal RoPE does (Wang et al., 2024, "Qwen2-VL", section 2.1):

- a token outside a video run (task, size, text, audio, markers) has ``(p, p, p)``, ``p`` counting
  up by one per token, which is exactly 1D RoPE at ``p``;
- the k-th token of a video run (after ``<bov_i>`` or ``<bov_o>``, up to ``<eov_*>``; ``<mask>``
  tokens included) on a grid of ``gh x gw`` latent positions (from the last ``<res:HxW>``) has
  ``(p0 + t, p0 + h, p0 + w)`` with ``t, h, w`` its latent frame, row and column and ``p0`` the
  position after the run's opening token;
- the token after a run continues at one past the largest component in the run.

Each rotary frequency follows one of the three components. They are interleaved (frequency ``i``
follows component ``i mod 3``), as Qwen3-VL does, so each axis gets high and low frequencies alike
rather than one axis all the low ones. When the three components are equal this is plain RoPE, so
text-only sequences get exactly the sequence model's numbers.

A video run takes the grid only after a ``<res:HxW>`` token (every built-in task gives one); without
it the run stays on 1D positions. The grid is one map of ``H/8 x W/8`` tokens per latent frame, as
the ``magvit2`` video tokenizer lays them out; `videolm.train.lm` refuses grid positions for
tokenizers that lay frames out otherwise (``vqvae2``'s two maps).

`GridLayout` is what the positions need of the vocabulary; `grid_positions` gives one sequence's
``(N, 3)`` positions, `GridPositions` the same one token (or chunk) at a time for decoding;
`GridRotaryEmbedding` is the model's rotary module for ``(B, T, 3)`` position ids, and `rope_rows` looks
a precomputed table up the same way for the generation engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from videolm.core.errors import UsageError

KINDS = ("sequence", "grid")
CONFIG_KEY = "videolm_positions"  # the LlamaConfig attribute (config.json key) that names the kind
AXES = 3  # time, height, width


@dataclass(frozen=True)
class GridLayout:
    """The ids that shape a sequence's grid: ``<res:HxW>`` ids and the latent grid each means, and
    the ids that open and close a video run."""

    grids: dict[int, tuple[int, int]]
    opens: frozenset[int]
    closes: frozenset[int]

    @classmethod
    def from_vocab(cls, vocab, stride: int) -> GridLayout:
        """The layout of a `Vocabulary`'s sequences for a video tokenizer that lays each latent frame
        out as one ``H/stride x W/stride`` map, row by row (``videolm.tasks.base.grid_layout``
        passes the built-in tokenizers' stride)."""
        grids = {vocab.res_id(h, w): (h // stride, w // stride) for h, w in vocab.resolutions}
        return cls(grids, frozenset(vocab[n] for n in ("<bov_i>", "<bov_o>")),
                   frozenset(vocab[n] for n in ("<eov_i>", "<eov_o>")))

    def positions(self, ids) -> torch.Tensor:
        """`grid_positions` of one example under this layout (what `pack` and `pad` take)."""
        return grid_positions(ids, self)


class GridPositions:
    """One sequence's ``(t, h, w)`` positions, fed in order: `feed` takes the next ids (one or many)
    and returns their positions ``(n, 3)``."""

    def __init__(self, layout: GridLayout):
        self.layout = layout
        self.next = 0  # position of the next token outside a run
        self.grid: tuple[int, int] | None = None  # the last <res>'s latent grid
        self.index: int | None = None  # index of the next token inside the open run; None: no run open
        self.base = 0  # the open run's p0
        self.top = -1  # the largest component so far in the open run

    def step(self, token: int) -> tuple[int, int, int]:
        """The position of one more token (the same as `feed`, in plain integers: a decoding step)."""
        if self.index is not None and token in self.layout.closes:
            self.next, self.index = self.top + 1, None
        if self.index is None:
            p = self.next
            self.next += 1
            if token in self.layout.grids:
                self.grid = self.layout.grids[token]
            elif token in self.layout.opens and self.grid is not None:
                self.index, self.base, self.top = 0, self.next, self.next - 1
            return p, p, p
        gh, gw = self.grid
        k = self.index
        place = (self.base + k // (gh * gw), self.base + (k // gw) % gh, self.base + k % gw)
        self.top = max(self.top, *place)
        self.index += 1
        return place

    def feed(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), AXES), dtype=np.int64)
        i = 0
        while i < len(ids):
            if self.index is None or len(ids) == 1:  # outside a run (or one token): a step at a time
                out[i] = self.step(int(ids[i]))
                i += 1
                continue
            rest = ids[i:]  # inside a run: the whole stretch up to its closing token at once
            ends = np.flatnonzero(np.isin(rest, list(self.layout.closes)))
            n = int(ends[0]) if len(ends) else len(rest)
            if n:
                gh, gw = self.grid
                k = self.index + np.arange(n)
                place = np.stack([k // (gh * gw), (k // gw) % gh, k % gw], 1)  # (n, 3)
                out[i:i + n] = self.base + place
                self.top = max(self.top, int(out[i:i + n].max()))
                self.index += n
                i += n
            if len(ends):  # the closing token is the first one after the run
                self.next, self.index = self.top + 1, None
        return out


def grid_positions(ids, layout: GridLayout) -> torch.Tensor:
    """``(N, 3)`` long: the positions of one example's ids (see the module's docstring)."""
    return torch.from_numpy(GridPositions(layout).feed(torch.as_tensor(ids).cpu().numpy()))


def frequency_axes(num_frequencies: int) -> torch.Tensor:
    """``(F,)`` long: the component (0 t, 1 h, 2 w) each rotary frequency follows (interleaved)."""
    return torch.arange(num_frequencies) % AXES


def column_axes(head_dim: int) -> torch.Tensor:
    """``(Dh,)``: the component each column of a ``(S, Dh)`` cos/sin table follows (RoPE's halves
    repeat the frequencies)."""
    axes = frequency_axes(head_dim // 2)
    return torch.cat([axes, axes])


def rope_rows(table: torch.Tensor, positions: torch.Tensor, axes: torch.Tensor | None) -> torch.Tensor:
    """Rows of a per-position table ``(S, D)`` for ``positions``: ``(B, T)`` gives ``table[positions]``;
    ``(B, T, 3)`` takes column j from the row of component ``axes[j]`` (``axes (D,)``). ``(B, T, D)``."""
    if positions.dim() == 2:
        return table[positions]
    if axes is None:
        raise UsageError("3D positions need the component of each rotary column (a grid-position model)")
    rows = table[positions]  # (B, T, 3, D)
    pick = axes.to(rows.device).view(1, 1, 1, -1).expand(*positions.shape[:2], 1, -1)  # (B, T, 1, D)
    return rows.gather(2, pick).squeeze(2)  # (B, T, D)


class GridRotaryEmbedding(LlamaRotaryEmbedding):
    """Llama's rotary embedding, also taking ``(B, T, 3)`` position ids (``(B, T)`` as before). The
    name keeps "RotaryEmbedding": transformers recomputes the frequencies of modules so named when it
    loads a model (they are not in the weights file)."""

    def forward(self, x, position_ids):
        if position_ids.dim() != 3 or position_ids.shape[-1] != AXES:  # never 1D by mistake
            raise UsageError(f"a model with grid positions needs (batch, length, 3) position ids, got shape "
                             f"{tuple(position_ids.shape)} (positions from videolm.lm.positions.grid_positions)")
        inv = self.inv_freq.to(device=x.device, dtype=torch.float)  # (F,)
        freqs = position_ids[..., None].float() * inv  # (B, T, 3, F)
        axes = frequency_axes(len(inv)).to(x.device)
        freqs = freqs.gather(2, axes.view(1, 1, 1, -1).expand(*position_ids.shape[:2], 1, -1)).squeeze(2)  # (B, T, F)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, Dh)
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def positions_of(config) -> str:
    """``"sequence"`` or ``"grid"``: the kind of positions a model's `LlamaConfig` asks for."""
    kind = getattr(config, CONFIG_KEY, None) or "sequence"
    if kind not in KINDS:
        raise UsageError(f"{CONFIG_KEY}={kind!r}: choose from {', '.join(KINDS)}")
    return kind


def set_positions(model, kind: str) -> None:
    """Switch ``model`` (unwrapped) to ``kind`` positions in place: its config and its rotary module.
    The weights are untouched (a switch of a trained model is a starting point, to be trained on)."""
    if kind not in KINDS:
        raise UsageError(f"positions={kind!r}: choose from {', '.join(KINDS)}")
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    if kind == "grid" and head_dim // 2 < AXES:
        raise UsageError(f"grid positions need at least {AXES} rotary frequencies per head (head size {head_dim})")
    setattr(model.config, CONFIG_KEY, kind)
    device = model.model.rotary_emb.inv_freq.device
    rotary = GridRotaryEmbedding(model.config) if kind == "grid" else LlamaRotaryEmbedding(model.config)
    model.model.rotary_emb = rotary.to(device)


__all__ = ["CONFIG_KEY", "KINDS", "GridLayout", "GridPositions", "GridRotaryEmbedding", "column_axes", "frequency_axes",
           "grid_positions", "positions_of", "rope_rows", "set_positions"]
