"""`videolm tokenize`: clips encoded once into token shards for the LM's training."""

from __future__ import annotations

from dataclasses import dataclass, field

from videolm.cli.args import Command, data_input, print_json, progress
from videolm.core.config import check_range
from videolm.core.models import DEFAULT_MODEL
from videolm.core.outputs import check_output_dir
from videolm.data.sources import ClipSource
from videolm.train.tokenize import write_token_shards


@dataclass
class TokenizeArgs(ClipSource):
    out: str = field(kw_only=True)  # output folder (new or empty, or an earlier output of videolm with --overwrite)
    model: str = DEFAULT_MODEL  # the model folder whose tokenizers encode (a folder or a shipped name)
    batch_size: int = 16  # clips encoded at once
    device: str = "cpu"  # where the tokenizers run: cpu, cuda, cuda:N, or auto (a GPU if there is one)
    shard_size: int = 1024  # clips per shard file
    overwrite: bool = False  # replace an earlier output of videolm in --out

    def __post_init__(self):
        super().__post_init__()
        check_range(self, 1, None, "batch_size", "shard_size")


def run(args: TokenizeArgs) -> int:
    data_input(args.data)
    check_output_dir(args.out, args.overwrite, inputs=[args.data, args.model])
    source = ClipSource(args.data, args.num, args.seed, args.split, args.frames, args.height, args.width, args.fps,
                        list(args.backgrounds))
    with progress(args.num, "tokenize") as bar:
        summary = write_token_shards(args.out, source, model=args.model, batch_size=args.batch_size,
                                     shard_size=args.shard_size, overwrite=args.overwrite, progress=bar.update,
                                     device=args.device)
    print_json(summary)
    return 0


COMMAND = Command(TokenizeArgs, run, "encode clips once into token shards for LM training",
                  "Encode clips with the frozen tokenizers of a model folder (caption -> text ids, video -> codes "
                  "(t, n), audio -> codes (frames, levels), Shapes structure video -> codes, and the views the tasks "
                  "read) into safetensors shards with index.json and vocab.json in --out, and print a JSON summary. "
                  "`videolm lm fit` trains on them.")
