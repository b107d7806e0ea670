"""The README can't lie: its two commands are the ones CI and users run, and the main job works."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _command(marker: str) -> str:
    block = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", README, re.S)
    assert block, f"README has no command after <!-- {marker} -->"
    return block.group(1).strip()


def test_readme_has_exactly_two_commands_and_both_install_cpu_torch_first():
    assert len(re.findall(r"```bash", README)) == 2
    for marker in ("main-command", "test-command"):
        assert _command(marker).startswith("pip install torch==2.13.0 && pip install ")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _command("test-command") in ci  # the README's command is a line of .ci/run, verbatim


def test_readme_main_job_runs(tmp_path):
    """The main command generates from the shipped model: an mp4 of 17 frames and its manifest."""
    import json

    from videolm.data.media import read_video

    job = _command("main-command").split(" && ")[-1]
    argv = shlex.split(job)
    assert argv[:2] == ["videolm", "generate"]
    cli = [sys.executable, "-m", "videolm.cli.main", *argv[1:]]
    out = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / argv[argv.index("--out") + 1]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["samples"][0]["video"] == "sample_000.mp4"
    assert read_video(folder / "sample_000.mp4").shape == (17, 64, 64, 3)


def _section(title: str) -> str:
    match = re.search(rf"^## {title}\n(.+?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


TASK_COMMANDS = re.findall(r"`(videolm [^`]+)`", _section("Tasks"))


def test_the_tasks_section_shows_every_task_with_its_own_output_folder():
    generate = [c for c in TASK_COMMANDS if c.startswith("videolm generate")]
    outs = [shlex.split(c)[shlex.split(c).index("--out") + 1] for c in generate]
    assert len(generate) == 13 and len(set(outs)) == len(outs)
    first = TASK_COMMANDS.index(generate[0])
    assert "videolm data examples --out ex" in TASK_COMMANDS[:first]  # the inputs are made first


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys):
    """Each command of the Tasks section, in order, in one fresh folder (the shipped model), and the
    Python example: every one succeeds and writes what it says."""
    import json

    from videolm.cli.main import main

    monkeypatch.chdir(tmp_path)
    for command in TASK_COMMANDS:
        argv = shlex.split(command)
        assert main(argv[1:]) == 0, (command, capsys.readouterr().err)
        if "--out" in argv and argv[1] == "generate":
            folder = tmp_path / argv[argv.index("--out") + 1]
            samples = json.loads((folder / "manifest.json").read_text())["samples"]
            assert samples and all((folder / (s["video"] or s["image"] or s["audio"])).is_file() for s in samples)
    assert (tmp_path / "out" / "t2i" / "sample_000.png").is_file()
    for code in re.findall(r"```python\n(.+?)\n```", README, re.S):
        exec(compile(code, "README.md", "exec"), {})


def test_the_real_footage_commands_run_as_written(tmp_path, monkeypatch, capsys):
    import json

    from videolm.cli.main import main

    commands = re.findall(r"`(videolm [^`]+)`", _section("Real footage"))
    assert any("reconstruct" in c for c in commands)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)
        if argv[1:3] == ["data", "photos"]:
            continue  # named, not run: the photo world has its own tests
        assert main(argv[1:]) == 0, (command, capsys.readouterr().err)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["psnr"] > 0 and "baseline_psnr" in result and (tmp_path / "out" / "decoded.mp4").is_file()
