"""The generation engine: free functions over a model and a KV cache, token ids only.

The shape of gpt-fast's ``generate.py``: `prefill` reads every prompt (prefix) at once, with
bidirectional attention inside it; `decode_one_token` extends each row causally from a static
cache preallocated for the whole generation; `decode_n_tokens` loops, and a `TokenChooser` turns
each step's logits into tokens: classifier-free guidance, then the output layout's constraint,
then `sample`. `generate` puts it together.

The model is a `VideoLM` (or any `LlamaForCausalLM`, PEFT-wrapped or not). The engine runs each
layer over the model's own modules (`_block`); a faster forward for one kind of machine comes
from outside as a `FastPath` (`videolm.lm.cpu_packing.cpu_fast_path`: the weights packed for CPU).
`full_logits` is the reference: transformers' own forward of the whole sequence under the
prefix-LM mask, which both cached forwards are tested against.

Batches hold prompts of different lengths left-padded to a common width ``P``: padding slots
are masked out of every attention, and each row keeps its own RoPE positions (its first real
token is position 0), so a row's results do not depend on what it is batched with.
Classifier-free guidance runs conditional rows and their unconditional twins in one batch.

::

    tokens = generate(model, prompts, temperature=1.0, top_k=50, constraint=video_layout(vocab, 320),
                      cfg_scale=3.0, uncond_prompts=prompts_without_text, generator=0, fast=cpu_fast_path)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from videolm.core.errors import UsageError
from videolm.lm.constraints import AllowedIds, Constraint
from videolm.lm.masks import attention_bias, prefix_lm_mask
from videolm.lm.positions import GridLayout, GridPositions, column_axes, positions_of, rope_rows

Prompts = Sequence[Sequence[int] | torch.Tensor]


class FastPath(Protocol):
    """A faster forward for one model, supplied from outside the engine (see `new_cache`)."""

    def kv_memory(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Room for the keys and values of every layer, ``(L, B, 2 Hkv, S, Dh)``."""

    def layers(self, x: torch.Tensor, positions: torch.Tensor, kv: list[torch.Tensor], start: int,
               mask: torch.Tensor | None) -> torch.Tensor:
        """Every layer over the embeddings ``x (B, T, D)`` at RoPE ``positions (B, T)`` (``(B, T, 3)``
        for a model with grid positions: see `videolm.lm.positions.rope_rows`), writing
        cache slots ``start..start + T`` of ``kv``; returns ``(B, T, D)``."""

    def logits(self, x: torch.Tensor, span: tuple[int, int] | None) -> torch.Tensor:
        """The final norm and head: ``(B, T, V)``, only ids in ``span`` where given (others -inf)."""


# (model, rows, cos, sin) -> a FastPath, or None where it does not apply
FastPathFactory = Callable[[object, int, torch.Tensor, torch.Tensor], FastPath | None]


@dataclass
class KVCache:
    """Keys and values of every layer for ``B`` rows of up to ``S`` slots, filled left to right."""

    kv: list[torch.Tensor]  # per layer (B, 2 Hkv, S, Dh): keys, then values
    valid: torch.Tensor  # (B, S) bool: the slot holds a real token (not padding)
    cos: torch.Tensor  # (S, Dh) RoPE table by position
    sin: torch.Tensor  # (S, Dh)
    positions: torch.Tensor  # (B,) long: RoPE position of each row's next token (sequence positions)
    length: int = 0  # slots filled
    padded: bool = False  # some slot is padding, so attention needs a mask
    fast: FastPath | None = None  # the forward that fills it (None: the model's modules)
    axes: torch.Tensor | None = None  # (Dh,) grid positions: the component each RoPE column follows
    grid: list[GridPositions] | None = None  # grid positions: each row's, fed every token it reads

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]


def new_cache(model, batch_size: int, max_len: int, fast: FastPathFactory | None = None,
              grid: GridLayout | None = None) -> KVCache:
    """An empty cache for ``batch_size`` rows of ``max_len`` tokens (prompt and output). ``fast``
    builds the forward that fills it where it applies (e.g. `videolm.lm.cpu_packing.cpu_fast_path`);
    otherwise, or without it, the model's own modules run. A model with grid positions needs the
    vocabulary's ``grid`` (`GridLayout.from_vocab`); other models ignore it."""
    lm = llama_of(model)
    rows = _grid_rows(model, batch_size, grid)
    cfg, param = lm.config, lm.lm_head.weight
    shape = (cfg.num_hidden_layers, batch_size, 2 * cfg.num_key_value_heads, max_len, cfg.head_dim)
    table = torch.arange(max_len, device=param.device)[None]  # (1, S)
    cos, sin = (t[0].float() for t in LlamaRotaryEmbedding.forward(lm.model.rotary_emb, param, table))  # (S, Dh)
    path = fast(model, batch_size, cos, sin) if fast is not None else None
    kv = path.kv_memory(shape) if path is not None else param.new_zeros(shape)
    return KVCache(
        kv=list(kv.unbind(0)), valid=torch.zeros(batch_size, max_len, dtype=torch.bool, device=param.device),
        cos=cos.to(param.dtype), sin=sin.to(param.dtype),
        positions=torch.zeros(batch_size, dtype=torch.long, device=param.device), fast=path,
        axes=None if rows is None else column_axes(cfg.head_dim).to(param.device), grid=rows,
    )


