"""The CPU fast path of the generation engine: the model's weights packed for decoding on CPU.

`videolm.lm.engine` runs any Llama-form model through its own modules. On CPU in float32 most of a
decoding step's time is reading weights and dispatching small operations, so this module lays the
weights out again for that (`DecodeWeights`: fused matrices, constants folded in, oneDNN's packed
layout or per-thread slabs in huge pages) and runs the same layer computation over them. It is
applied from outside: ``engine.generate(model, prompts, fast=cpu_fast_path)``, or
``engine.new_cache(model, rows, length, fast=cpu_fast_path)``. Where it does not apply (off CPU,
another dtype, LoRA-wrapped or otherwise non-plain layers) `cpu_fast_path` returns None and the
engine runs the modules. Tests hold it to transformers' own forward (`engine.full_logits`).
"""

from __future__ import annotations

import functools
import math
import mmap
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.activations import SiLUActivation
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from videolm.lm.engine import llama_of, uses_grid
from videolm.lm.positions import frequency_axes, rope_rows

USE_ONEDNN = True  # DecodeWeights: oneDNN's packed layout for batches where it works (False: split layout only)
PACK_ROWS = 16  # the number of rows oneDNN is told to expect when it packs a matrix
SPLIT_MAX_ROWS = 1  # batches of up to this many rows run on the split layout, larger ones on the packed one
HUGE_PAGE = 2 << 20  # bytes in a transparent huge page (x86-64, arm64 with 4 KiB base pages)


