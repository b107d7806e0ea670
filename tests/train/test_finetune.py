"""`videolm finetune` end to end at debug size: tasks from outside the package (the worked
examples, docs/examples/colorize.py and reverse.py), a grown vocabulary, LoRA and full fine-tuning."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from videolm.cli.main import main
from videolm.core.errors import ConfigError
from videolm.data.shapes import make_clip
from videolm.lm.model import VideoLM
from videolm.tasks.pipeline import Pipeline
from videolm.tokenizers.vocab import Vocabulary
from videolm.train.finetune import blend_weights, grow_vocab, load_adapter, save_model_folder

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path, base, method="lora", example="colorize", **train):
    cfg = yaml.safe_load((ROOT / "configs" / "finetune" / f"{example}.yaml").read_text())
    cfg.update(base=str(base), method=method, paths=[str(ROOT / "docs" / "examples")], out=str(tmp_path / "run"))
    cfg["data"].update(num=6, mix={"t2v": 0.5}, batch_size=6)
    cfg["eval"].update(num=3, tasks=["t2v"], batch_size=3)
    cfg["train"].update(steps=2, batch_size=4, row_len=1024, warmup_steps=1, log_every=1, checkpoint_every=2, threads=1,
                        **train)
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_grow_vocab_appends_and_moves_nothing():
    vocab = Vocabulary(text_size=16, video_codes=32, audio_levels=2, audio_codes=8, tasks=["t2v", "v2a"], task_slots=2)
    model = VideoLM.from_lm_config("debug", vocab_size=len(vocab))
    before = {name: vocab[name] for name in ("<bos>", "<task:t2v>", "<task:v2a>")}
    rows = model.get_input_embeddings().weight.detach().clone()
    new = grow_vocab(model, vocab, "colorize")  # the task slots are full: appended past the old ids
    assert new >= rows.shape[0] and {name: vocab[name] for name in before} == before
    emb = model.get_input_embeddings().weight.detach()
    assert emb.shape[0] % 64 == 0 and emb.shape[0] > new
    assert torch.equal(emb[:rows.shape[0]], rows)  # old rows untouched
    assert torch.allclose(emb[new], rows[[before["<task:t2v>"], before["<task:v2a>"]]].mean(0))
    assert model.get_output_embeddings().weight.shape[0] == emb.shape[0]
    assert grow_vocab(model, vocab, "colorize") == new  # idempotent
    like = grow_vocab(model, vocab, "reverse", like="v2a")  # token_init: a related task's rows
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        assert torch.equal(layer.weight[like], layer.weight[before["<task:v2a>"]])
    known = [vocab.task_id(t) for t in vocab.tasks]
    apart = grow_vocab(model, vocab, "mirror", like="orthogonal")  # a direction no task token has
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        w = layer.weight.detach()
        assert torch.allclose(w[known] @ w[apart], torch.zeros(len(known)), atol=1e-5)
        assert w[apart].norm() == pytest.approx(float(w[known].norm(dim=1).mean()), rel=1e-4)
    with pytest.raises(ConfigError, match="token_init: 'extend' is not one of"):
        grow_vocab(model, vocab, "loop", like="extend")
    assert "loop" not in vocab.tasks  # nothing added on a bad name


def test_lora_finetune_from_a_user_module(debug_model_dir, tmp_path, capsys):
    assert main(["finetune", "--config", str(_config(tmp_path, debug_model_dir))]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "colorize_color_before" in summary and "colorize_color_after" in summary and "t2v_change" in summary
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["old_tasks_identical_with_adapter_disabled"] is True
    assert set(report["before"]) == set(report["after"]) == {"colorize", "t2v"}
    assert {"psnr", "color", "ceiling", "baseline"} <= set(report["after"]["colorize"])
    # the saved model folder knows the new task, appended after the old ones, and generate runs it
    vocab = Vocabulary.load(run / "model" / "lm")
    base_vocab = Vocabulary.load(debug_model_dir / "lm")
    assert vocab.tasks[:-1] == base_vocab.tasks and vocab.tasks[-1] == "colorize"
    assert all(vocab[t] == base_vocab[t] for t in ("<bos>", "<task:t2v>", "<mask>"))
    pipe = Pipeline.from_pretrained(run / "model")
    clip = make_clip(5)
    (result,) = pipe.generate("colorize", prompt=clip.caption, video=clip.video)
    assert result.video.shape == (17, 64, 64, 3)
    # the adapter alone, put back on the base, merges into the saved model (stored as float16)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    merged, adapter_vocab = load_adapter(debug_model_dir, run / "adapter", merge=True)
    assert adapter_vocab.tasks == vocab.tasks
    ids = torch.tensor([[vocab["<bos>"], vocab.task_id("colorize"), vocab.res_id(64, 64), vocab["<bot_i>"]]])
    with torch.no_grad():
        a = merged(input_ids=ids).logits
        b = pipe.model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=2e-2, rtol=0)
    unmerged, _ = load_adapter(debug_model_dir, run / "adapter")
    with torch.no_grad():
        assert torch.allclose(unmerged(input_ids=ids).logits, a, atol=1e-4)
    # a model folder made from this one (a second fine-tune) keeps colorize's module beside its own
    again = save_model_folder(pipe.model, pipe, tmp_path / "again")
    assert (again / "lm" / "tasks" / "colorize.py").is_file()
    assert Pipeline.from_pretrained(again).task("colorize").name == "colorize"
    sys.modules.pop("colorize", None)


def test_full_finetune_and_cli_generate(debug_model_dir, tmp_path):
    path = _config(tmp_path, debug_model_dir, method="full")
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "blend": 0.5}))  # saved halfway to the base
    assert main(["finetune", "--config", str(path)]) == 0
    run = tmp_path / "run"
    assert not (run / "adapter").exists() and (run / "model" / "lm" / "model.safetensors").is_file()
    clip = make_clip(6)
    from videolm.data.media import write_video

    write_video(tmp_path / "clip.mp4", clip.video, fps=8)
    out = tmp_path / "out"
    assert main(["generate", "--model", str(run / "model"), "--task", "colorize", "--prompt", clip.caption,
                 "--video", str(tmp_path / "clip.mp4"), "--out", str(out)]) == 0
    assert (out / "sample_000.mp4").is_file()


def test_full_finetune_with_frozen_lower_layers(debug_model_dir, tmp_path, capsys):
    """freeze_layers: the embeddings and the first layers come out exactly as they went in (the new
    task token's row stays at its start), the layers above them are trained."""
    cfg = yaml.safe_load(_config(tmp_path, debug_model_dir, method="full", example="reverse").read_text())
    cfg.update(freeze_layers=1, token_init="mean")
    path = tmp_path / "frozen.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["finetune", "--config", str(path)]) == 0
    base = VideoLM.from_pretrained(debug_model_dir / "lm").float()
    tuned = VideoLM.from_pretrained(tmp_path / "run" / "model" / "lm").float()
    vocab = Vocabulary.load(tmp_path / "run" / "model" / "lm")
    new = vocab.task_id("reverse")
    old_rows = [i for i in range(base.get_input_embeddings().weight.shape[0]) if i != new]
    assert len(base.model.layers) > 1

    def same(name, p):  # vocabulary-sized matrices: the old ids' rows (the new id's may move)
        q = base.get_parameter(name)
        by_id = name.startswith(("model.embed_tokens", "lm_head"))
        return torch.equal(p[old_rows], q[old_rows]) if by_id else torch.equal(p, q)

    changed = {name for name, p in tuned.named_parameters() if not same(name, p)}
    assert changed and not any(n.startswith(("model.embed_tokens", "model.layers.0.")) for n in changed)
    assert any(n.startswith("model.layers.1.") for n in changed)
    others = [vocab.task_id(t) for t in vocab.tasks if t != "reverse"]
    emb = tuned.get_input_embeddings().weight
    assert torch.allclose(emb[new], emb[others].mean(0), atol=1e-3)  # where grow_vocab put it
    cfg.update(method="lora")
    path.write_text(yaml.safe_dump(cfg))
    assert main(["finetune", "--config", str(path)]) == 2
    assert "freeze_layers=1" in capsys.readouterr().err
    sys.modules.pop("reverse", None)


def test_token_lr_scale_is_a_positive_multiple_for_full_fine_tuning_only():
    from videolm.train.finetune import FinetuneConfig

    assert FinetuneConfig(task="m:T", method="full", token_lr_scale=20.0).token_lr_scale == 20.0
    for bad in ({"method": "lora", "token_lr_scale": 5.0}, {"method": "full", "token_lr_scale": 0.0},
                {"method": "full", "freeze_layers": 2, "token_lr_scale": 5.0}):
        with pytest.raises(ConfigError, match="token_lr_scale="):
            FinetuneConfig(task="m:T", **bad)


def test_project_needs_old_tasks_and_a_known_granularity():
    from videolm.train.finetune import FinetuneConfig, FinetuneData

    assert FinetuneConfig(task="m:T", data=FinetuneData(mix={"t2v": 0.1}, project="model")).data.project == "model"
    with pytest.raises(ConfigError, match="data.project: projecting onto the old tasks' gradient needs old tasks"):
        FinetuneConfig(task="m:T", data=FinetuneData(project="tensor"))
    with pytest.raises(ConfigError, match="data.project='layer': choose none, model or tensor"):
        FinetuneConfig(task="m:T", data=FinetuneData(mix={"t2v": 0.1}, project="layer"))


def test_blend_moves_weights_back_toward_the_base_but_not_the_new_token():
    from videolm.train.finetune import FinetuneConfig

    vocab = Vocabulary(text_size=16, video_codes=32, audio_levels=2, audio_codes=8, tasks=["t2v", "v2a"], task_slots=2)
    model = VideoLM.from_lm_config("debug", vocab_size=len(vocab))
    new = grow_vocab(model, vocab, "reverse", like="orthogonal")
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    with torch.no_grad():  # "fine-tuning": every weight moves, the new token's rows too
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    blend_weights(model, start, 1.0, keep=[new])
    assert all(torch.equal(v, tuned[k]) for k, v in model.state_dict().items())
    blend_weights(model, start, 0.25, keep=[new])
    old = [i for i in range(model.get_input_embeddings().weight.shape[0]) if i != new]
    for name, w in model.state_dict().items():
        expected = start[name] + 0.25 * (tuned[name] - start[name])
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(w[new], tuned[name][new])  # the base never had this token: kept as trained
            assert torch.allclose(w[old], expected[old], atol=1e-6)
        else:
            assert torch.allclose(w, expected, atol=1e-6)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=f"blend={bad}"):
            FinetuneConfig(task="m:T", blend=bad)