def _grid_rows(model, batch_size: int, grid: GridLayout | None) -> list[GridPositions] | None:
    """One `GridPositions` per row for a model with grid positions; None for other models."""
    if not uses_grid(model):
        return None
    if grid is None:
        raise UsageError("this model places video tokens on their grid (grid positions): generation needs "
                         "the vocabulary's grid layout (grid=GridLayout.from_vocab(vocab))")
    return [GridPositions(grid) for _ in range(batch_size)]


def forward(model, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
            last_only: bool = False, span: tuple[int, int] | None = None) -> torch.Tensor:
    """Run ``ids (B, T)`` at RoPE ``positions (B, T)`` (grid positions: ``(B, T, 3)``) into the next T cache slots. ``mask
    (B, 1, T, length + T)`` is boolean (True: attend); None attends to every filled slot.
    Returns logits ``(B, T, V)``, or ``(B, 1, V)`` for the last slot only. ``span = (lo, hi)``
    says only ids in ``[lo, hi)`` will be looked at: the head may then skip the others, whose
    logits are -inf (a hint: with the model's own modules every logit is computed)."""
    lm = llama_of(model)
    start, stop = cache.length, cache.length + ids.shape[1]
    if stop > cache.capacity:
        raise UsageError(f"the cache holds {cache.capacity} tokens; cannot add {ids.shape[1]} after {start}")
    x = lm.model.embed_tokens(ids)  # (B, T, D)
    if cache.fast is None:
        cos, sin = rope_rows(cache.cos, positions, cache.axes), rope_rows(cache.sin, positions, cache.axes)  # (B, T, Dh)
        for layer, kv in zip(lm.model.layers, cache.kv):
            x = _block(layer, x, cos, sin, kv, start, mask)  # (B, T, D)
    else:
        x = cache.fast.layers(x, positions, cache.kv, start, mask)  # (B, T, D)
    cache.length = stop
    if last_only:
        x = x[:, -1:]  # (B, 1, D)
    if cache.fast is None:
        return lm.lm_head(lm.model.norm(x))  # (B, T, V)
    return cache.fast.logits(x, span)  # (B, T, V)


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
    if cache.grid is not None:
        positions = _grid_prompts(cache.grid, ids, valid)  # (B, P, 3)
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
    if cache.grid is not None:
        fed = [row.feed(t) for row, t in zip(cache.grid, tokens.tolist())]  # each (1, 3)
        positions = torch.from_numpy(np.stack(fed)).to(tokens.device)  # (B, 1, 3)
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
           generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """One id per row of ``logits (B, V)``: argmax at temperature 0, otherwise a draw from the
    softmax at that temperature, kept to the ``top_k`` best ids and to the smallest set of ids
    whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al., 2019). ``generator``:
    one for the batch, or one per row (each row then draws as it would alone)."""
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
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(p[None], 1, generator=g)[:, 0] for p, g in zip(probs, generator)])
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
             fast: FastPathFactory | None = None, progress: Callable[[int], object] | None = None,
             grid: GridLayout | None = None) -> torch.Tensor:
    """Continue each prompt (a prefix ending in its output-begin token). Returns ``(B, N)`` ids,
    N <= max_new_tokens, ``pad_id`` after a row ends.

    ``constraint`` (one for all rows, or one per row) limits the ids of each output position;
    with it ``max_new_tokens`` defaults to the longest layout. ``uncond_prompts`` (one per prompt,
    e.g. the prompt with its text emptied) turn on classifier-free guidance at ``cfg_scale``.
    ``generator`` (a torch.Generator or a seed, or a list of them: one per prompt, so that each
    row draws what it would alone) makes the draw reproducible. ``use_cache=False``
    recomputes the whole sequence with the model's own forward at every step (a reference and a
    baseline; slow). ``fast``: a faster forward where it applies (see `new_cache`). ``progress`` is
    called with 1 after each drawn token (e.g. a progress bar's ``update``). ``grid``: the
    vocabulary's `GridLayout`, which a model with grid positions needs (others ignore it).
    """
    with torch.inference_mode():  # no autograd bookkeeping at all: each small step op is cheaper than under no_grad
        tokens = _generate(model, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           constraint=constraint, cfg_scale=cfg_scale, uncond_prompts=uncond_prompts,
                           stop_id=stop_id, pad_id=pad_id, generator=generator, use_cache=use_cache,
                           fast=fast, progress=progress, grid=grid)
    return tokens.clone()  # cloned outside inference mode: an ordinary tensor the caller may edit in place


