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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.activations import SiLUActivation
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb, rotate_half

from videolm.lm.constraints import AllowedIds, Constraint
from videolm.lm.masks import attention_bias, prefix_lm_mask
from videolm.tokenizers.errors import UsageError

Prompts = Sequence[Sequence[int] | torch.Tensor]


@dataclass
class KVCache:
    """Keys and values of every layer for ``B`` rows of up to ``S`` slots, filled left to right."""

    keys: list[torch.Tensor]  # per layer (B, Hkv, S, Dh)
    values: list[torch.Tensor]  # per layer (B, Hkv, S, Dh)
    valid: torch.Tensor  # (B, S) bool: the slot holds a real token (not padding)
    cos: torch.Tensor  # (S, Dh) RoPE table by position
    sin: torch.Tensor  # (S, Dh)
    positions: torch.Tensor  # (B,) long: RoPE position of each row's next token
    length: int = 0  # slots filled
    padded: bool = False  # some slot is padding, so attention needs a mask
    weights: DecodeWeights | None = None  # the engine's own layout of the weights (None: run the modules)

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]


USE_ONEDNN = True  # DecodeWeights: oneDNN's packed layout where it works (False: transposed dense matrices)
PACK_ROWS = 16  # the number of rows oneDNN is told to expect when it packs a matrix


@dataclass
class DecodeWeights:
    """The model's matrices laid out for the engine's own forward on CPU: each layer's q/k/v and
    gate/up projections fused into one matrix, and every layer matrix in oneDNN's packed layout
    (what torch.compile's CPU backend uses for frozen weights) or, where that is missing,
    transposed to ``(in, out)`` and contiguous. The head stays a transposed dense ``(D, V)``, so
    a slice of it gives the logits of an id range (constrained decoding needs no others).

    Decoding is a few rows times every matrix, bound by memory bandwidth at batch 1: on CPU
    (measured on the tiny preset, one thread) ``F.linear(x, W)`` streams ``W`` at about 8-12 GB/s,
    ``x @ W_t`` at about 18, oneDNN's packed product about 20 at one row and twice ``x @ W_t``'s
    speed at 8 rows. A copy, taken when the cache is made: make a new cache after changing the
    weights. Inference only (the packed product has no gradient).
    """

    qkv: list[torch.Tensor]  # per layer: (H + 2 Hkv) Dh outputs from D inputs, in `mm`'s layout
    out: list[torch.Tensor]  # per layer: D from H Dh
    gate_up: list[torch.Tensor]  # per layer: 2 F from D
    down: list[torch.Tensor]  # per layer: D from F
    norms: list[tuple[torch.Tensor, float, torch.Tensor, float]]  # per layer: input, post-attention RMSNorm, eps
    final_norm: tuple[torch.Tensor, float]
    head: torch.Tensor  # (D, V), transposed: slices of it give the logits of an id range
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    packed: bool = False  # the layers' matrices are in oneDNN's packed layout (see `_pack`)

    def mm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x (..., in) @`` one of the layers' matrices -> ``(..., out)``."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
        return x @ weight


def decode_weights(model) -> DecodeWeights | None:
    """`DecodeWeights` of ``model``, or None where the engine runs the model's own modules: off
    CPU, outside float32, or when a layer is not a plain one (LoRA or other wrapped projections,
    biases, another norm or activation), so that whatever the modules do is what runs."""
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
    cfg, layers = lm.config, lm.model.layers
    packed = _onednn_packing()
    with torch.no_grad():
        pack = functools.partial(_pack, packed=packed)
        return DecodeWeights(
            qkv=[pack(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
                 for a in (layer.self_attn for layer in layers)],
            out=[pack(layer.self_attn.o_proj.weight) for layer in layers],
            gate_up=[pack(torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight])) for layer in layers],
            down=[pack(layer.mlp.down_proj.weight) for layer in layers],
            norms=[(layer.input_layernorm.weight.detach(), layer.input_layernorm.variance_epsilon,
                    layer.post_attention_layernorm.weight.detach(), layer.post_attention_layernorm.variance_epsilon)
                   for layer in layers],
            final_norm=(lm.model.norm.weight.detach(), lm.model.norm.variance_epsilon),
            head=_pack(lm.lm_head.weight, packed=False),
            heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
            scaling=layers[0].self_attn.scaling, packed=packed,
        )


