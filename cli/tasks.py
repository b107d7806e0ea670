"""`videolm tasks`: the tasks, what each needs and makes; or the words a model's prompts are read in."""

from __future__ import annotations

import json
from dataclasses import dataclass

from videolm.cli.args import Command
from videolm.core.models import DEFAULT_MODEL, LM_DIR, resolve_model
from videolm.tasks.base import BUILTIN, task_class
from videolm.tasks.prompts import PromptTable
from videolm.tokenizers.vocab import Vocabulary


@dataclass
class TasksArgs:
    model: str | None = None  # list the tasks of this model folder or shipped name instead of the built-in ones
    json: bool = False  # one JSON object per task
    words: bool = False  # instead, list the words the model's prompts are read in, and the paraphrases it maps


def run(args: TasksArgs) -> int:
    if args.words:
        return _words(args.model or DEFAULT_MODEL)
    names = list(BUILTIN)
    if args.model:
        folder = resolve_model(args.model)
        names = Vocabulary.load(folder / LM_DIR if (folder / LM_DIR / "vocab.json").is_file() else folder).tasks
    rows = []
    for name in names:
        cls = task_class(name) if name in BUILTIN else None
        rows.append({"task": name, "description": cls.description if cls else "(a task of your own)",
                     "needs": (cls.needs or "nothing") if cls else "?", "output": cls.output if cls else "?"})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    width = max((len(r["task"]) for r in rows), default=4)
    need_width = max((len(r["needs"]) for r in rows), default=5)
    for r in rows:
        print(f"{r['task']:<{width}}  {r['output']:<5}  {r['needs']:<{need_width}}  {r['description']}")
    return 0


def _words(model: str) -> int:
    folder = resolve_model(model)
    table = PromptTable.load(folder / LM_DIR) or PromptTable.load(folder)
    if table is None:
        print(f"{folder} has no prompt table: prompts are read as given (spacing aside)")
        return 0
    print("known: " + " ".join(table.known))
    for phrase, words in sorted(table.phrases.items()):
        print(f"{phrase} -> {words or '(dropped)'}")
    print("ignored: " + " ".join(table.fillers))
    return 0


COMMAND = Command(TasksArgs, run, "list the tasks, what each needs and makes",
                  "List the built-in tasks (or those a model was trained on, with --model): name, a one-line "
                  "description, the inputs `videolm generate` needs and the output; with --words, the words the "
                  "model's prompts are read in.")