def _generate(model, prompts: Prompts, max_new_tokens: int | None, *, temperature: float, top_k: int | None,
              top_p: float | None, constraint, cfg_scale: float, uncond_prompts: Prompts | None,
              stop_id: int | None, pad_id: int, generator, use_cache: bool, fast: FastPathFactory | None,
              progress: Callable[[int], object] | None, grid: GridLayout | None) -> torch.Tensor:
    lm = llama_of(model)
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
    generator = _generators(generator, len(prompts), device)
    chooser = TokenChooser(len(prompts), vocab_size, temperature=temperature, top_k=top_k, top_p=top_p,
                           cfg_scale=cfg_scale, guided=uncond_prompts is not None, constraints=constraints,
                           stop_id=stop_id, pad_id=pad_id, generator=generator, device=device)
    chooser.progress = progress
    if not use_cache:
        return _generate_uncached(model, rows, num_tokens, chooser, pad_id, grid)
    width = max(len(p) for p in rows)
    cache = new_cache(model, len(rows), width + num_tokens, fast, grid)
    logits = prefill(model, cache, rows, pad_id)  # (R, V)
    return decode_n_tokens(model, cache, logits, num_tokens, chooser)


def _generators(generator, rows: int, device):
    """A seed or a list of seeds (or generators) as generators on ``device``."""
    def one(g):
        return torch.Generator(device).manual_seed(g) if isinstance(g, int) else g

    if isinstance(generator, (list, tuple)):
        if len(generator) != rows:
            raise UsageError(f"got {len(generator)} generators for {rows} prompts")
        return [one(g) for g in generator]
    return one(generator)


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
                last_only: bool = False, grid: GridLayout | None = None) -> torch.Tensor:
    """Logits ``(B, P + T, V)`` of left-padded prompts followed by ``outputs (B, T)``, from the
    model's own (transformers) forward under the prefix-LM mask: the uncached reference.
    ``last_only``: ``(B, 1, V)``, the last position's only. ``grid``: as for `new_cache`."""
    lm = llama_of(model)
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
    if uses_grid(model):
        if grid is None:
            raise UsageError("a model with grid positions needs the vocabulary's grid layout (grid=...)")
        positions = _grid_prompts([GridPositions(grid) for _ in range(len(ids))], ids, valid)  # (B, P + T, 3)
    bias = attention_bias(mask, lm.dtype)
    return model(input_ids=ids, attention_mask=bias, position_ids=positions, use_cache=False,
                 logits_to_keep=1 if last_only else 0).logits


def _generate_uncached(model, rows: list[list[int]], num_tokens: int, chooser: TokenChooser,
                       pad_id: int, grid: GridLayout | None) -> torch.Tensor:
    device = llama_of(model).lm_head.weight.device
    outputs = torch.zeros(len(rows), 0, dtype=torch.long, device=device)  # (R, 0)

    def extend(tokens: torch.Tensor, span) -> torch.Tensor:  # (R,) -> (R, V); every logit computed
        nonlocal outputs
        outputs = torch.cat([outputs, tokens[:, None]], 1)  # (R, t)
        return full_logits(model, rows, outputs, pad_id, last_only=True, grid=grid)[:, -1]

    first = full_logits(model, rows, None, pad_id, last_only=True, grid=grid)[:, -1]
    return _decode(extend, first, num_tokens, chooser)


def _grid_prompts(rows: list[GridPositions], ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Grid positions ``(B, P, 3)`` of left-padded ``ids (B, P)``: each row's real tokens fed to its
    `GridPositions`, 0 on padding."""
    positions = torch.zeros(*ids.shape, 3, dtype=torch.long)  # (B, P, 3)
    for b, row in enumerate(rows):
        real = valid[b].cpu()
        positions[b, real] = torch.from_numpy(row.feed(ids[b].cpu()[real].numpy()))
    return positions.to(ids.device)


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


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(-1, descending=True)  # (B, V) each
    probs = sorted_logits.softmax(-1)  # (B, V)
    before = probs.cumsum(-1) - probs  # (B, V): mass of the better ids
    drop_sorted = before >= top_p  # the best id always stays (its mass before is 0)
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V) back in id order
    return logits.masked_fill(drop, float("-inf"))


def llama_of(model):
    """The `LlamaForCausalLM` inside ``model`` (unwrapping PEFT, whose LoRA layers stay in place)."""
    if hasattr(model, "get_base_model"):
        if getattr(model.active_peft_config, "is_prompt_learning", False):
            raise UsageError("the engine runs LoRA-style adapters, not prompt learning (virtual tokens)")
        model = model.get_base_model()
    if not (hasattr(model, "model") and hasattr(model.model, "layers") and hasattr(model, "lm_head")):
        raise UsageError(f"the engine runs Llama-form causal LMs (VideoLM), not {type(model).__name__}")
    return model


def uses_grid(model) -> bool:
    """Whether ``model`` (a VideoLM, or one wrapped by PEFT) takes ``(B, T, 3)`` grid positions."""
    return positions_of(llama_of(model).config) == "grid"


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


__all__ = ["FastPath", "FastPathFactory", "KVCache", "TokenChooser", "decode_n_tokens", "decode_one_token", "forward",
           "full_logits", "generate", "left_pad", "llama_of", "new_cache", "prefill", "sample", "uses_grid"]
