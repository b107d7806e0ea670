import shutil

import pytest
import torch

from videolm.core.models import resolve_model
from videolm.lm.model import VideoLM
from videolm.tasks.base import BUILTIN
from videolm.tokenizers.vocab import Vocabulary
from videolm.train.lm import bundle_lm


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """videolm's cache (folder indexes) in a folder of the test session's own, never the user's."""
    import os

    os.environ["VIDEOLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def debug_shards(tmp_path_factory):
    """16 clips of random codes in token shards: text (3..6,), video (2, 8), audio (8, 2); every
    fourth without audio. For the debug LM (configs/lm/debug.yaml)."""
    from videolm.data.shards import ShardWriter

    folder = tmp_path_factory.mktemp("shards")
    g = torch.Generator().manual_seed(0)
    writer = ShardWriter(folder, shard_size=5)
    for i in range(16):
        codes = {"text": torch.randint(0, 16, (3 + i % 4,), generator=g),
                 "video": torch.randint(0, 32, (2, 8), generator=g)}
        if i % 4:
            codes["audio"] = torch.randint(0, 8, (8, 2), generator=g)
        writer.add(codes, {"caption": f"clip {i}", "height": 32, "width": 32, "seed": i})
    Vocabulary(text_size=16, video_codes=32, audio_levels=2, audio_codes=8, resolutions=[(32, 32)]).save(folder)
    writer.close({"model": None})
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread; on a busy machine more threads only fight for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A model folder for generation tests: the shipped tokenizers and probe with an untrained `debug` LM
# that knows every built-in task (outputs are noise, but every file, shape and error is real).
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
    (folder / "dit" / "generation_config.json").write_text('{"guidance_scale": 4.0, "num_inference_steps": 32}')
    return folder
