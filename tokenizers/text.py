"""Text tokenizer: a small sentencepiece BPE model trained in memory from captions.

Byte fallback makes every Unicode string encodable, and the identity normalization keeps it
exact: ``decode(encode(s)) == s`` for any ``s``. Ids are local (``0 .. vocab_size-1``, id 0 is
``<unk>``); the unified `Vocabulary` shifts them into the text range and owns bos/eos/pad.

BPE, not unigram: on a caption corpus of a few dozen words BPE learns every word as one piece
(a Shapes caption takes one token per word), while unigram's pruning leaves sub-word pieces.

Whitespace: sentencepiece writes a space as the piece symbol ``▁`` (U+2581), so a literal ``▁``
in the text would come back as a space. `encode` therefore feeds sentencepiece the text between
literal ``▁`` characters and writes each ``▁`` as its three UTF-8 byte pieces, and it adds the
leading space ("dummy prefix") itself, so that it applies to the first segment only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from videolm.core.errors import DataError, UsageError, VideolmError

MODEL_NAME = "text.model"
# 256 byte pieces + <unk> + ~24 characters + merges. The full Shapes grammar (every background
# included) needs about 400 for one piece per word; a small corpus may yield fewer (the limit is soft).
DEFAULT_VOCAB_SIZE = 512
SPACE_SYMBOL = "\u2581"


class TextTokenizer:
    def __init__(self, model_proto: bytes):
        """From a serialized model; ValueError if it is not one with byte fallback."""
        self._proto = bytes(model_proto)
        if not self._proto:
            raise ValueError("empty sentencepiece model")
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError:
            raise ValueError("not a sentencepiece model") from None
        byte_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        if not all(self._sp.is_byte(i) for i in byte_ids):
            raise ValueError("a sentencepiece model without byte fallback")
        self._symbol_ids = [byte_ids[b] for b in SPACE_SYMBOL.encode()]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE,
              model_type: str = "bpe") -> TextTokenizer:
        """Train on ``texts`` (one sentence each). Deterministic: same texts, same model bytes."""
        if model_type not in ("bpe", "unigram"):
            raise UsageError(f"text tokenizer model_type must be 'bpe' or 'unigram', got {model_type!r}")
        sentences = [" " + t.replace(SPACE_SYMBOL, " ") for t in texts if t]
        if not sentences:
            raise DataError("cannot train a text tokenizer on no text")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=model,
                vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
                byte_fallback=True, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=False,  # encode() adds it, see the module docstring
                num_threads=1, minloglevel=2)
        except RuntimeError as e:
            reason = str(e).split("] ", 1)[-1].split(". Increase")[0]  # no source location or flag advice
            raise UsageError(f"cannot train a text tokenizer with vocab_size={vocab_size}: {reason}") from e
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def model_proto(self) -> bytes:
        """The serialized sentencepiece model (what `save` writes)."""
        return self._proto

    def piece(self, id: int) -> str:
        self._check_ids([id])
        return self._sp.id_to_piece(int(id))

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not valid Unicode ({e.reason} at position {e.start})") from None
        first, *rest = text.split(SPACE_SYMBOL)
        ids = self._sp.encode(" " + first)
        for segment in rest:
            ids += self._symbol_ids
            if segment:
                ids += self._sp.encode(segment)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        self._check_ids(ids)
        text = self._sp.decode(ids)
        return text[1:] if text.startswith(" ") else text

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MODEL_NAME
        tmp = path.with_name(f".{MODEL_NAME}.tmp")
        tmp.write_bytes(self._proto)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """From a folder holding ``text.model``, or from the ``.model`` file itself."""
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_NAME
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            raise UsageError(f"{path}: no text tokenizer there (file not found)") from None
        except OSError as e:
            raise VideolmError(f"{path}: cannot read the text tokenizer ({e.strerror})") from e
        except ValueError as e:
            raise UsageError(f"{path}: not a usable text tokenizer ({e})") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, TextTokenizer) and self._proto == other._proto

    __hash__ = None

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size})"

    def _check_ids(self, ids: list[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"text id {bad[0]} is outside the text tokenizer's range [0, {self.vocab_size})")
