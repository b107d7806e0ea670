"""The repo's code folders must never shadow Hugging Face's `tokenizers` when Python runs from the root."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("core", "data", "tokenizers", "lm", "diffusion", "tasks", "evaluation", "train", "cli")


def test_code_folders_have_no_top_level_init():
    for folder in CODE_FOLDERS:
        assert (ROOT / folder).is_dir()
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow a package"


def test_transformers_and_hf_tokenizers_import_from_the_repo_root():
    code = "import transformers, tokenizers; print(tokenizers.__file__); print(tokenizers.Tokenizer.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path, name = out.stdout.split()
    assert name == "Tokenizer"
    assert not Path(path).resolve().is_relative_to(ROOT / "tokenizers")


def test_videolm_subpackages_import_from_anywhere(tmp_path):
    code = "import videolm.data.media, videolm.data.shapes, videolm.cli.main; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_pyproject_maps_every_code_folder():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = project["tool"]["setuptools"]["package-dir"]
    for folder in CODE_FOLDERS:
        assert mapping[f"videolm.{folder}"] == folder
    assert project["project"]["scripts"]["videolm"] == "videolm.cli.main:main"


def test_the_front_door_imports_without_lightning_and_help_without_torch(tmp_path):
    code = "import sys; from videolm import Pipeline; assert 'lightning' not in sys.modules, 'lightning'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    code = "import sys, videolm.cli.main; print('torch' in sys.modules)"  # `videolm --help` needs no torch
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
