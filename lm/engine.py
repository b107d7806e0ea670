"""The generation engine: free functions over a model and a KV cache, token ids only.

The model is a `VideoLM` (or any `LlamaForCausalLM`, PEFT-wrapped or not); the engine runs its
own lean forward over that model's modules, with a static cache preallocated for the whole
generation, instead of transformers' generic one. ``prefill`` reads every prompt (prefix) at
once with bidirectional attention inside it; ``decode_one_token`` then extends each row causally
from the cache.

Batches hold prompts of different lengths left-padded to a common width ``P``: padding slots
are masked out of every attention, and each row keeps its own RoPE positions (its first real
token is position 0), so a row's results do not depend on what it is batched with.
Classifier-free guidance runs conditional rows and their unconditional twins in one batch.

::

    tokens = generate(model, prompts, temperature=1.0, top_k=50, constraint=video_layout(vocab, 320),
                      cfg_scale=3.0, uncond_prompts=prompts_without_text, generator=0)
"""

from __future__ import annotations

import functools
import math
import mmap
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.activations import SiLUActivation
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from videolm.core.errors import UsageError
from videolm.lm.constraints import AllowedIds, Constraint
from videolm.lm.masks import attention_bias, prefix_lm_mask

Prompts = Sequence[Sequence[int] | torch.Tensor]


@dataclass
class KVCache:
    """Keys and values of every layer for ``B`` rows of up to ``S`` slots, filled left to right."""

    kv: list[torch.Tensor]  # per layer (B, 2 Hkv, S, Dh): keys, then values
    valid: torch.Tensor  # (B, S) bool: the slot holds a real token (not padding)
    cos: torch.Tensor  # (S, Dh) RoPE table by position
    sin: torch.Tensor  # (S, Dh)
    turn: torch.Tensor  # (S, Dh / 2) complex: cos + i sin, RoPE as one complex product (see `_lean_block`)
    positions: torch.Tensor  # (B,) long: RoPE position of each row's next token
    length: int = 0  # slots filled
    padded: bool = False  # some slot is padding, so attention needs a mask
    weights: DecodeWeights | None = None  # the engine's own layout of the weights (None: run the modules)

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]


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
    lm = _llama(model)
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


def new_cache(model, batch_size: int, max_len: int, lean: bool = True) -> KVCache:
    """An empty cache for ``batch_size`` rows of ``max_len`` tokens (prompt and output).
    ``lean``: run the engine's own forward over `DecodeWeights` where the model allows it
    (see `decode_weights`); False runs the model's modules."""
    lm = _llama(model)
    cfg, param = lm.config, lm.lm_head.weight
    shape = (batch_size, 2 * cfg.num_key_value_heads, max_len, cfg.head_dim)
    table = torch.arange(max_len, device=param.device)[None]  # (1, S)
    cos, sin = (t[0].float() for t in lm.model.rotary_emb(param, table))  # (S, Dh) each
    half = cfg.head_dim // 2
    weights = decode_weights(model, batch_size) if lean else None
    if weights is not None and not (torch.equal(cos[:, :half], cos[:, half:]) and torch.equal(sin[:, :half], sin[:, half:])):
        weights = None  # a RoPE whose halves differ: not one rotation per pair, so the modules' forward runs
    return KVCache(
        kv=list(_cache_memory(param, (cfg.num_hidden_layers, *shape)).unbind(0)),
        valid=torch.zeros(batch_size, max_len, dtype=torch.bool, device=param.device),
        cos=cos.to(param.dtype), sin=sin.to(param.dtype), turn=torch.complex(cos[:, :half], sin[:, :half]),
        positions=torch.zeros(batch_size, dtype=torch.long, device=param.device), weights=weights,
    )


