"""LM training throughput and the padding fraction with and without packing, on the Shapes task mixture.

    python benchmarks/lm_train.py [--threads 2] [--steps 10] [--warmup 2] [--shards DIR] [--config configs/lm/tiny.yaml]
    python benchmarks/lm_train.py --device cuda --config configs/lm/small.yaml --no-unpacked [--compile]  # MFU

The `tiny` preset in float32 on CPU (and, side by side, in bf16-mixed: CPU autocast, float32
weights, what ``train.precision: auto-bf16`` picks on a CPU with native bf16), trained as
`videolm lm fit` trains it: batches of the config's ``batch_size`` sequences from the task mixture (t2v + v2a, text dropout), packed into
rows of ``row_len`` tokens (`PackCollate`), the loss over output tokens only (`output_losses`),
AdamW with the trainer's parameter groups, gradient clipping by norm. A plain loop rather than
Lightning, so that each optimizer step is timed on its own: the batches are collated before the
timing (collation is reported apart) and the first ``--warmup`` steps are not counted.

The sequences have the exact Shapes lengths: from ``--shards`` (token shards written by
``videolm tokenize --data shapes``) when given; otherwise synthetic samples, with the real
captions of the Shapes training seeds tokenized by the shipped text tokenizer, and random codes of
the real shapes (video 5 x 64 = 320 codes for 17 x 64 x 64, audio 107 frames x 4 levels), through
the tasks' own ``build``. So a t2v sequence is 328-341 tokens and a v2a one 756.

Reported: training tokens/s, counting the real (non-padding) tokens and every slot of the rows,
with packing and, for comparison, without it (one sequence per row, padded to the batch's longest,
`train.packing: false`); the padding fraction of both layouts over ``--padding-batches`` batches
(and of one sequence per fixed ``row_len`` row). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from videolm.core.config import load_config
from videolm.core.models import resolve_model
from videolm.core.training import cpu_has_native_bf16
from videolm.data.shards import TokenShards
from videolm.lm.data import Buckets, PackCollate, TaskSequences
from videolm.lm.losses import output_losses
from videolm.lm.model import LMConfig, VideoLM
from videolm.tasks.base import build_tasks, grid_layout
from videolm.tokenizers.geometry import parse_clip_size
from videolm.tokenizers.vocab import Vocabulary
from videolm.train.lm import LMFitConfig
from videolm.train.lm_module import LMModule

VIDEO_SHAPE = (5, 64)  # latent frames x tokens per frame: 17 x 64 x 64 through the video tokenizer
AUDIO_SHAPE = (107, 4)  # frames x levels: 34000 samples at hop 320, 4 residual levels


class SyntheticShapes(torch.utils.data.Dataset):
    """Samples as token shards hold them (local codes), with real Shapes captions and random codes."""

    def __init__(self, num: int, vocab: Vocabulary, seed: int = 0, size: tuple[int, int, int] = (64, 64, 17)):
        from videolm.data.shapes import ShapesConfig, sample_scene
        from videolm.data.shapes_data import split_seeds
        from videolm.tokenizers.text import TextTokenizer

        text = TextTokenizer.load(resolve_model("shapes-64"))
        world = ShapesConfig()
        self.captions = [text.encode(sample_scene(s, world).caption) for s in split_seeds("train", 0, num)]
        self.vocab, self.seed = vocab, seed
        h, w, n = self.size = size
        self.video_shape = (1 + (n - 1) // 4, (h // 8) * (w // 8))  # as the video tokenizer lays them out
        self.audio_shape = (round(n / 8 * 16000) // 320 + 1, AUDIO_SHAPE[1])  # 8 fps, 16 kHz, hop 320

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        h, w, n = self.size
        return {"text": torch.tensor(self.captions[i], dtype=torch.long),
                "video": torch.randint(0, self.vocab.video_codes, self.video_shape, generator=gen),
                "audio": torch.randint(0, self.vocab.audio_codes, self.audio_shape, generator=gen),
                "height": h, "width": w, "frames": n}


def size_mixture(text: str, clips: int, vocab: Vocabulary, seed: int) -> Buckets:
    """``"64x64x17:2,48x80x17:1.5"`` -> synthetic clips of each size, mixed by those weights."""
    parts, weights = [], []
    for item in text.split(","):
        name, _, weight = item.partition(":")
        size = parse_clip_size(name.strip(), 17, "--sizes")
        vocab.add_geometry(*size)
        parts.append(SyntheticShapes(clips, vocab, seed, size))
        weights.append(float(weight or 1))
    return Buckets(parts, weights, seed)


def batches(data: TaskSequences, batch_size: int, count: int, seed: int) -> list[list]:
    """``count`` batches of sequences, drawn as a shuffled DataLoader would (mixture and dropout seeded)."""
    torch.manual_seed(seed)
    order = torch.randperm(len(data)).tolist()
    need = batch_size * count
    order = (order * (need // len(order) + 1))[:need]
    return [[data[i] for i in order[k * batch_size:(k + 1) * batch_size]] for k in range(count)]


def padding(items: list[list], collate) -> float:
    tokens = slots = 0
    for batch in items:
        rows = collate(batch).rows
        tokens += int((rows.example >= 0).sum())
        slots += rows.example.numel()
    return 1 - tokens / slots


def train(model: VideoLM, module: LMModule, collated: list, warmup: int, grad_clip: float, bf16: bool = False,
          device: str = "cpu", flops: list[float] | None = None) -> dict:
    """Time each optimizer step over the collated batches; the first ``warmup`` are not counted.
    ``bf16``: the forward under autocast to bfloat16 (Lightning's bf16-mixed), float32 weights.
    ``flops``: the model FLOPs of each batch (see `model_flops`), for the achieved FLOP/s."""
    optimizer = module.configure_optimizers()
    model.train()
    cuda = device.startswith("cuda")
    seconds, real, slots, losses, done = [], [], [], [], []
    for k, batch in enumerate(collated):
        batch = batch.to(device)
        start = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            nll, _ = output_losses(model, batch)  # (N,)
        loss = nll.sum() / max(1, len(nll))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        losses.append(float(loss.detach()))
        if k >= warmup:
            seconds.append(elapsed)
            real.append(batch.num_tokens)
            slots.append(batch.rows.ids.numel())
            done.append(flops[k] if flops else 0.0)
    total = sum(seconds)
    return {"tok_s": sum(real) / total, "slot_tok_s": sum(slots) / total, "s_per_step": statistics.median(seconds),
            "flop_s": sum(done) / total,
            "padding": 1 - sum(real) / sum(slots),
            "rows": statistics.mean(b.rows.ids.shape[0] for b in collated), "row_len": collated[0].rows.ids.shape[1],
            "loss_first": losses[0], "loss_last": losses[-1]}


def model_flops(model: VideoLM, batch: list) -> float:
    """Training FLOPs (forward and backward, 3x the forward) the model needs for ``batch``'s sequences,
    counted as PaLM's appendix B counts them: 6 per matrix parameter per token (the layers' matrices
    for every token; the head only for output tokens, the only positions it runs on), plus
    12 L D n^2 per sequence of n tokens for attention's two products (the full square: the prefix
    is bidirectional, and PaLM does not halve it for causal rows either). Padding and work across
    packed sequences, which the block-diagonal mask throws away, are not counted."""
    cfg = model.config
    layers = sum(p.numel() for p in model.model.layers.parameters() if p.dim() == 2)
    head = cfg.hidden_size * cfg.vocab_size
    total = 0.0
    for ex in batch:
        n = len(ex.ids)
        outputs = n - ex.prefix_len
        total += 6 * layers * n + 6 * head * outputs + 12 * cfg.num_hidden_layers * cfg.hidden_size * n * n
    return total


PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0}  # dense bf16, the vendors' sheets


def peak_tflops(device: str) -> float | None:
    """The dense bf16 peak of ``device``'s GPU from its name (None on CPU or an unknown GPU)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lm/tiny.yaml",
                        help="an 'lm fit' config: preset, tasks, batch, row_len, AdamW")
    parser.add_argument("--shards", default=None, help="token shards from `videolm tokenize` (default: synthetic)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the config's)")
    parser.add_argument("--row-len", type=int, default=None, help="(default: the config's)")
    parser.add_argument("--clips", type=int, default=2000, help="synthetic clips")
    parser.add_argument("--padding-batches", type=int, default=100)
    parser.add_argument("--no-unpacked", action="store_true", help="skip timing the unpacked baseline")
    parser.add_argument("--no-bf16", action="store_true", help="skip timing packed rows in bf16-mixed")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (a GPU: MFU is reported for bf16)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer body (not lm fit's way)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak for MFU (default: from the GPU's name, H100 989.4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default=None,
                        help="also train on a mixture of clip sizes, e.g. 64x64x17:2,48x80x17:1.5,80x48x17:1.5,"
                             "64x64x33:1.5,64x64x9:1 (synthetic), packed, beside the 64x64x17-only one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device on this machine")

    cfg = load_config(args.config, LMFitConfig, "lm fit")
    train_cfg = cfg.train
    batch_size = args.batch_size or train_cfg.batch_size
    row_len = args.row_len or train_cfg.row_len
    if args.shards:
        samples = TokenShards(args.shards)
        vocab = Vocabulary.load(samples.folder)
    else:
        vocab = Vocabulary.load(resolve_model("shapes-64"))
        vocab.add_resolution(64, 64)
        samples = SyntheticShapes(args.clips, vocab, args.seed)
    if args.sizes:  # every sequence then names its clip's size and length, the 64x64x17 ones too
        vocab.add_geometry(64, 64, 17)
    mixed = size_mixture(args.sizes, args.clips, vocab, args.seed) if args.sizes else None
    tasks = build_tasks(list(cfg.data.tasks), vocab)
    data = TaskSequences(samples, tasks, list(cfg.data.tasks.values()), cfg.data.text_dropout, row_len)
    pad_id = vocab["<pad>"]

    start = time.perf_counter()
    sample_batches = batches(data, batch_size, args.padding_batches, args.seed)
    lengths = {t.name: sorted({len(ex.ids) for b in sample_batches for ex in b if ex.task == k})
               for k, t in enumerate(tasks)}
    grid = grid_layout(vocab) if cfg.model.get("positions") == "grid" else None  # a config with grid positions
    packed, unpacked = PackCollate(row_len, pad_id, grid=grid), PackCollate(row_len, pad_id, packing=False, grid=grid)
    collate_start = time.perf_counter()
    pad_packed = padding(sample_batches, packed)
    collate_ms = 1e3 * (time.perf_counter() - collate_start) / len(sample_batches)
    pad_unpacked = padding(sample_batches, unpacked)
    pad_fixed = padding(sample_batches, lambda b: _fixed_rows(b, row_len, pad_id))
    data_seconds = time.perf_counter() - start

    lm = LMConfig.from_name(cfg.preset, **{"vocab_size": -(-len(vocab) // 64) * 64, "pad_id": pad_id,
                                          "bos_id": vocab["<bos>"], "eos_id": vocab["<eos>"], **cfg.model})
    torch.manual_seed(args.seed)
    first = VideoLM.from_lm_config(lm)
    initial = first.state_dict()
    steps = batches(data, batch_size, args.warmup + args.steps, args.seed + 1)
    layouts = {"packed": (packed, False)}
    if not args.no_unpacked:
        layouts["unpacked"] = (unpacked, False)
    if not args.no_bf16:
        layouts["packed_bf16"] = (packed, True)
    runs = {name: (collate, bf16, steps) for name, (collate, bf16) in layouts.items()}
    pad_sizes = None
    if mixed is not None:
        mixed_data = TaskSequences(mixed, tasks, list(cfg.data.tasks.values()), cfg.data.text_dropout, row_len)
        pad_sizes = padding(batches(mixed_data, batch_size, args.padding_batches, args.seed), packed)
        runs["packed_sizes"] = (packed, False, batches(mixed_data, batch_size, args.warmup + args.steps, args.seed + 1))
    results = {}
    for name, (collate, bf16, steps) in runs.items():
        model = VideoLM.from_lm_config(lm)
        model.load_state_dict(initial)  # every layout starts from the same weights
        model.to(args.device)
        if args.compile:
            model.model.compile()  # in place: the state dict keeps its keys
        module = LMModule(model, train_cfg, "unused", [t.name for t in tasks])  # for its optimizer only
        results[name] = train(model, module, [collate(b) for b in steps], args.warmup, train_cfg.grad_clip, bf16,
                              args.device, [model_flops(first, b) for b in steps])
        del model, module
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

    params = sum(p.numel() for p in first.parameters()) / 1e6
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    where = (f"{gpu}, float32 (TF32 off) and bf16-mixed" if gpu else
             f"CPU float32 (and bf16-mixed: native bf16 {'yes' if cpu_has_native_bf16() else 'no'}), "
             f"{args.threads} threads")
    print(f"{cfg.preset} ({params:.1f} M), {where}, AdamW; batches of {batch_size} "
          f"sequences ({', '.join(f'{k}: {v[0]}-{v[-1]}' for k, v in lengths.items() if v)} tokens), "
          f"{args.steps} timed steps after {args.warmup}; data: {'shards' if args.shards else 'synthetic'}")
    print(f"{'layout':34s} {'rows':>6s} {'row len':>8s} {'s/step':>7s} {'real tok/s':>11s} {'slot tok/s':>11s} "
          f"{'padding':>8s} {'TFLOP/s':>8s}")
    for name, r in results.items():
        label = {"packed": f"packed into rows of {row_len}", "unpacked": "one per row, padded to the longest",
                 "packed_bf16": "packed, bf16-mixed", "packed_sizes": "packed, mixed sizes"}[name]
        print(f"{label:34s} {r['rows']:6.1f} {r['row_len']:8d} {r['s_per_step']:7.2f} {r['tok_s']:11.1f} "
              f"{r['slot_tok_s']:11.1f} {r['padding']:8.1%} {r['flop_s'] / 1e12:8.2f}")
    print(f"padding over {args.padding_batches} batches: packed {pad_packed:.1%}, one per row padded to the batch's "
          f"longest {pad_unpacked:.1%}, one per row of {row_len} {pad_fixed:.1%}; packing {collate_ms:.1f} ms/batch")
    result = {
        "benchmark": "lm_train", "preset": cfg.preset, "params_m": round(params, 2), "threads": args.threads,
        "device": gpu or "cpu", "compiled": args.compile,
        "data": "shards" if args.shards else "synthetic", "batch_size": batch_size, "row_len": row_len,
        "steps": args.steps, "warmup": args.warmup,
        "train_tok_s": round(results["packed"]["tok_s"], 1),
        "train_slot_tok_s": round(results["packed"]["slot_tok_s"], 1),
        "s_per_step": round(results["packed"]["s_per_step"], 3),
        "padding_packed": round(pad_packed, 4), "padding_unpacked": round(pad_unpacked, 4),
        "padding_fixed_rows": round(pad_fixed, 4), "pack_ms_per_batch": round(collate_ms, 2),
        "loss_first": round(results["packed"]["loss_first"], 4), "loss_last": round(results["packed"]["loss_last"], 4),
        "data_seconds": round(data_seconds, 2),
    }
    if "packed_bf16" in results:
        result["bf16_tok_s"] = round(results["packed_bf16"]["tok_s"], 1)
        result["bf16_over_fp32"] = round(results["packed_bf16"]["tok_s"] / results["packed"]["tok_s"], 2)
        result["bf16_loss_last"] = round(results["packed_bf16"]["loss_last"], 4)
        result["cpu_native_bf16"] = cpu_has_native_bf16()
        result["bf16_tflop_s"] = round(results["packed_bf16"]["flop_s"] / 1e12, 2)
        peak = args.peak_tflops or peak_tflops(args.device)
        if peak:
            result["peak_tflop_s"] = peak
            result["mfu"] = round(results["packed_bf16"]["flop_s"] / 1e12 / peak, 4)
            print(f"MFU (bf16-mixed, model FLOPs over the dense bf16 peak of {peak} TFLOP/s): {result['mfu']:.1%}")
    if "packed_sizes" in results:
        result.update(sizes=args.sizes, sizes_tok_s=round(results["packed_sizes"]["tok_s"], 1),
                      sizes_over_square=round(results["packed_sizes"]["tok_s"] / results["packed"]["tok_s"], 3),
                      padding_sizes=round(pad_sizes, 4), sizes_step_padding=round(results["packed_sizes"]["padding"], 4),
                      square_step_padding=round(results["packed"]["padding"], 4))
        print(f"mixed sizes ({args.sizes}): padding over {args.padding_batches} batches {pad_sizes:.1%} "
              f"(64x64x17 only: {pad_packed:.1%}); tokens/s {result['sizes_over_square']:.2f}x the 64x64x17-only rate")
    if "unpacked" in results:
        result["unpacked_tok_s"] = round(results["unpacked"]["tok_s"], 1)
        result["unpacked_slot_tok_s"] = round(results["unpacked"]["slot_tok_s"], 1)
    print(json.dumps(result))


def _fixed_rows(batch, row_len: int, pad_id: int):
    """One sequence per row of ``row_len`` tokens (fixed-length rows without packing)."""
    from videolm.lm.data import TaskBatch
    from videolm.lm.masks import pad

    rows = pad([(it.ids, it.prefix_len) for it in batch], row_len, pad_id=pad_id)
    return TaskBatch(rows, torch.tensor([it.task for it in batch]))


if __name__ == "__main__":
    main()
