import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """videolm's cache (folder indexes) in a folder of the test session's own, never the user's."""
    import os

    os.environ["VIDEOLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread; on a busy machine more threads only fight for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