def _cache_memory(param: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Room for every layer's keys and values: on CPU in float32 one buffer in huge pages
    (`_huge_empty`; attention at batch 8 reads as many bytes of cache as of weights), left
    uninitialised, as a slot is always written before attention reads it; elsewhere zeros."""
    if param.device.type == "cpu" and param.dtype == torch.float32:
        return _huge_empty(math.prod(shape)).view(shape)
    return param.new_zeros(shape)


def forward(model, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
            last_only: bool = False, span: tuple[int, int] | None = None) -> torch.Tensor:
    """Run ``ids (B, T)`` at RoPE ``positions (B, T)`` into the next T cache slots. ``mask
    (B, 1, T, length + T)`` is boolean (True: attend); None attends to every filled slot.
    Returns logits ``(B, T, V)``, or ``(B, 1, V)`` for the last slot only. ``span = (lo, hi)``
    says only ids in ``[lo, hi)`` will be looked at: the head may then skip the others, whose
    logits are -inf (a hint: with the model's own modules every logit is computed)."""
    lm = _llama(model)
    start, stop = cache.length, cache.length + ids.shape[1]
    if stop > cache.capacity:
        raise UsageError(f"the cache holds {cache.capacity} tokens; cannot add {ids.shape[1]} after {start}")
    x = lm.model.embed_tokens(ids)  # (B, T, D)
    w = cache.weights
    if w is None:
        cos, sin = cache.cos[positions], cache.sin[positions]  # (B, T, Dh) each
        for layer, kv in zip(lm.model.layers, cache.kv):
            x = _block(layer, x, cos, sin, kv, start, mask)  # (B, T, D)
    else:
        turn = cache.turn[positions][:, None]  # (B, 1, T, Dh / 2) complex
        for i, kv in enumerate(cache.kv):
            x = _lean_block(w, i, x, turn, kv, start, mask)  # (B, T, D)
    cache.length = stop
    if last_only:
        x = x[:, -1:]  # (B, 1, D)
    if w is None:
        return lm.lm_head(lm.model.norm(x))  # (B, T, V)
    return w.logits(x, span)  # (B, T, V)


@torch.no_grad()
def prefill(model, cache: KVCache, prompts: Prompts, pad_id: int = 0) -> torch.Tensor:
    """Read the prompts (prefixes) into an empty cache, bidirectionally inside each. Returns the
    logits ``(B, V)`` of each prompt's last token, which predict the first output token."""
    if cache.length:
        raise UsageError("prefill needs an empty cache")
    ids, valid = left_pad(prompts, pad_id, cache.valid.device)  # (B, P) each
    cache.padded = not bool(valid.all())
    first = valid.shape[1] - valid.sum(1, keepdim=True)  # (B, 1): slot of each row's first token
    positions = (torch.arange(ids.shape[1], device=ids.device) - first).clamp(min=0)  # (B, P)
    mask = None
    if cache.padded:  # real tokens see the real tokens of their row; padding sees itself
        eye = torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)  # (P, P)
        mask = (valid[:, None, :] | eye)[:, None]  # (B, 1, P, P)
    cache.valid[:, :ids.shape[1]] = valid
    cache.positions = valid.sum(1)  # (B,)
    return forward(model, cache, ids, positions, mask, last_only=True)[:, 0]  # (B, V)


@torch.no_grad()
def decode_one_token(model, cache: KVCache, tokens: torch.Tensor, span: tuple[int, int] | None = None) -> torch.Tensor:
    """Append one token per row ``(B,)``, attending causally to the cache. Returns the logits
    ``(B, V)`` for the token after it; ``span = (lo, hi)``: only those of ids ``[lo, hi)`` are
    needed (the rest may be -inf; see `forward`)."""
    slot = cache.length
    if slot >= cache.capacity:
        raise UsageError(f"the cache is full ({cache.capacity} tokens)")
    cache.valid[:, slot] = True
    mask = cache.valid[:, None, None, :slot + 1] if cache.padded else None  # (B, 1, 1, slot + 1)
    positions = cache.positions[:, None]  # (B, 1)
    logits = forward(model, cache, tokens[:, None], positions, mask, span=span)[:, 0]  # (B, V)
    cache.positions = cache.positions + 1
    return logits


def decode_n_tokens(model, cache: KVCache, logits: torch.Tensor, num_tokens: int,
                    chooser: TokenChooser) -> torch.Tensor:
    """Draw up to ``num_tokens`` tokens per row, starting from the prefill's ``logits (R, V)``,
    feeding each back through the cache. Returns ``(B, N)``, N <= num_tokens (fewer when every
    row has ended)."""
    return _decode(lambda tokens, span: decode_one_token(model, cache, tokens, span), logits, num_tokens, chooser)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row of ``logits (B, V)``: argmax at temperature 0, otherwise a draw from the
    softmax at that temperature, kept to the ``top_k`` best ids and to the smallest set of ids
    whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al., 2019)."""
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1)  # (B,)
    logits = logits.float() / temperature  # (B, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        logits = _nucleus(logits, top_p)
    probs = logits.softmax(-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]  # (B,)


class TokenChooser:
    """Turns each step's logits into tokens: guidance, then the constraint, then sampling.

    Rows ``0..B-1`` are the conditional ones; with guidance, rows ``B..2B-1`` are their
    unconditional twins, which are fed the same tokens. A row ends when its constraint allows
    nothing more or when it draws ``stop_id``; after that it yields ``pad_id``.
    """

    def __init__(self, batch_size: int, vocab_size: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, cfg_scale: float = 1.0, guided: bool = False,
                 constraints: Sequence[Constraint] | None = None, stop_id: int | None = None, pad_id: int = 0,
                 generator: torch.Generator | None = None, device=None):
        _check_sampling(temperature, top_k, top_p)
        if constraints is not None and len(constraints) != batch_size:
            raise UsageError(f"got {len(constraints)} constraints for {batch_size} prompts")
        self.batch_size, self.guided, self.cfg_scale = batch_size, guided, float(cfg_scale)
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "generator": generator}
        self.constraints, self.stop_id, self.pad_id = constraints, stop_id, pad_id
        self.allowed = AllowedIds(vocab_size, device)
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=device)  # (B,)
        self._complete: set[int] = set()  # rows whose constraint has ended (known without a device sync)
        self._ranges_at: tuple[int, list] | None = None  # (step, each row's ranges): constraints run once a step
        self._barred_masks: dict[tuple, torch.Tensor] = {}  # the rows' ranges -> (B, V) ids they may not draw
        self.progress: Callable[[int], object] | None = None  # called with 1 after each step

    def __call__(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Tokens ``(R,)`` for every row of ``logits (R, V)`` at output position ``step``."""
        logits = self._guide(logits.float())  # (B, V)
        if self.constraints is not None:
            logits = logits.masked_fill(self._barred(step), float("-inf"))
        tokens = sample(logits, **self.sampling)  # (B,)
        tokens = tokens.masked_fill(self.done, self.pad_id)
        if self.stop_id is not None:
            self.done |= tokens == self.stop_id
        return tokens.repeat(2) if self.guided else tokens  # (R,)

    @property
    def finished(self) -> bool:
        if len(self._complete) == self.batch_size:
            return True
        return self.stop_id is not None and bool(self.done.all())

    def _guide(self, logits: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans, 2022): move the conditional logits away from the
        unconditional ones. Written as cond + (s - 1)(cond - uncond), so s = 1 gives cond exactly."""
        if not self.guided:
            return logits  # (B, V)
        cond, uncond = logits[:self.batch_size], logits[self.batch_size:]  # (B, V) each
        return cond + (self.cfg_scale - 1) * (cond - uncond)  # (B, V)

    def span(self, step: int) -> tuple[int, int] | None:
        """``(lo, hi)``: every id that any row may draw at ``step`` lies in ``[lo, hi)``, so the
        logits of the others are never looked at. None: no constraint, or a row allows anything."""
        if self.constraints is None:
            return None
        rows = self._ranges(step)
        if not all(rows):
            return None
        return min(a for ranges in rows for a, _ in ranges), max(b for ranges in rows for _, b in ranges)

    def _ranges(self, step: int) -> list:
        if self._ranges_at is None or self._ranges_at[0] != step:
            rows = [() if b in self._complete else tuple(c(step)) for b, c in enumerate(self.constraints)]
            self._ranges_at = (step, rows)
        return self._ranges_at[1]

    def _barred(self, step: int) -> torch.Tensor:
        """``(B, V)`` bool: the ids each row may not draw at ``step``; built once per distinct
        combination of the rows' ranges (a video layout has one for all its positions)."""
        rows = []
        for b, ranges in enumerate(self._ranges(step)):
            if not ranges:  # the row is complete: anything may be drawn, and is replaced by pad
                self._complete.add(b)
                ranges = ((0, self.allowed.vocab_size),)
            rows.append(ranges)
        if self._complete:
            self.done[list(self._complete)] = True
        key = tuple(rows)
        if key not in self._barred_masks:
            self._barred_masks[key] = ~torch.stack([self.allowed(ranges) for ranges in rows])  # (B, V)
        return self._barred_masks[key]


