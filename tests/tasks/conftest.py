"""A model folder for generation tests: the shipped tokenizers and probe with an untrained `debug` LM
that knows every built-in task (outputs are noise, but every file, shape and error is real)."""

import shutil

import pytest
import torch

from videolm.lm.model import VideoLM
from videolm.tasks.base import BUILTIN
from videolm.tasks.lm_runs import bundle_lm
from videolm.tasks.models import resolve_model
from videolm.tokenizers.vocab import Vocabulary


@pytest.fixture(scope="session")
def debug_model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    folder = root / "shapes-debug"
    shutil.copytree(resolve_model("shapes-64"), folder, ignore=shutil.ignore_patterns("lm", "refiner", "dit"))
    vocab = Vocabulary.load(folder)
    for name in BUILTIN:
        vocab.add_task(name)
    run = root / "run_model"
    lm = VideoLM.from_lm_config("debug", vocab_size=-(-len(vocab) // 64) * 64, max_seq_len=1024)
    lm.save_pretrained(run)
    vocab.save(run)
    bundle_lm(run, folder)
    return folder


@pytest.fixture(scope="session")
def diffusion_model_dir(debug_model_dir, tmp_path_factory):
    """`debug_model_dir` plus an untrained `debug` refiner and DiT baseline (noise, but real files)."""
    from videolm.diffusion.dit import DiT, DiTConfig
    from videolm.diffusion.refiner import Refiner, RefinerConfig
    from videolm.tokenizers.text import TextTokenizer

    folder = tmp_path_factory.mktemp("model") / "shapes-diffusion"
    shutil.copytree(debug_model_dir, folder, ignore=shutil.ignore_patterns("refiner", "dit"))
    torch.manual_seed(0)
    Refiner(RefinerConfig.from_name("debug")).save_pretrained(folder / "refiner")
    text_vocab = TextTokenizer.load(folder).vocab_size
    DiT(DiTConfig.from_name("debug", text_vocab=text_vocab)).save_pretrained(folder / "dit")
    return folder
