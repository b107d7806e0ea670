import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """videolm's cache (folder indexes) in a folder of the test session's own, never the user's."""
    import os

    os.environ["VIDEOLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def debug_shards(tmp_path_factory):
    """16 clips of random codes in token shards: text (3..6,), video (2, 8), audio (8, 2); every
    fourth without audio. For the debug LM (configs/lm/debug.yaml)."""
    from videolm.lm.data import ShardWriter
    from videolm.tokenizers.vocab import Vocabulary

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
