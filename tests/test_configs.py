"""Every YAML under configs/ must build the dataclass of the entry point it names."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from videolm.cli.main import command
from videolm.core.config import from_dict, load_config, read_yaml
from videolm.core.errors import ConfigError
from videolm.data.shapes_data import ShapesDataConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_validates_against_the_command_it_names(path):
    entry = read_yaml(path)["entry"]
    _, cmd = command(entry)
    assert cmd.config == entry  # the command reads configs
    schema = cmd.schema or cmd.args
    assert isinstance(load_config(path, schema, entry), schema)


@dataclass
class _Inner:
    size: int = 8
    names: list[str] = field(default_factory=list)


@dataclass
class _Outer:
    rate: float
    mode: Literal["a", "b"] = "a"
    inner: _Inner = field(default_factory=_Inner)
    limit: int | None = None


def test_from_dict_builds_nested_and_coerces_ints_to_floats():
    cfg = from_dict(_Outer, {"rate": 1, "inner": {"size": 4, "names": ["x"]}, "limit": None})
    assert cfg == _Outer(rate=1.0, inner=_Inner(4, ["x"]))
    assert isinstance(cfg.rate, float)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"rate": 1.0, "bogus": 1}, "unknown key 'bogus'"),
        ({"rate": 1.0, "inner": {"sise": 3}}, "unknown key 'inner.sise'"),
        ({}, "missing required key 'rate'"),
        ({"rate": "fast"}, "rate: expected"),
        ({"rate": 1.0, "mode": "c"}, "mode: 'c' is not one of"),
        ({"rate": 1.0, "inner": {"size": True}}, "inner.size: expected int"),
        ({"rate": 1.0, "inner": {"names": "x"}}, "inner.names: expected a list"),
    ],
)
def test_from_dict_rejects_what_does_not_fit(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        from_dict(_Outer, data)


def test_load_config_names_the_file_and_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("entry: data shapes\nnum: 4\nworld: {heigth: 64}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'world.heigth'"):
        load_config(bad, ShapesDataConfig, "data shapes")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("num: 4\n")
    with pytest.raises(ConfigError, match="missing 'entry:'"):
        load_config(wrong, ShapesDataConfig, "data shapes")
    (tmp_path / "broken.yaml").write_text("entry: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml", ShapesDataConfig, "data shapes")
    world = tmp_path / "world.yaml"
    world.write_text("entry: data shapes\nworld: {frames: 16}\n")
    with pytest.raises(ConfigError, match="1 \\+ 4k"):
        load_config(world, ShapesDataConfig, "data shapes")
    with pytest.raises(ConfigError, match="a config for 'videolm data shapes', not 'videolm lm fit'"):
        load_config(world, ShapesDataConfig, "lm fit")
