"""docs/lm.md's examples run as they are, so the guide can't lie."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "docs" / "lm.md"
BLOCKS = re.findall(r"```python\n(.+?)\n```", README.read_text(), re.S)


def test_readme_has_an_example():
    assert BLOCKS


@pytest.mark.parametrize("code", BLOCKS, ids=lambda c: c.splitlines()[0])
def test_readme_example_runs(code):
    exec(compile(code, str(README), "exec"), {})
