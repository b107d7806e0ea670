"""`videolm finetune`: a trained model taught a new task (full or LoRA), scored before and after."""

from __future__ import annotations

import json

from videolm.cli.args import Command
from videolm.core.training import starting_run
from videolm.train.finetune import FinetuneConfig, resolve_base, run_finetune


def run(cfg: FinetuneConfig) -> int:
    resolve_base(cfg.base)  # a missing base fails now, not after the slow first evaluation
    with starting_run(cfg, "finetune"):  # OUT may not be, hold or lie in the base (nor any other input)
        report = run_finetune(cfg)
    print(json.dumps(report["summary"]))
    return 0


COMMAND = Command(
    FinetuneConfig, run, "teach a trained model a new task (full or LoRA) from a YAML config",
    "Fine-tune a model folder's LM (default shapes-64) on a new task named in the config by import path "
    "(configs/finetune/*.yaml): its token is appended to the vocabulary, old tasks can be mixed in, and the new task "
    "and chosen old tasks are scored before and after. Writes OUT/model (for generate --model), OUT/adapter (LoRA: "
    "the adapter alone) and OUT/report.json, and prints the report's summary. A rerun resumes the training exactly.",
    config="finetune")