def generate(model, prompts: Prompts, max_new_tokens: int | None = None, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             constraint: Constraint | Sequence[Constraint] | None = None, cfg_scale: float = 1.0,
             uncond_prompts: Prompts | None = None, stop_id: int | None = None, pad_id: int = 0,
             generator: torch.Generator | int | None = None, use_cache: bool = True,
             progress: Callable[[int], object] | None = None) -> torch.Tensor:
    """Continue each prompt (a prefix ending in its output-begin token). Returns ``(B, N)`` ids,
    N <= max_new_tokens, ``pad_id`` after a row ends.

    ``constraint`` (one for all rows, or one per row) limits the ids of each output position;
    with it ``max_new_tokens`` defaults to the longest layout. ``uncond_prompts`` (one per prompt,
    e.g. the prompt with its text emptied) turn on classifier-free guidance at ``cfg_scale``.
    ``generator`` (a torch.Generator or a seed) makes the draw reproducible. ``use_cache=False``
    recomputes the whole sequence with the model's own forward at every step (a reference and a
    baseline; slow). ``progress`` is called with 1 after each drawn token (e.g. a progress bar's
    ``update``).
    """
    with torch.inference_mode():  # no autograd bookkeeping at all: each small step op is cheaper than under no_grad
        tokens = _generate(model, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           constraint=constraint, cfg_scale=cfg_scale, uncond_prompts=uncond_prompts,
                           stop_id=stop_id, pad_id=pad_id, generator=generator, use_cache=use_cache,
                           progress=progress)
    return tokens.clone()  # cloned outside inference mode: an ordinary tensor the caller may edit in place


