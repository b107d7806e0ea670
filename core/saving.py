"""Self-describing model folders in one format: huggingface_hub's `PyTorchModelHubMixin`.

A model class mixes in `Pretrained`, names its config dataclass and a `kind`, and is built as
``cls(config)``. ``save_pretrained(dir)`` (the mixin's) writes::

    DIR/config.json        the config dataclass's fields
    DIR/model.safetensors  the state dict (optionally stored as fp16/bf16 to save space), its kind
                           and dtype in the file's metadata
    DIR/README.md          a model card

so `push_to_hub` and the Hub's tooling work on it as they are. ``from_pretrained(dir)`` reads a
local folder strictly: the config through `videolm.core.config.from_dict` (a wrong key or size is
one line naming the file), the weights checked against the model that config builds (on the
meta device, before anything is allocated), safetensors only. Nothing executes code from the
folder. The LM is a transformers model and keeps transformers' own format (`videolm.lm.model`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from videolm.core.config import from_dict
from videolm.core.errors import ConfigError, UsageError, VideolmError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")  # formats that unpickle code: never loaded


def read_json(path: Path, missing: str):
    """Parsed JSON; `missing` is the message when the file does not exist."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(missing) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not valid JSON ({str(e).splitlines()[0][:200]})") from e


def weights_file(folder: str | Path, name: str = WEIGHTS_NAME) -> Path:
    """``folder/name`` (safetensors), or a `UsageError` naming what is there instead: a folder holding
    only pickled weights (``.bin``, ``.pt``, ``.ckpt``, ...) is refused, never loaded."""
    path = Path(folder) / name
    if path.is_file():
        return path
    pickled = sorted(p.name for pattern in PICKLED for p in Path(folder).glob(pattern))
    if pickled:
        raise UsageError(f"{Path(folder) / pickled[0]}: pickled weights, which videolm never loads (they can run "
                         f"code); save the model as {name}")
    raise UsageError(f"{folder}: no {name} (the model's weights)")


def check_weights(path: Path, model: torch.nn.Module, config_path: Path) -> None:
    """Fail with one line naming the files unless the safetensors file at ``path`` holds exactly the
    tensors ``model`` has, in its shapes. ``model`` may live on the meta device (built from the
    config, nothing allocated), so a config with absurd sizes is caught before any memory is taken."""
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, SafetensorError, ValueError) as e:
        raise UsageError(f"{path}: not a readable safetensors file (truncated or corrupt: "
                         f"{str(e).splitlines()[0][:160]})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    if missing or extra or wrong:
        if wrong:
            k = wrong[0]
            detail = f"{k} is {shapes[k]} in the weights but {expected[k]} by the config"
        elif missing:
            detail = f"the weights lack {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        else:
            detail = f"the weights hold {extra[0]}, which the config has no place for"
        raise ConfigError(f"{config_path} does not describe {path}: {detail}")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as e:
        raise UsageError(f"{path}: cannot load weights (truncated or corrupt: {str(e).splitlines()[0][:160]})") from e


def saved_kind(folder: str | Path) -> str | None:
    """What a model folder holds (its weights' metadata, or an older config.json's ``kind``)."""
    folder = Path(folder)
    try:
        with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
            kind = (f.metadata() or {}).get("kind")
    except (OSError, SafetensorError):
        kind = None
    if kind is None and (folder / CONFIG_NAME).is_file():
        data = read_json(folder / CONFIG_NAME, "")
        kind = data.get("kind") if isinstance(data, dict) else None
    return kind


def read_config_json(folder: str | Path, kind: str) -> dict:
    """The config fields of ``folder/config.json`` (the mixin's flat form; a folder written before
    it nests them under ``config``), its weights checked to be a ``kind``."""
    path = Path(folder) / CONFIG_NAME
    data = read_json(path, f"{folder}: not a saved model folder (no {CONFIG_NAME})")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a mapping of config fields is needed")
    found = saved_kind(folder)
    if found is not None and found != kind:
        raise ConfigError(f"{Path(folder) / WEIGHTS_NAME}: holds a {found!r}, not a {kind!r}")
    return data["config"] if "config" in data and "format" in data else data



class TokenizerOutput(NamedTuple):
    """What every media tokenizer's forward returns."""

    recon: torch.Tensor  # the input reconstructed through the quantizer, same shape as the input
    codes: torch.Tensor  # int64 code indices (layout per tokenizer)
    aux_loss: torch.Tensor  # scalar: the quantizer's own loss (commitment, entropy, ...)


CARD = """---
{{ card_data }}
---

A part of a videolm model folder, saved with huggingface_hub's
PyTorchModelHubMixin: `config.json` holds its config and `model.safetensors` its weights (their kind and
dtype are in the file's metadata). videolm loads it with `from_pretrained(folder)` of its class.
"""


class Pretrained(PyTorchModelHubMixin, library_name="videolm", tags=["videolm"], model_card_template=CARD):
    """Mixin for `nn.Module`s built from one config dataclass, ``cls(config)``: `PyTorchModelHubMixin`'s
    save format, read back strictly."""

    config_class: ClassVar[type]
    kind: ClassVar[str]

    def save_pretrained(self, folder: str | Path, dtype: str = "float32", **kwargs) -> Path:
        """The mixin's save, with the weights stored as ``dtype`` (loaded back as float32)."""
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r}: choose {', '.join(DTYPES)}")
        self._save_dtype = dtype
        super().save_pretrained(folder, **kwargs)
        return Path(folder)

    def _save_pretrained(self, save_directory: Path) -> None:
        cast = DTYPES[getattr(self, "_save_dtype", "float32")]
        state = {k: (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in self.state_dict().items()}
        tmp = save_directory / f".{WEIGHTS_NAME}.tmp"
        save_file(state, str(tmp), metadata={"kind": self.kind, "dtype": str(cast).removeprefix("torch.")})
        os.chmod(tmp, 0o644)  # the library creates it private; a model folder is meant to be shared
        os.replace(tmp, save_directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32):
        """The model a local folder holds: its config read strictly, the weights checked against the
        config before anything is allocated, then loaded (safetensors only, never a pickle)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such model folder")
        config_path = folder / CONFIG_NAME
        try:
            config = from_dict(cls.config_class, read_config_json(folder, cls.kind))
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith(str(folder)) else f"{config_path}: {e}") from None
        except VideolmError as e:
            raise ConfigError(f"{config_path}: {e}") from None
        path = weights_file(folder)
        try:
            with torch.device("meta"):
                shell = cls(config)
        except VideolmError as e:
            raise ConfigError(f"{config_path}: {e}") from None
        except Exception:  # noqa: BLE001  (a module that cannot be built on the meta device is checked below)
            shell = None
        if shell is not None:
            check_weights(path, shell, config_path)
        model = cls(config)
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_weights(path).items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"{config_path} does not describe {path} ({str(e).splitlines()[0]})") from e
        return model.to(dtype).eval()


__all__ = ["CONFIG_NAME", "DTYPES", "PICKLED", "WEIGHTS_NAME", "Pretrained", "TokenizerOutput", "check_weights",
           "load_weights", "read_config_json", "read_json", "saved_kind", "weights_file"]