@dataclass
class DecodeWeights:
    """The model's matrices laid out for the engine's own forward on CPU, each layer's q/k/v and
    gate/up projections fused into one matrix. Two layouts, each the faster one somewhere:

    - **split** (one row, up to `SPLIT_MAX_ROWS`): every matrix transposed to ``(in, out)`` and cut
      along its inputs into ``S`` slabs ``(S, in / S, out)``, one per thread; a product is one
      batched matmul, a vector-matrix product per slab, summed (`mm`). At one row a step is bound
      by reading every weight once, and one plain ``x @ W`` keeps a single thread reading
      (measured on 2 cores: all the step's products in 3.0 ms that way, 2.0-2.2 ms split, 2.6-2.7
      ms packed). All matrices and the head lie in one buffer that Linux is asked to back with
      transparent huge pages (`_huge_empty`), in the order a step reads them;
    - **packed** (more rows): oneDNN's blocked layout (what torch.compile's CPU backend uses for
      frozen weights), the fastest from two rows up (at eight, twice ``x @ W``'s speed).

    The head is ``(D, V)`` (split: ``(S, D / S, V)``), so a slice of it gives the logits of an
    id range (constrained decoding needs no others); in the packed layout a wide range's slice is
    packed the first time it is asked for and kept (`head_rows`).

    Constants are folded into the matrices, so a decoding step runs fewer small operations (on
    CPU each costs microseconds of dispatch, as much as a layer's arithmetic at batch 1): each
    RMSNorm's weight and ``sqrt(D)`` into the matrix that reads the norm's output, and the
    attention's ``1/sqrt(Dh)`` into the query rows (RoPE is linear, so it commutes). What is left
    of a norm is one factor per row, ``rsqrt(|x|^2 + D eps)``, applied to the product
    (`_rms_scale`). The same computation as the modules' up to float rounding.

    Built once per model and layout and reused while the model's parameters are unchanged (see
    `decode_weights`). Inference only (the packed product has no gradient).
    """

    qkv: list[torch.Tensor]  # per layer: (H + 2 Hkv) Dh outputs from D inputs, in `mm`'s layout
    out: list[torch.Tensor]  # per layer: D from H Dh
    gate_up: list[torch.Tensor]  # per layer: 2 F from D
    down: list[torch.Tensor]  # per layer: D from F
    eps: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: D * eps of the input and post-attention RMSNorm (0-dim)
    final_eps: torch.Tensor  # D * eps of the final RMSNorm (0-dim)
    head: torch.Tensor  # (D, V), split (S, D / S, V): slices of its last dim give the logits of an id range
    heads: int
    kv_heads: int
    head_dim: int
    packed: bool = False  # the layers' matrices are in oneDNN's packed layout (see `_pack`), else split
    head_rows: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # packed head slices by id range

    def mm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x (..., in) @`` one of the matrices -> ``(..., out)``."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
        slabs = weight.shape[0]
        parts = x.reshape(-1, slabs, x.shape[-1] // slabs).transpose(0, 1)  # (S, N, in / S)
        return torch.bmm(parts, weight).sum(0).view(*x.shape[:-1], -1)  # (..., out)

    def logits(self, x: torch.Tensor, span: tuple[int, int] | None) -> torch.Tensor:
        """The head's logits ``(..., V)`` of the final hidden states ``x (..., D)``, normed;
        with ``span = (lo, hi)`` only those of ids ``[lo, hi)``, the rest -inf."""
        vocab_size = self.head.shape[-1]
        lo, hi = (0, vocab_size) if span is None else span
        part = self._head(x, lo, hi) * _rms_scale(x, self.final_eps)  # (..., hi - lo)
        if hi - lo >= vocab_size:
            return part  # (..., V)
        logits = x.new_full((*x.shape[:-1], vocab_size), float("-inf"))  # (..., V)
        logits[..., lo:hi] = part
        return logits

    def _head(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """``x (..., D)`` times the head's columns ``[lo, hi)``."""
        if not self.packed:
            return self.mm(x, self.head[..., lo:hi])
        if not PACKED_HEAD_ROWS <= hi - lo < self.head.shape[-1]:
            return x @ self.head[:, lo:hi]  # a few ids, or all of them (the prefill's last position)
        if (lo, hi) not in self.head_rows:
            self.head_rows[lo, hi] = _pack(self.head[:, lo:hi].t(), packed=True)
        return torch.ops.mkldnn._linear_pointwise(x, self.head_rows[lo, hi], None, "none", [], "")


PACKED_HEAD_ROWS = 512  # a head slice of at least this many ids is packed for oneDNN (the video range is)
_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {layout: (parameters' state, weights)}


def decode_weights(model, rows: int = 1) -> DecodeWeights | None:
    """`DecodeWeights` of ``model`` for batches of ``rows`` rows (the layout depends on it and on
    the number of threads), or None where the engine runs the model's own modules: off CPU,
    outside float32, or when a layer is not a plain one (LoRA or other wrapped projections,
    biases, another norm or activation), so that whatever the modules do is what runs.

    Kept per model and layout, and rebuilt when any parameter has changed since (another tensor,
    or the same one written in place: its version counter moves), so repeated generation pays
    the copy once."""
    lm = llama_of(model)
    param = lm.lm_head.weight
    if param.device.type != "cpu" or param.dtype != torch.float32:
        return None
    linears = [lm.lm_head] + [getattr(layer.self_attn, name) for layer in lm.model.layers
                              for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
    linears += [getattr(layer.mlp, name) for layer in lm.model.layers for name in ("gate_proj", "up_proj", "down_proj")]
    norms = [lm.model.norm] + [n for layer in lm.model.layers for n in (layer.input_layernorm,
                                                                          layer.post_attention_layernorm)]
    if (any(type(m) is not torch.nn.Linear or m.bias is not None for m in linears)
            or any(type(n) is not LlamaRMSNorm for n in norms)
            or any(type(getattr(layer.mlp, "act_fn", None)) not in (SiLUActivation, torch.nn.SiLU)
                   for layer in lm.model.layers)):
        return None
    cfg = lm.config
    layout = "packed" if rows > SPLIT_MAX_ROWS and _onednn_packing() else _slabs(
        (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.intermediate_size), torch.get_num_threads())
    state = tuple((p.data_ptr(), p._version) for p in lm.parameters())
    layouts = _BUILT.setdefault(lm, {})
    if layout not in layouts or layouts[layout][0] != state:
        if any(old != state for old, _ in layouts.values()):
            layouts.clear()  # built from parameters that have since changed
        layouts[layout] = state, _build_decode_weights(lm, layout)
    return layouts[layout][1]


def _slabs(inputs: tuple[int, ...], threads: int) -> int:
    """How many slabs the split layout cuts each matrix into: one per thread, fewer where that
    does not divide every matrix's inputs."""
    slabs = max(1, threads)
    while any(n % slabs for n in inputs):
        slabs -= 1
    return slabs


def _build_decode_weights(lm, layout: str | int) -> DecodeWeights:
    """The `DecodeWeights` of ``lm`` in oneDNN's ``"packed"`` layout, or split into ``layout`` slabs."""
    cfg, layers = lm.config, lm.model.layers
    root_d = math.sqrt(cfg.hidden_size)

    def eps_d(norm) -> torch.Tensor:
        return torch.tensor(norm.variance_epsilon * cfg.hidden_size, dtype=torch.float32)

    with torch.no_grad():
        qkv, out, gate_up, down = [], [], [], []  # (out, in) each
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            q, k = (_pair_rope_rows(m, cfg.head_dim) for m in (attn.q_proj.weight * attn.scaling, attn.k_proj.weight))
            fused = torch.cat([q, k, attn.v_proj.weight])
            qkv.append(fused * (layer.input_layernorm.weight * root_d))  # the norm's weight on the inputs
            out.append(attn.o_proj.weight)
            fused = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            gate_up.append(fused * (layer.post_attention_layernorm.weight * root_d))
            down.append(mlp.down_proj.weight)
        head = lm.lm_head.weight * (lm.model.norm.weight * root_d)  # (V, D)
        if layout == "packed":
            qkv, out, gate_up, down = ([_pack(m, packed=True) for m in ms] for ms in (qkv, out, gate_up, down))
            head = _pack(head, packed=False)
        else:
            in_order = [m for mats in zip(qkv, out, gate_up, down) for m in mats]  # as a step reads them
            *layer_mats, head = _split_in_one_buffer(in_order + [head], layout)
            qkv, out, gate_up, down = (layer_mats[i::4] for i in range(4))
        return DecodeWeights(
            qkv=list(qkv), out=list(out), gate_up=list(gate_up), down=list(down),
            eps=[(eps_d(layer.input_layernorm), eps_d(layer.post_attention_layernorm)) for layer in layers],
            final_eps=eps_d(lm.model.norm), head=head, heads=cfg.num_attention_heads,
            kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, packed=layout == "packed",
        )


def _pair_rope_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """A q or k projection ``(heads * Dh, in)`` with each head's output rows reordered
    ``0, Dh/2, 1, Dh/2 + 1, ...``: the two coordinates RoPE rotates together become neighbours,
    a complex number's real and imaginary parts."""
    half = head_dim // 2
    order = torch.stack([torch.arange(half), torch.arange(half, head_dim)], 1).flatten()  # (Dh,)
    return weight.unflatten(0, (-1, head_dim))[:, order].flatten(0, 1)


def _split_in_one_buffer(weights: list[torch.Tensor], slabs: int) -> list[torch.Tensor]:
    """``(out, in)`` weights as ``(slabs, in / slabs, out)`` stacks of slabs of their transposes,
    laid one after another in one buffer (`_huge_empty`), each starting on a 64-byte line."""
    sizes = [-(-w.numel() // 16) * 16 for w in weights]  # floats, rounded up to whole 64-byte lines
    flat = _huge_empty(sum(sizes))
    mats, offset = [], 0
    for w, size in zip(weights, sizes):
        n_out, n_in = w.shape
        mat = flat[offset:offset + w.numel()].view(slabs, n_in // slabs, n_out)  # (S, in / S, out)
        mats.append(mat.copy_(w.detach().t().reshape(slabs, n_in // slabs, n_out)))
        offset += size
    return mats


def _huge_empty(numel: int) -> torch.Tensor:
    """An uninitialised float32 tensor of ``numel`` elements, on memory Linux is asked to back
    with transparent huge pages (``MADV_HUGEPAGE`` on a private anonymous mapping, aligned to
    `HUGE_PAGE`; the pages are faulted in when first written, after the advice). Elsewhere, or
    when the advice is refused, plain memory: only the speed differs."""
    if numel * 4 < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(numel)
    try:
        buffer = mmap.mmap(-1, numel * 4 + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        return torch.empty(numel)
    raw = torch.frombuffer(buffer, dtype=torch.uint8)  # keeps the mapping alive
    offset = (-raw.data_ptr()) % HUGE_PAGE
    return raw[offset:offset + numel * 4].view(torch.float32)


def _rms_scale(x: torch.Tensor, eps_d: torch.Tensor) -> torch.Tensor:
    """``rsqrt(|x|^2 + D eps)`` per row ``(..., 1)``: times ``sqrt(D)`` (folded into the matrices)
    it is RMSNorm's ``rsqrt(mean(x^2) + eps)``. ``eps_d``: ``D eps`` as a 0-dim tensor (a Python
    number would be wrapped into one at every call)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (..., 1)
    return torch.addcmul(eps_d, norm, norm).rsqrt_()


def _pack(weight: torch.Tensor, packed: bool) -> torch.Tensor:
    """A ``(out, in)`` weight in oneDNN's packed layout, or as ``(in, out)`` dense."""
    if packed:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS)
    return weight.detach().t().contiguous()


@functools.cache
def _onednn_packing() -> bool:
    """Whether oneDNN's packed linear (what torch.compile's CPU backend uses for frozen weights)
    is there and right: checked once, against a plain product."""
    if not USE_ONEDNN or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        weight, x = torch.randn(48, 32, generator=gen), torch.randn(3, 1, 32, generator=gen)
        got = torch.ops.mkldnn._linear_pointwise(x, _pack(weight, True), None, "none", [], "")
        return got.shape == (3, 1, 48) and torch.allclose(got, x @ weight.t(), rtol=1e-4, atol=1e-5)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class CpuFastPath:
    """What the engine asks of a fast path (`videolm.lm.engine.FastPath`), over `DecodeWeights`:
    cache memory, the layers, and the head's logits."""

    def __init__(self, weights: DecodeWeights, cos: torch.Tensor, sin: torch.Tensor, grid: bool = False):
        half = weights.head_dim // 2
        self.weights = weights
        self.turn = torch.complex(cos[:, :half], sin[:, :half])  # (S, Dh / 2): RoPE as one complex product
        self.axes = frequency_axes(half) if grid else None  # (Dh / 2,): grid positions' component per pair

    def kv_memory(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Room for every layer's keys and values: one buffer in huge pages (`_huge_empty`;
        attention at batch 8 reads as many bytes of cache as of weights), left uninitialised, as a
        slot is always written before attention reads it."""
        return _huge_empty(math.prod(shape)).view(shape)

    def layers(self, x: torch.Tensor, positions: torch.Tensor, kv: list[torch.Tensor], start: int,
               mask: torch.Tensor | None) -> torch.Tensor:
        turn = rope_rows(self.turn, positions, self.axes)[:, None]  # (B, 1, T, Dh / 2) complex
        for i, layer_kv in enumerate(kv):
            x = _lean_block(self.weights, i, x, turn, layer_kv, start, mask)  # (B, T, D)
        return x

    def logits(self, x: torch.Tensor, span: tuple[int, int] | None) -> torch.Tensor:
        return self.weights.logits(x, span)


def cpu_fast_path(model, rows: int, cos: torch.Tensor, sin: torch.Tensor) -> CpuFastPath | None:
    """The fast path for ``model`` decoding ``rows`` rows with RoPE tables ``cos``/``sin`` ``(S, Dh)``,
    or None where it does not apply (see `decode_weights`; a RoPE whose halves differ is not one
    rotation per pair)."""
    weights = decode_weights(model, rows)
    if weights is None:
        return None
    half = weights.head_dim // 2
    if not (torch.equal(cos[:, :half], cos[:, half:]) and torch.equal(sin[:, :half], sin[:, half:])):
        return None
    return CpuFastPath(weights, cos, sin, grid=uses_grid(model))


def _lean_block(w: DecodeWeights, i: int, x, turn, kv, start: int, mask):
    """`videolm.lm.engine`'s layer over `DecodeWeights`: the same computation, with fused matrices in their own layout
    and the norms' constants folded into them. The query and key rows of each head are stored
    with RoPE's pairs ``(j, j + Dh / 2)`` side by side (`_pair_rope_rows`), so RoPE is one
    in-place complex product by ``turn (B, 1, T, Dh / 2)``, and the rotated keys and the values
    go into the cache in one copy. Attention scores are unchanged: queries and keys are permuted
    alike (the cache holds keys in that order; only this forward reads them)."""
    b, t, _ = x.shape
    heads, kv_heads = w.heads, w.kv_heads
    eps_in, eps_post = w.eps[i]
    qkv = w.mm(x, w.qkv[i]) * _rms_scale(x, eps_in)  # (B, T, (H + 2 Hkv) Dh)
    qkv = qkv.view(b, t, heads + 2 * kv_heads, w.head_dim).transpose(1, 2)  # (B, H + 2 Hkv, T, Dh)
    torch.view_as_complex(qkv[:, :heads + kv_heads].unflatten(-1, (-1, 2))).mul_(turn)  # RoPE on q and k
    stop = start + t
    kv[:, :, start:stop] = qkv[:, heads:]
    o = F.scaled_dot_product_attention(qkv[:, :heads], kv[:, :kv_heads, :stop], kv[:, kv_heads:, :stop],
                                       attn_mask=mask, scale=1.0, enable_gqa=heads != kv_heads)  # (B, H, T, Dh)
    x = x + w.mm(o.transpose(1, 2).reshape(b, t, -1), w.out[i])  # (B, T, D); 1/sqrt(Dh) is in q
    gate, up = (w.mm(x, w.gate_up[i]) * _rms_scale(x, eps_post)).chunk(2, -1)  # (B, T, F) each
    return x + w.mm(F.silu(gate) * up, w.down[i])  # (B, T, D)


__all__ = ["CpuFastPath", "DecodeWeights", "cpu_fast_path", "decode_weights"]