def _generate(model, prompts: Prompts, max_new_tokens: int | None, *, temperature: float, top_k: int | None,
              top_p: float | None, constraint, cfg_scale: float, uncond_prompts: Prompts | None,
              stop_id: int | None, pad_id: int, generator, use_cache: bool,
              progress: Callable[[int], object] | None) -> torch.Tensor:
    lm = _llama(model)
    device, vocab_size = lm.lm_head.weight.device, lm.config.vocab_size
    prompts = _check_prompts(prompts, vocab_size, "prompts")
    constraints = _per_row(constraint, len(prompts))
    num_tokens = _num_tokens(max_new_tokens, constraints)
    rows = prompts
    if uncond_prompts is not None:
        uncond_prompts = _check_prompts(uncond_prompts, vocab_size, "uncond_prompts")
        if len(uncond_prompts) != len(prompts):
            raise UsageError(f"got {len(uncond_prompts)} uncond_prompts for {len(prompts)} prompts")
        rows = prompts + uncond_prompts
    elif cfg_scale != 1:
        raise UsageError(f"cfg_scale={cfg_scale} needs uncond_prompts (one per prompt)")
    if isinstance(generator, int):
        generator = torch.Generator(device).manual_seed(generator)
    chooser = TokenChooser(len(prompts), vocab_size, temperature=temperature, top_k=top_k, top_p=top_p,
                           cfg_scale=cfg_scale, guided=uncond_prompts is not None, constraints=constraints,
                           stop_id=stop_id, pad_id=pad_id, generator=generator, device=device)
    chooser.progress = progress
    if not use_cache:
        return _generate_uncached(model, rows, num_tokens, chooser, pad_id)
    width = max(len(p) for p in rows)
    cache = new_cache(model, len(rows), width + num_tokens)
    logits = prefill(model, cache, rows, pad_id)  # (R, V)
    return decode_n_tokens(model, cache, logits, num_tokens, chooser)


