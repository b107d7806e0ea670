"""Self-describing model folders: safetensors weights beside a JSON config, never a pickle.

A model class mixes in `Pretrained`, names its config dataclass and a `kind`, and is built as
``cls(config)``. ``save_pretrained(dir)`` writes::

    DIR/config.json        {"kind": ..., "format": 1, "config": {...the dataclass...}}
    DIR/model.safetensors  the state dict (optionally stored as fp16/bf16 to save space)

``from_pretrained(dir)`` reads the config strictly, rebuilds the model from it and loads the
weights (in fp32 unless asked otherwise). Nothing executes code from the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from videolm.tokenizers.errors import ConfigError, VideolmError
from videolm.tokenizers.schema import from_dict, to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def read_json(path: Path, missing: str):
    """Parsed JSON; `missing` is the message when the file does not exist."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VideolmError(missing) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from e


def read_config_json(folder: str | Path, kind: str) -> dict:
    """The ``config`` block of ``folder/config.json``, checked to be of ``kind``."""
    path = Path(folder) / CONFIG_NAME
    data = read_json(path, f"{folder}: not a saved model folder (no {CONFIG_NAME})")
    if not isinstance(data, dict) or data.get("kind") != kind:
        found = data.get("kind") if isinstance(data, dict) else None
        raise ConfigError(f"{path}: holds a {found!r}, not a {kind!r}")
    return data.get("config", {})


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class TokenizerOutput(NamedTuple):
    """What every media tokenizer's forward returns."""

    recon: torch.Tensor  # the input reconstructed through the quantizer, same shape as the input
    codes: torch.Tensor  # int64 code indices (layout per tokenizer)
    aux_loss: torch.Tensor  # scalar: the quantizer's own loss (commitment, entropy, ...)


class Pretrained:
    """Mixin for `nn.Module`s that are built from one config dataclass."""

    config_class: ClassVar[type]
    kind: ClassVar[str]

    def save_pretrained(self, folder: str | Path, dtype: str = "float32") -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cast = DTYPES[dtype]
        state = {k: (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in self.state_dict().items()}
        tmp = folder / f".{WEIGHTS_NAME}.tmp"
        save_file(state, str(tmp), metadata={"kind": self.kind, "dtype": dtype})
        os.chmod(tmp, 0o644)  # the library creates it private; a model folder is meant to be shared
        os.replace(tmp, folder / WEIGHTS_NAME)
        write_json(folder / CONFIG_NAME, {"kind": self.kind, "format": FORMAT, "config": to_dict(self.config)})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32):
        config = from_dict(cls.config_class, read_config_json(folder, cls.kind))
        model = cls(config)
        try:
            state = load_file(str(Path(folder) / WEIGHTS_NAME))
        except (OSError, SafetensorError) as e:
            raise VideolmError(f"{folder}/{WEIGHTS_NAME}: cannot load weights ({e})") from e
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"{folder}: weights do not fit its config ({str(e).splitlines()[0]})") from e
        return model.to(dtype).eval()
