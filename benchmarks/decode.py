"""Decoding speed: videolm's generation engine against transformers' `generate()`, side by side in one run.

    python benchmarks/decode.py [--threads 2] [--repeats 5] [--new-tokens 320] [--prefix 32] [--context 1024]
    python benchmarks/decode.py --device cuda --dtype bfloat16 --preset small   # on a GPU
    python benchmarks/decode.py --grid --size 48x80x17   # also with grid positions (3D RoPE)

The `tiny` preset (10.9 M parameters, random weights, seeded, eval mode, float32) on CPU, one
model object for both systems, so the weights are identical. Each system continues t2v prompts
(``<bos> <task:t2v> <res:64x64> <bot_i> text <eot_i> <bov_o>``, ``--prefix`` tokens, random
text) with exactly ``--new-tokens`` video ids, greedily, at batch 1 and batch 8:

- ours: `videolm.lm.engine.generate` with ``video_layout`` as its constraint (cache on; the
  prefix is read bidirectionally, as the prefix LM does);
- theirs: ``model.generate()`` with transformers' own KV cache (its default dynamic cache),
  greedy, a logits processor holding it to the same video range, ``min_new_tokens =
  max_new_tokens`` and no end-of-sequence id, so it cannot stop early.

Tokens/s are new tokens per second over the whole batch, counting the whole call (setup,
prefill, decoding). The systems alternate, and each figure is the median of ``--repeats``.
Also measured: the KV cache's speedup at ``--context`` tokens, the time per token of one cached
decoding step against recomputing the whole sequence with the model's own forward (what
``generate(use_cache=False)`` does each step), over a few tokens at that length.

``--modules`` adds a row for our engine running the model's modules instead of the CPU fast path's
layout of the weights (``generate(fast=None)``, what it does for LoRA-wrapped models), to show what that
layout buys. ``--grid`` adds a row for the same weights with grid positions (3D RoPE for video
tokens, `videolm.lm.positions`): what placing each decoded token on its grid costs per step. ``--device cuda`` (with ``--dtype`` and ``--preset``) runs both systems on a GPU and
adds, per batch size, the memory-bandwidth bound (`bandwidth_bound`). Prints a table, then one
JSON line.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import time

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from videolm.core.models import resolve_model
from videolm.lm import engine
from videolm.lm.constraints import video_layout
from videolm.lm.cpu_packing import cpu_fast_path
from videolm.lm.model import VideoLM
from videolm.lm.positions import GridLayout, set_positions
from videolm.tasks.base import grid_layout
from videolm.tokenizers.geometry import grid_of, latent_frames, parse_clip_size
from videolm.tokenizers.vocab import Vocabulary

GOALS = {"ratio_vs_hf": 2.5, "batch8_over_batch1": 4.0, "cache_speedup": 10.0}


class AllowedRange(LogitsProcessor):
    """transformers' side of the constraint: every id outside ``[lo, hi)`` gets -inf."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __call__(self, input_ids, scores):
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.lo:self.hi] = scores[:, self.lo:self.hi]
        return masked


def t2v_prompts(vocab: Vocabulary, batch: int, length: int, seed: int,
                size: tuple[int, int, int] | None = None) -> list[list[int]]:
    """``batch`` t2v prefixes of ``length`` ids with random text (equal lengths: no padding);
    ``size`` (H, W, frames): with its ``<res:HxW> <frames:N>``, else ``<res:64x64>``."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = vocab.range("text")
    geometry = [vocab.res_id(*size[:2]), vocab.frames_id(size[2])] if size else [vocab.res_id(64, 64)]
    head = [vocab["<bos>"], vocab.task_id("t2v"), *geometry, vocab["<bot_i>"]]
    tail = [vocab["<eot_i>"], vocab["<bov_o>"]]
    n = length - len(head) - len(tail)
    if n < 0:
        raise SystemExit(f"--prefix {length}: a t2v prefix has at least {len(head) + len(tail)} ids")
    return [head + torch.randint(lo, hi, (n,), generator=gen).tolist() + tail for _ in range(batch)]


def ours(model, prompts, layout, new_tokens: int) -> torch.Tensor:
    return engine.generate(model, prompts, new_tokens, temperature=0, constraint=layout, fast=cpu_fast_path)


def ours_modules(model, prompts, layout, new_tokens: int) -> torch.Tensor:
    """`engine.generate` with the cache filled by the model's modules (no fast path)."""
    return engine.generate(model, prompts, new_tokens, temperature=0, constraint=layout)


def ours_grid(model, prompts, layout, new_tokens: int, grid: GridLayout) -> torch.Tensor:
    """`engine.generate` for a model with grid positions: each row's positions followed token by token."""
    return engine.generate(model, prompts, new_tokens, temperature=0, constraint=layout, fast=cpu_fast_path, grid=grid)


