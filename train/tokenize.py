"""`videolm tokenize`: clips encoded once by a model folder's frozen tokenizers into token shards
(`videolm.data.shards`), which `videolm lm fit` trains on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from videolm.core.errors import UsageError
from videolm.core.outputs import atomic_output_dir
from videolm.data.shards import CODE_FIELDS, ShardWriter
from videolm.data.sources import ClipSource
from videolm.tasks.tokenizing import ClipTokenizer


def write_token_shards(out: str | Path, source: ClipSource, model: str | Path = "shapes-64", batch_size: int = 16,
                       shard_size: int = 1024, overwrite: bool = False,
                       progress: Callable[[int], object] | None = None, device: str = "cpu") -> dict:
    """Encode ``source``'s clips with ``model``'s tokenizers into a shard folder (all or nothing).
    The folder's vocabulary is the model's, with the clips' resolution added if it lacked it.
    ``device``: where the tokenizers run ("cpu", "cuda", "cuda:1", or "auto": a GPU when there is one).
    Returns a JSON-ready summary."""
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} must be >= 1")
    tokenizer = ClipTokenizer(model, device=resolve_device(device))
    clips = source.dataset()
    vocab = tokenizer.vocab
    vocab.add_geometry(source.height, source.width, source.frames)
    tokens = 0
    with atomic_output_dir(out, overwrite=overwrite, command="tokenize", inputs=[source.data, model]) as tmp:
        writer = ShardWriter(tmp, shard_size)
        for start in range(0, len(clips), batch_size):
            batch = [clips[i] for i in range(start, min(start + batch_size, len(clips)))]
            for sample in tokenizer.encode(batch):
                codes = {k: sample.pop(k) for k in CODE_FIELDS if k in sample}
                tokens += sum(codes[k].numel() for k in ("text", "video", "audio") if k in codes)
                writer.add(codes, sample)
            if progress:
                progress(len(batch))
        vocab.save(tmp)
        writer.close({"model": str(tokenizer.folder), "source": vars(source)})
    return {"out": str(out), "clips": len(clips), "shards": len(writer.shards),
            "tokens_per_clip": round(tokens / max(1, len(clips)), 1), "vocabulary": len(vocab)}


def resolve_device(device: str) -> str:
    """``device`` checked against this machine: "auto" is "cuda" where a GPU is present, else "cpu";
    a named GPU that is not there is a UsageError rather than a CUDA error later."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device}: not a device name (cpu, cuda, cuda:N or auto)") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available()
                                  or (parsed.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {device}: no such CUDA device on this machine")
    if parsed.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: only cpu and cuda are supported")
    return device


__all__ = ["resolve_device", "write_token_shards"]