def test_lora_blend_scales_the_merged_adapter(debug_model_dir, tmp_path):
    path = _config(tmp_path, debug_model_dir)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "blend": 0.5}))
    assert main(["finetune", "--config", str(path)]) == 0
    run = tmp_path / "run"
    merged, vocab = load_adapter(debug_model_dir, run / "adapter", merge=True)  # the adapter's full change
    base = VideoLM.from_pretrained(debug_model_dir / "lm").float()
    saved = VideoLM.from_pretrained(run / "model" / "lm").float()
    new = vocab.task_id("colorize")
    moved = 0
    for name, w in saved.state_dict().items():
        full, start = merged.state_dict()[name].float(), base.state_dict()[name]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.allclose(w[new], full[new], atol=2e-3)  # the new token's rows as trained
            keep = torch.ones(w.shape[0], dtype=torch.bool)
            keep[new] = False
            w, full, start = w[keep], full[keep], start[keep]
        assert torch.allclose(w, start + 0.5 * (full - start), atol=2e-3)  # float16 storage
        moved += int(not torch.allclose(full, start, atol=1e-3))
    assert moved  # the adapter changed some weights, and the saved ones sit halfway
    sys.modules.pop("colorize", None)


def test_a_task_the_base_knows_is_refused(debug_model_dir, tmp_path, capsys):
    cfg = yaml.safe_load(_config(tmp_path, debug_model_dir).read_text())
    cfg["task"] = "t2v"
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["finetune", "--config", str(path)]) == 2
    assert "already one of" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model").exists()
    sys.modules.pop("colorize", None)