def theirs(model, prompts, video: tuple[int, int], new_tokens: int) -> torch.Tensor:
    ids = torch.tensor(prompts, device=model.device)  # (B, P)
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=model.config.pad_token_id, use_cache=True)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                         logits_processor=LogitsProcessorList([AllowedRange(*video)]))
    return out[:, ids.shape[1]:]  # (B, N)


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    sync()
    start = time.perf_counter()
    out = fn(*args)
    sync()
    return time.perf_counter() - start, out


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


PEAK_GB_S = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}  # HBM bandwidth, the vendors' sheets


def bandwidth_bound(model, batch: int, prefix: int, new_tokens: int, gb_s: float) -> float:
    """Tokens/s if each decoding step only had to read the weights and the rows' KV caches once
    at ``gb_s``: the memory-bandwidth bound of batch-``batch`` decoding (the cache at its mean length)."""
    cfg = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights -= model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()  # one row read
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * model.lm_head.weight.element_size()
    step_bytes = weights + batch * per_token * (prefix + new_tokens / 2)
    return batch * gb_s * 1e9 / step_bytes


def cache_speedup(model, vocab: Vocabulary, context: int, tokens: int, repeats: int, seed: int) -> tuple[float, float]:
    """Seconds per token at ``context`` tokens: one cached decoding step, and a full recompute."""
    gen = torch.Generator().manual_seed(seed)
    video = vocab.range("video")
    start = context - tokens
    prompt = t2v_prompts(vocab, 1, 32, seed)[0]
    prompt += torch.randint(*video, (start - len(prompt),), generator=gen).tolist()  # as if already generated
    new = torch.randint(*video, (1, tokens), generator=gen).to(model.device)  # (1, tokens)
    recompute = functools.partial(engine.full_logits, last_only=True)  # what use_cache=False runs per token
    cached, full = [], []
    with torch.no_grad():
        for r in range(repeats):
            cache = engine.new_cache(model, 1, context, cpu_fast_path)
            engine.prefill(model, cache, [prompt])
            for t in range(tokens):
                seconds, _ = timed(engine.decode_one_token, model, cache, new[:, t])
                cached.append(seconds)
            for t in range(tokens):
                seconds, _ = timed(recompute, model, [prompt], new[:, :t + 1])
                full.append(seconds)
    return statistics.median(cached), statistics.median(full)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=320)
    parser.add_argument("--prefix", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--context", type=int, default=1024, help="length at which the KV cache's speedup is measured")
    parser.add_argument("--context-tokens", type=int, default=4, help="tokens timed at that length, per repeat")
    parser.add_argument("--modules", action="store_true", help="also time our engine running the model's modules")
    parser.add_argument("--grid", action="store_true", help="also time our engine with grid positions (same weights)")
    parser.add_argument("--preset", default="tiny", help="model size preset (default tiny, the CPU model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (adds the memory-bandwidth bound)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--gb-s", type=float, default=None,
                        help="the GPU's memory bandwidth for the bound (default: from its name, H100 3350)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default=None, help="HxWxN: a t2v clip of that size (sets --new-tokens to its "
                        "video ids, e.g. 48x80x17 -> 300, 64x64x33 -> 576)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device on this machine")

    vocab = Vocabulary.load(resolve_model("shapes-64"))
    vocab.add_task("t2v")
    size = parse_clip_size(args.size, 17, "--size") if args.size else None
    if size:
        vocab.add_geometry(*size)
        grid = grid_of(*size[:2])
        args.new_tokens = latent_frames(size[2]) * grid[0] * grid[1]
    torch.manual_seed(args.seed)
    model = VideoLM.from_lm_config(args.preset).eval()  # vocab_size 8832 holds the Shapes vocabulary
    model.to(device=args.device, dtype=getattr(torch, args.dtype))
    model.generation_config.eos_token_id = None  # theirs must not stop at <eos>
    video = vocab.range("video")
    layout = video_layout(vocab, args.new_tokens)  # video ids, then <eov_o> <eos>: cut at new_tokens

    systems = {"videolm engine": lambda p: ours(model, p, layout, args.new_tokens),
               "transformers generate()": lambda p: theirs(model, p, video, args.new_tokens)}
    if args.modules:
        systems["videolm engine, modules"] = lambda p: ours_modules(model, p, layout, args.new_tokens)
    if args.grid:
        on_grid = copy.deepcopy(model)
        set_positions(on_grid, "grid")
        on_grid_layout = grid_layout(vocab)
        systems["videolm engine, grid pos."] = lambda p: ours_grid(on_grid, p, layout, args.new_tokens, on_grid_layout)
    prompts = {b: t2v_prompts(vocab, b, args.prefix, args.seed + b, size) for b in args.batches}
    for name, fn in systems.items():  # warm up (allocator, kernels), and check the outputs
        out = fn(t2v_prompts(vocab, 1, args.prefix, 99, size)[:1])
        if out.shape != (1, args.new_tokens) or not bool(((out >= video[0]) & (out < video[1])).all()):
            raise SystemExit(f"{name}: expected {args.new_tokens} video ids, got {tuple(out.shape)}")

    seconds = {(name, b): [] for name in systems for b in args.batches}
    names = list(systems)
    for r in range(args.repeats):
        for b in args.batches:
            for name in names[r % len(names):] + names[:r % len(names)]:  # alternate who goes first
                elapsed, out = timed(systems[name], prompts[b])
                assert out.shape == (b, args.new_tokens)
                seconds[(name, b)].append(elapsed)
    rate = {key: key[1] * args.new_tokens / statistics.median(s) for key, s in seconds.items()}  # tokens/s
    cached, full = cache_speedup(model, vocab, args.context, args.context_tokens, args.repeats, args.seed)

    params = sum(p.numel() for p in model.parameters()) / 1e6
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    where = gpu or f"CPU, {args.threads} threads"
    print(f"{args.preset} ({params:.1f} M), {where}, {args.dtype}, {args.prefix}-token prefix -> "
          f"{args.new_tokens} video ids{f' ({args.size})' if size else ''}, greedy; median of {args.repeats}")
    print(f"{'system':28s} {'batch':>5s} {'tokens/s':>10s} {'ms/step':>9s}")
    for (name, b), tok_s in rate.items():
        print(f"{name:28s} {b:5d} {tok_s:10.1f} {1e3 * b / tok_s:9.2f}")
    first, last = args.batches[0], args.batches[-1]
    ours_1, hf_1 = rate[("videolm engine", first)], rate[("transformers generate()", first)]
    ours_n, hf_n = rate[("videolm engine", last)], rate[("transformers generate()", last)]
    result = {
        "benchmark": "decode", "preset": args.preset, "params_m": round(params, 2), "threads": args.threads,
        "device": gpu or "cpu", "dtype": args.dtype,
        "repeats": args.repeats, "prefix": args.prefix, "new_tokens": args.new_tokens, "batches": args.batches,
        "size": args.size,
        "ours_tok_s": round(ours_1, 1), "hf_tok_s": round(hf_1, 1), "ratio_vs_hf": round(ours_1 / hf_1, 2),
        f"ours_tok_s_b{last}": round(ours_n, 1), f"hf_tok_s_b{last}": round(hf_n, 1),
        f"ratio_vs_hf_b{last}": round(ours_n / hf_n, 2),
        "batch8_over_batch1": round(ours_n / ours_1, 2), "hf_batch8_over_batch1": round(hf_n / hf_1, 2),
        "context": args.context, "cached_ms_per_token": round(1e3 * cached, 3),
        "recompute_ms_per_token": round(1e3 * full, 2), "cache_speedup": round(full / cached, 1),
    }
    if args.modules:
        result["ours_modules_tok_s"] = round(rate[("videolm engine, modules", first)], 1)
        result[f"ours_modules_tok_s_b{last}"] = round(rate[("videolm engine, modules", last)], 1)
    if args.grid:
        for b in (first, last):
            tag = "" if b == first else f"_b{b}"
            result[f"ours_grid_tok_s{tag}"] = round(rate[("videolm engine, grid pos.", b)], 1)
            result[f"grid_over_sequence{tag}"] = round(rate[("videolm engine, grid pos.", b)]
                                                       / rate[("videolm engine", b)], 3)
    print(f"ours / transformers at batch {first}: {result['ratio_vs_hf']:.2f}x (goal >= {GOALS['ratio_vs_hf']}); "
          f"at batch {last}: {result[f'ratio_vs_hf_b{last}']:.2f}x")
    print(f"ours, batch {last} / batch {first}: {result['batch8_over_batch1']:.2f}x "
          f"(goal >= {GOALS['batch8_over_batch1']}); transformers: {result['hf_batch8_over_batch1']:.2f}x")
    print(f"at {args.context} tokens: cached step {1e3 * cached:.2f} ms, full recompute {1e3 * full:.1f} ms per token: "
          f"{result['cache_speedup']:.1f}x (goal >= {GOALS['cache_speedup']})")
    gb_s = args.gb_s or next((v for k, v in PEAK_GB_S.items() if gpu and k in gpu), None)
    if gb_s:
        for b in args.batches:
            bound = bandwidth_bound(model, b, args.prefix, args.new_tokens, gb_s)
            got = rate[("videolm engine", b)]
            result[f"bound_tok_s_b{b}"] = round(bound, 1)
            result[f"of_bound_b{b}"] = round(got / bound, 4)
            print(f"batch {b}: {got:.0f} tokens/s = {got / bound:.1%} of the memory-bandwidth bound "
                  f"({bound:.0f} tokens/s: weights and KV cache read once per step at {gb_s:.0f} GB/s)")
    result["goals"] = GOALS
    result["meets_goals"] = all(result[k] >= v for k, v in GOALS.items())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