def _pack(weight: torch.Tensor, packed: bool) -> torch.Tensor:
    """A ``(out, in)`` weight in `DecodeWeights.mm`'s layout: oneDNN's packed one, or ``(in, out)`` dense."""
    if packed:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)
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
    shape = (batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim)
    table = torch.arange(max_len, device=param.device)[None]  # (1, S)
    cos, sin = lm.model.rotary_emb(param, table)  # (1, S, Dh) each
    return KVCache(
        keys=[param.new_zeros(shape) for _ in range(cfg.num_hidden_layers)],
        values=[param.new_zeros(shape) for _ in range(cfg.num_hidden_layers)],
        valid=torch.zeros(batch_size, max_len, dtype=torch.bool, device=param.device),
        cos=cos[0], sin=sin[0],
        positions=torch.zeros(batch_size, dtype=torch.long, device=param.device),
        weights=decode_weights(model) if lean else None,
    )


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
    cos, sin = cache.cos[positions], cache.sin[positions]  # (B, T, Dh) each
    w = cache.weights
    for i, (layer, keys, values) in enumerate(zip(lm.model.layers, cache.keys, cache.values)):
        if w is None:
            x = _block(layer, x, cos, sin, keys, values, start, mask)  # (B, T, D)
        else:
            x = _lean_block(w, i, x, cos, sin, keys, values, start, mask)  # (B, T, D)
    cache.length = stop
    if last_only:
        x = x[:, -1:]  # (B, 1, D)
    if w is None:
        return lm.lm_head(lm.model.norm(x))  # (B, T, V)
    h = F.rms_norm(x, (x.shape[-1],), *w.final_norm)  # (B, T, D)
    vocab_size = w.head.shape[1]
    if span is None or span[1] - span[0] >= vocab_size:
        return h @ w.head  # (B, T, V)
    lo, hi = span
    logits = h.new_full((*h.shape[:-1], vocab_size), float("-inf"))  # (B, T, V)
    logits[..., lo:hi] = h @ w.head[:, lo:hi]
    return logits


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
        self.progress: Callable[[int], object] | None = None  # called with 1 after each step

    def __call__(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Tokens ``(R,)`` for every row of ``logits (R, V)`` at output position ``step``."""
        logits = self._guide(logits.float())  # (B, V)
        if self.constraints is not None:
            allowed = self._allowed(step)  # (B, V)
            logits = logits.masked_fill(~allowed, float("-inf"))
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

    def _allowed(self, step: int) -> torch.Tensor:
        rows = []
        for b, ranges in enumerate(self._ranges(step)):
            if not ranges:  # the row is complete: anything may be drawn, and is replaced by pad
                self._complete.add(b)
                ranges = ((0, self.allowed.vocab_size),)
            rows.append(self.allowed(ranges))
        if self._complete:
            self.done[list(self._complete)] = True
        return torch.stack(rows)  # (B, V)


@torch.no_grad()
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


def _block(layer, x, cos, sin, keys, values, start: int, mask):
    """One Llama decoder layer over the layer's own modules, with the static cache."""
    attn = layer.self_attn
    b, t, _ = x.shape
    h = layer.input_layernorm(x)  # (B, T, D)
    q = attn.q_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)  # (B, H, T, Dh)
    k = attn.k_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
    v = attn.v_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    stop = start + t
    keys[:, :, start:stop] = k
    values[:, :, start:stop] = v
    o = F.scaled_dot_product_attention(q, keys[:, :, :stop], values[:, :, :stop], attn_mask=mask,
                                       scale=attn.scaling, enable_gqa=attn.num_key_value_groups > 1)  # (B, H, T, Dh)
    x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)
    return x + layer.mlp(layer.post_attention_layernorm(x))  # (B, T, D)


def _lean_block(w: DecodeWeights, i: int, x, cos, sin, keys, values, start: int, mask):
    """`_block` over `DecodeWeights`: the same computation, with fused matrices in their own layout
    and torch's RMSNorm (equal to the modules' up to float rounding)."""
    b, t, d = x.shape
    heads, kv = w.heads, w.kv_heads
    norm_in, eps_in, norm_post, eps_post = w.norms[i]
    h = F.rms_norm(x, (d,), norm_in, eps_in)  # (B, T, D)
    qkv = w.mm(h, w.qkv[i]).view(b, t, heads + 2 * kv, w.head_dim).transpose(1, 2)  # (B, H + 2 Hkv, T, Dh)
    qk = qkv[:, :heads + kv]  # (B, H + Hkv, T, Dh): RoPE on queries and keys at once
    qk = qk * cos[:, None] + rotate_half(qk) * sin[:, None]
    stop = start + t
    keys[:, :, start:stop] = qk[:, heads:]
    values[:, :, start:stop] = qkv[:, heads + kv:]
    o = F.scaled_dot_product_attention(qk[:, :heads], keys[:, :, :stop], values[:, :, :stop], attn_mask=mask,
                                       scale=w.scaling, enable_gqa=heads != kv)  # (B, H, T, Dh)
    x = x + w.mm(o.transpose(1, 2).reshape(b, t, -1), w.out[i])  # (B, T, D)
    gate, up = w.mm(F.rms_norm(x, (d,), norm_post, eps_post), w.gate_up[i]).chunk(2, -1)  # (B, T, F) each
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
