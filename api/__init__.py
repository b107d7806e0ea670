"""videolm: an autoregressive, token-based video language model.

The front door is the pipeline::

    from videolm import Pipeline

    pipe = Pipeline.from_pretrained("shapes-64")
    result = pipe.generate("t2v", "a large red circle moves left")[0]  # result.video: (T, H, W, 3) uint8

Names are imported when first used, so ``import videolm`` itself costs nothing.
"""

from importlib import import_module
from pathlib import Path

# In a source checkout (an editable install) this file is api/__init__.py and the code folders
# (core/, tokenizers/, lm/, tasks/, diffusion/) sit beside api/: let the package find them there.
# An installed wheel holds them inside the package folder and needs nothing. (The repository root
# joins videolm's own search path only, not sys.path, so it never shadows Hugging Face's tokenizers.)
if Path(__file__).parent.name == "api":
    __path__.append(str(Path(__file__).resolve().parent.parent))  # noqa: F821  (the package's own __path__)

_EXPORTS = {
    "Pipeline": "videolm.tasks.pipeline",
    "Result": "videolm.tasks.pipeline",
    "VideolmError": "videolm.core.errors",
    "UsageError": "videolm.core.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'videolm' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__():
    return __all__