def left_pad(prompts: Prompts, pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as ``ids (B, P)`` right-aligned (left-padded) to the longest, and ``valid (B, P)``."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)  # (B, P)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)  # (B, P)
    for b, prompt in enumerate(prompts):
        if len(prompt):
            ids[b, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long, device=device)
            valid[b, width - len(prompt):] = True
    return ids, valid


@torch.no_grad()
def full_logits(model, prompts: Prompts, outputs: torch.Tensor | None = None, pad_id: int = 0,
                last_only: bool = False) -> torch.Tensor:
    """Logits ``(B, P + T, V)`` of left-padded prompts followed by ``outputs (B, T)``, from the
    model's own (transformers) forward under the prefix-LM mask: the uncached reference.
    ``last_only``: ``(B, 1, V)``, the last position's only."""
    lm = _llama(model)
    device = lm.lm_head.weight.device
    ids, valid = left_pad(prompts, pad_id, device)  # (B, P) each
    width = ids.shape[1]
    if outputs is not None and outputs.shape[1]:
        ids = torch.cat([ids, outputs.to(device)], 1)  # (B, P + T)
        valid = torch.cat([valid, torch.ones_like(outputs, dtype=torch.bool, device=device)], 1)  # (B, P + T)
    example = torch.where(valid, 0, -1)  # (B, P + T)
    is_prefix = torch.arange(ids.shape[1], device=device)[None] < width  # (1, P + T)
    mask = prefix_lm_mask(example, is_prefix.expand_as(valid))  # (B, 1, P + T, P + T)
    positions = (valid.cumsum(1) - 1).clamp(min=0)  # (B, P + T)
    bias = attention_bias(mask, lm.dtype)
    return model(input_ids=ids, attention_mask=bias, position_ids=positions, use_cache=False,
                 logits_to_keep=1 if last_only else 0).logits


def _generate_uncached(model, rows: list[list[int]], num_tokens: int, chooser: TokenChooser,
                       pad_id: int) -> torch.Tensor:
    device = _llama(model).lm_head.weight.device
    outputs = torch.zeros(len(rows), 0, dtype=torch.long, device=device)  # (R, 0)

    def extend(tokens: torch.Tensor, span) -> torch.Tensor:  # (R,) -> (R, V); every logit computed
        nonlocal outputs
        outputs = torch.cat([outputs, tokens[:, None]], 1)  # (R, t)
        return full_logits(model, rows, outputs, pad_id, last_only=True)[:, -1]

    return _decode(extend, full_logits(model, rows, None, pad_id, last_only=True)[:, -1], num_tokens, chooser)


def _decode(extend: Callable[[torch.Tensor, tuple[int, int] | None], torch.Tensor], logits: torch.Tensor,
            num_tokens: int, chooser: TokenChooser) -> torch.Tensor:
    out = []
    for step in range(num_tokens):
        tokens = chooser(logits, step)  # (R,)
        out.append(tokens[:chooser.batch_size])
        if chooser.progress is not None:
            chooser.progress(1)
        if chooser.finished or step == num_tokens - 1:
            break
        logits = extend(tokens, chooser.span(step + 1))  # (R, V)
    if not out:
        return torch.zeros(chooser.batch_size, 0, dtype=torch.long, device=logits.device)
    return torch.stack(out, 1)  # (B, N)


def _block(layer, x, cos, sin, kv, start: int, mask):
    """One Llama decoder layer over the layer's own modules, with the static cache ``kv``."""
    attn = layer.self_attn
    b, t, _ = x.shape
    h = layer.input_layernorm(x)  # (B, T, D)
    q = attn.q_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)  # (B, H, T, Dh)
    k = attn.k_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
    v = attn.v_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    stop, kv_heads = start + t, k.shape[1]
    kv[:, :kv_heads, start:stop] = k
    kv[:, kv_heads:, start:stop] = v
    o = F.scaled_dot_product_attention(q, kv[:, :kv_heads, :stop], kv[:, kv_heads:, :stop], attn_mask=mask,
                                       scale=attn.scaling, enable_gqa=attn.num_key_value_groups > 1)  # (B, H, T, Dh)
    x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)
    return x + layer.mlp(layer.post_attention_layernorm(x))  # (B, T, D)


