"""Prompts as people type them, mapped onto the words a model was trained on.

Sora rewrites a user's short prompt into the detailed captions it was trained on; this model's
captions follow one small grammar, so the honest equivalent is a table: every word of the training
captions (``known``), common paraphrases mapped onto them (``phrases``: "ball" -> "circle",
"to the left" -> "left", ...), and filler words that carry nothing for the model (``fillers``).
`PromptTable.rewrite` normalizes case, punctuation and spacing, applies the longest paraphrase at
each place, keeps known words, drops fillers, and returns the words it could not place, so the
caller can say so (``the model does not know: hexagon, diagonally``).

The table is built from data (`build_table`: the training captions and the paraphrase list that
ships with videolm, ``paraphrases.json``) and saved in the model folder as ``prompts.json``. A
model folder without one gets its prompts with their spacing normalized and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from videolm.core.errors import ConfigError

TABLE_NAME = "prompts.json"
PARAPHRASES = Path(__file__).resolve().parent / "paraphrases.json"
_LONGEST = 5  # words in the longest paraphrase looked up


@dataclass
class PromptTable:
    known: list[str]
    phrases: dict[str, str] = field(default_factory=dict)  # paraphrase -> known words ("" drops it)
    fillers: list[str] = field(default_factory=list)
    lowercase: bool = True  # the training captions are lower case, so prompts are read in lower case

    def normalize(self, prompt: str) -> str:
        """Case (when the captions have one), punctuation and spacing as the captions have them."""
        text = prompt.casefold() if self.lowercase else prompt
        text = re.sub(r"[^\w\s']|_", " ", text)  # punctuation and symbols are spaces
        text = re.sub(r"'(?!t\b)", " ", text)  # quotes go, the n't of a contraction stays
        return " ".join(text.split())

    def rewrite(self, prompt: str) -> tuple[str, list[str]]:
        """``(the prompt in the model's words, the words it could not place)``."""
        known, fillers = set(self.known), set(self.fillers)
        words = self.normalize(prompt).split()
        out: list[str] = []
        unknown: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(_LONGEST, len(words) - i), 0, -1):
                key = " ".join(words[i:i + n])
                if key in self.phrases:
                    out += self.phrases[key].split()
                    i += n
                    break
            else:
                word = words[i]
                if word in known:
                    out.append(word)
                elif word not in fillers and word not in unknown:
                    unknown.append(word)
                i += 1
        return " ".join(out), unknown

    def to_dict(self) -> dict:
        return {"known": self.known, "phrases": self.phrases, "fillers": self.fillers, "lowercase": self.lowercase}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / TABLE_NAME
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> PromptTable | None:
        """The table of a model folder, or None when it has none."""
        path = Path(folder) / TABLE_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(known=list(data["known"]), phrases=dict(data.get("phrases", {})),
                       fillers=list(data.get("fillers", [])), lowercase=bool(data.get("lowercase", True)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not a prompt table ({e})") from None


def build_table(captions: Iterable[str], paraphrases: str | Path = PARAPHRASES) -> PromptTable:
    """The table for a model trained on ``captions``: their words, and those paraphrases of the
    list whose every word of replacement is one of them (a model with no "magenta" gets no
    "purple" -> "magenta")."""
    captions = [c for c in captions if c]
    lowercase = all(c == c.casefold() for c in captions)
    table = PromptTable(known=[], lowercase=lowercase)
    known = sorted({w for c in captions for w in table.normalize(c).split()})
    source = json.loads(Path(paraphrases).read_text())
    phrases = {table.normalize(k): v for k, v in source["phrases"].items()
               if all(w in known for w in v.split()) and table.normalize(k) not in known}
    fillers = sorted(w for w in source["fillers"] if w not in known)
    return PromptTable(known=known, phrases=phrases, fillers=fillers, lowercase=lowercase)


__all__ = ["PARAPHRASES", "TABLE_NAME", "PromptTable", "build_table"]