def test_eval_scores_a_finetuned_task_as_finetune_does(debug_model_dir, tmp_path, capsys):
    """`videolm eval` on a fine-tuned model tokenizes the views its new task reads (colorize's gray
    clip) and scores it against the task's truth, with ceiling and copy baseline."""
    cfg = yaml.safe_load(_config(tmp_path, debug_model_dir, method="full").read_text())
    cfg["eval"]["tasks"] = []
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["finetune", "--config", str(path)]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "run" / "model"), "--tasks", "colorize,t2v", "--num", "2"]) == 0
    tasks = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"]
    assert {"color", "psnr", "ceiling", "baseline"} <= set(tasks["colorize"])
    assert "ceiling" not in tasks["t2v"] and "fd_probe" in tasks["t2v"]
    # two fine-tuned models compared on their new task too, paired over clips: here a model with itself
    args = ["eval", "--model", str(tmp_path / "run" / "model"), "--tasks", "colorize", "--num", "2"]
    assert main([*args, "--per-clip", "--out", str(tmp_path / "ft.json")]) == 0
    saved = json.loads((tmp_path / "ft.json").read_text())["tasks"]["colorize"]
    assert len(saved["per_clip"]) == 2 and {"shape", "color", "size"} <= set(saved["per_clip"][0])
    capsys.readouterr()
    assert main([*args, "--against", str(tmp_path / "ft.json")]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["against"]["tasks"]["colorize"]
    assert rows["color"]["change"] == 0 and rows["color"]["se"] == 0 and rows["loss_change"] == 0
    sys.modules.pop("colorize", None)


def _example(name: str):
    """The worked example module ``docs/examples/NAME.py``, imported without leaving its folder on the path."""
    sys.path.insert(0, str(ROOT / "docs" / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "docs" / "examples"))


def test_colorize_example_grays_and_keeps_sizes():
    to_gray = _example("colorize").to_gray
    clip = make_clip(2).video
    gray = to_gray(clip)
    assert gray.shape == clip.shape and np.array_equal(gray[..., 0], gray[..., 2])
    assert np.array_equal(to_gray(gray), gray)  # graying twice changes nothing


def test_reverse_example_end_to_end(debug_model_dir, tmp_path, capsys):
    path = _config(tmp_path, debug_model_dir, example="reverse")
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["project"] = "tensor"  # A-GEM's projection against the mixed-in t2v, weight by weight
    path.write_text(yaml.safe_dump(cfg))
    assert main(["finetune", "--config", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(0 <= row.get("projected", -1) <= 1 for row in logged)
    assert {"reverse_direction_before", "reverse_direction_after", "reverse_direction_ceiling",
            "reverse_direction_copy_baseline"} <= set(summary)
    stages = summary["minutes_by_stage"]
    assert set(stages) == {"before", "training", "after"}
    assert sum(stages.values()) == pytest.approx(summary["minutes"], abs=0.02)
    run = tmp_path / "run"
    assert (run / "model" / "lm" / "tasks" / "reverse.py").is_file()
    clip = make_clip(7)
    from videolm.data.media import write_video

    write_video(tmp_path / "clip.mp4", clip.video, fps=8)
    out = tmp_path / "out"
    assert main(["generate", "--model", str(run / "model"), "--task", "reverse", "--video", str(tmp_path / "clip.mp4"),
                 "--out", str(out)]) == 0
    assert (out / "sample_000.mp4").is_file()
    sys.modules.pop("reverse", None)


def test_reverse_truth_turns_each_object_around_as_it_last_moved():
    reverse = _example("reverse")
    task = reverse.Reverse.__new__(reverse.Reverse)  # truth helpers need no vocabulary
    seen = set()
    for seed in range(40):
        clip = make_clip(seed)
        c = {"video": clip.video, "meta": clip.meta}
        assert np.array_equal(task.truth(c)[0], clip.video[-1]) and np.array_equal(task.baseline(c), clip.video)
        for obj, turned in zip(clip.meta["objects"], task.truth_objects(c)):
            assert turned["color"] == obj["color"]
            if not obj["bounces"]:  # reversed, it moves the other way
                assert turned["direction"] == reverse.OPPOSITE[obj["direction"]]
                seen.add((obj["direction"], "no bounce"))
            elif obj["bounces"] == [b for b in obj["bounces"] if b <= 11]:  # it came back: reversed, it goes out again
                assert turned["direction"] == obj["direction"]
                seen.add((obj["direction"], "early bounce"))
            elif min(obj["bounces"]) >= 14:  # it only just hit the wall: the reversed clip leaves it
                assert turned["direction"] == reverse.OPPOSITE[obj["direction"]]
                seen.add((obj["direction"], "late bounce"))
    assert len(seen) >= 8  # moving and still objects, bounced early, late or not at all
    sys.modules.pop("reverse", None)


def test_a_second_fine_tune_mixes_in_and_keeps_the_first_ones_task(debug_model_dir, tmp_path, capsys):
    first = tmp_path / "first"
    first.mkdir()
    assert main(["finetune", "--config", str(_config(first, debug_model_dir))]) == 0
    second = tmp_path / "second"
    second.mkdir()
    path = _config(second, first / "run" / "model", example="reverse")
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["mix"] = {"colorize": 0.5}  # the base's own task of a user's, by its name: it needs its gray view
    cfg["eval"]["tasks"] = ["colorize"]
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["finetune", "--config", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "colorize_change" in summary and "reverse_direction_after" in summary
    lm = second / "run" / "model" / "lm"
    assert sorted(p.name for p in (lm / "tasks").iterdir()) == ["colorize.py", "reverse.py"]
    assert main(["finetune", "--config", str(_config(tmp_path, first / "run" / "model", example="reverse")),
                 "--out", str(first)]) == 2  # an --out holding the base would have deleted it
    assert (first / "run" / "model" / "lm" / "model.safetensors").is_file()
    sys.modules.pop("colorize", None)
    sys.modules.pop("reverse", None)