def _lean_block(w: DecodeWeights, i: int, x, turn, kv, start: int, mask):
    """`_block` over `DecodeWeights`: the same computation, with fused matrices in their own layout
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


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(-1, descending=True)  # (B, V) each
    probs = sorted_logits.softmax(-1)  # (B, V)
    before = probs.cumsum(-1) - probs  # (B, V): mass of the better ids
    drop_sorted = before >= top_p  # the best id always stays (its mass before is 0)
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V) back in id order
    return logits.masked_fill(drop, float("-inf"))


def _llama(model):
    """The `LlamaForCausalLM` inside ``model`` (unwrapping PEFT, whose LoRA layers stay in place)."""
    if hasattr(model, "get_base_model"):
        if getattr(model.active_peft_config, "is_prompt_learning", False):
            raise UsageError("the engine runs LoRA-style adapters, not prompt learning (virtual tokens)")
        model = model.get_base_model()
    if not (hasattr(model, "model") and hasattr(model.model, "layers") and hasattr(model, "lm_head")):
        raise UsageError(f"the engine runs Llama-form causal LMs (VideoLM), not {type(model).__name__}")
    return model


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise UsageError(f"temperature={temperature} must be >= 0 (0: greedy)")
    if top_k is not None and top_k < 1:
        raise UsageError(f"top_k={top_k} must be >= 1 (or None: no limit)")
    if top_p is not None and not 0 < top_p <= 1:
        raise UsageError(f"top_p={top_p} must be in (0, 1] (or None: no limit)")


def _check_prompts(prompts: Prompts, vocab_size: int, what: str) -> list[list[int]]:
    rows = [[int(i) for i in p] for p in prompts]
    if not rows or any(not r for r in rows):
        raise UsageError(f"{what}: need at least one prompt, each with at least one id")
    bad = [i for r in rows for i in r if not 0 <= i < vocab_size]
    if bad:
        raise UsageError(f"{what}: id {bad[0]} is outside the model's vocabulary [0, {vocab_size})")
    return rows


def _per_row(constraint, batch_size: int) -> list[Constraint] | None:
    if constraint is None:
        return None
    if callable(constraint):
        return [constraint] * batch_size
    constraints = list(constraint)
    if len(constraints) != batch_size or not all(callable(c) for c in constraints):
        raise UsageError(f"constraint: give one callable, or one per prompt ({batch_size})")
    return constraints


def _num_tokens(max_new_tokens: int | None, constraints: list[Constraint] | None) -> int:
    if max_new_tokens is None:
        if constraints is None or not all(hasattr(c, "__len__") for c in constraints):
            raise UsageError("max_new_tokens is needed unless every constraint has a known length")
        max_new_tokens = max(len(c) for c in constraints)
    if max_new_tokens < 0:
        raise UsageError(f"max_new_tokens={max_new_tokens} must be >= 0")
    return int(max_new_tokens)


__all__ = ["DecodeWeights", "KVCache", "TokenChooser", "decode_n_tokens", "decode_one_token", "decode_weights",
           "forward", "full_logits", "generate", "left_pad", "new_cache", "prefill", "sample"]
