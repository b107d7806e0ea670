"""Where models live: a folder path, or the name of a model shipped inside the package.

Shipped models sit in ``models/NAME/`` and are installed as package data, so
``resolve_model("shapes-64")`` works after a plain ``pip install .`` as well as in a checkout.
A shipped model folder is a bundle: ``video_tokenizer/``, ``audio_tokenizer/``, ``text.model``,
``vocab.json`` (and, as they land, the language model, refiner and baseline).
"""

from __future__ import annotations

import json
from pathlib import Path

from videolm.core.errors import ConfigError, UsageError

# what a model folder holds
LM_DIR = "lm"  # the language model (a transformers checkpoint) with its vocab.json
REFINER_DIR = "refiner"  # the diffusion refiner that cleans decoded frames (on by default when present)
DIT_DIR = "dit"  # the DiT baseline (``backend="dit"``)
PROBE_DIR = "probe"  # the probe classifier evaluation reads clips with
CUSTOM_TASKS = "tasks.json"  # in lm/: name -> "module:Class" of the tasks not built in
CUSTOM_CODE = "tasks"  # in lm/: their modules' source, imported from there

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models"  # videolm/models (the repository's models/)
DEFAULT_MODEL = "shapes-64"
GENERATION_CONFIG = "generation_config.json"  # in lm/ and dit/: how the model generates by default


def shipped_models() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if p.is_dir()) if SHIPPED_DIR.is_dir() else []


def resolve_model(name_or_dir: str | Path) -> Path:
    """A model folder: an existing path wins; otherwise a shipped model's name."""
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    if str(name_or_dir) in shipped_models():
        return SHIPPED_DIR / str(name_or_dir)
    if path.exists():
        raise UsageError(f"--model {name_or_dir}: is a file, not a model folder")
    shipped = ", ".join(shipped_models()) or "none yet"
    raise UsageError(f"--model {name_or_dir}: no such folder, and not a shipped model (shipped: {shipped})")


def generation_defaults(folder: str | Path) -> dict:
    """A model's generation defaults, from ``folder/generation_config.json`` (``guidance_scale``,
    ``temperature``, ``num_inference_steps``, ...): the one place each default is set. Missing: {}."""
    path = Path(folder) / GENERATION_CONFIG
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a mapping of settings is needed")
    return data

