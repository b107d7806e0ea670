import pytest
import torch

from videolm.lm.model import VideoLM


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """The debug model is tiny: every LM test runs on one thread."""


@pytest.fixture(scope="session")
def model() -> VideoLM:
    """The debug preset (GQA: 4 query heads over 2 key/value heads), seeded, in eval mode. Shared:
    tests must not change it (wrap a fresh one instead)."""
    torch.manual_seed(0)
    return VideoLM.from_lm_config("debug").eval()

