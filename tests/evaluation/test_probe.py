"""The Shapes probe and the generation metrics, checked on ground-truth clips."""

import json

import numpy as np
import pytest
import torch

from videolm.core.errors import UsageError
from videolm.core.models import resolve_model
from videolm.data.shapes import EVAL_SEED_START, PALETTE, ShapesConfig, make_clip
from videolm.evaluation import metrics
from videolm.evaluation.probe import (
    HEADS,
    Probe,
    ProbeConfig,
    clip_targets,
    frechet_distance,
    load_probe,
    slot_colors,
)
from videolm.train.probe import augment, fit_probe

EVAL = EVAL_SEED_START


def clips_where(condition, n=1, start=EVAL, limit=400):
    """The first ``n`` held-out clips (among ``limit``) whose metadata satisfies ``condition``."""
    found = []
    for seed in range(start, start + limit):
        clip = make_clip(seed)
        if condition(clip.meta):
            found.append(clip)
            if len(found) == n:
                break
    return found


# -------------------------------------------------------------------------------- match_objects


def test_match_objects_scores_the_best_pairing():
    a = {"shape": "circle", "color": "red", "size": "small", "direction": "left"}
    b = {"shape": "square", "color": "blue", "size": "large", "direction": "still"}
    assert metrics.match_objects([a, b], [a, b]) == {k: (2, 2) for k in metrics.ATTRIBUTES}
    assert metrics.match_objects([a, b], [b, a]) == {k: (2, 2) for k in metrics.ATTRIBUTES}
    wrong_color = dict(b, color="green")
    assert metrics.match_objects([a, b], [wrong_color, a])["color"] == (1, 2)
    missing = metrics.match_objects([a, b], [b])
    assert missing == {k: (1, 2) for k in metrics.ATTRIBUTES}
    assert metrics.match_objects([a], [b, a]) == {k: (1, 1) for k in metrics.ATTRIBUTES}
    assert metrics.match_objects([a], []) == {k: (0, 1) for k in metrics.ATTRIBUTES}


# ---------------------------------------------------------------------------------------- audio


def test_tone_accuracy_hears_the_right_shape_and_not_a_wrong_one():
    clips = clips_where(lambda m: len(m["objects"]) == 1, n=8)
    rotate = {"circle": "square", "square": "triangle", "triangle": "circle"}
    for clip in clips:
        objects = clip.meta["objects"]
        assert metrics.tone_accuracy(clip.audio, objects)
        assert not metrics.tone_accuracy(clip.audio, [dict(objects[0], shape=rotate[objects[0]["shape"]])])


def test_tone_accuracy_follows_loudness_and_accepts_ties():
    def pairs(same_size):
        return clips_where(lambda m: len(m["objects"]) == 2 and m["objects"][0]["shape"] != m["objects"][1]["shape"]
                           and (m["objects"][0]["size"] == m["objects"][1]["size"]) == same_size, n=3)

    for clip in pairs(same_size=True):  # equally loud: the tone that wins is either, both count
        assert metrics.tone_accuracy(clip.audio, clip.meta["objects"])
    for clip in pairs(same_size=False):  # the large object's tone is the dominant one
        a, b = clip.meta["objects"]
        assert metrics.tone_accuracy(clip.audio, [a, b])
        assert not metrics.tone_accuracy(clip.audio, [dict(a, size=b["size"]), dict(b, size=a["size"])])


def test_clicks_are_found_at_the_bounces():
    clips = clips_where(lambda m: any(o["bounces"] for o in m["objects"]), n=10)
    assert clips
    for clip in clips:
        bounces = [f for o in clip.meta["objects"] for f in o["bounces"]]
        assert len(metrics.click_times(clip.audio)) == len(set(bounces))
        assert metrics.bounce_timing_error(clip.audio, bounces) <= 0.005
        shifted = [f - 2 for f in bounces]  # clicks two frames (0.25 s) from where they should be
        assert metrics.bounce_timing_error(clip.audio, shifted) == pytest.approx(1 / 8)


def test_bounce_timing_error_without_bounces_or_clicks():
    clip = clips_where(lambda m: not any(o["bounces"] for o in m["objects"]))[0]
    assert metrics.bounce_timing_error(clip.audio, []) is None
    assert metrics.click_times(clip.audio) == []
    assert metrics.bounce_timing_error(clip.audio, [10]) == pytest.approx(1 / 8)  # a click that never sounds


# --------------------------------------------------------------------------------------- pixels


def test_silhouettes_match_their_own_clip_and_give_back_its_colors():
    for clip in clips_where(lambda m: m["background"] == "black", n=12):
        assert metrics.silhouette_iou(clip.video, clip.structure) == pytest.approx(1.0)
        visible = [o["color"] for o, level in zip(clip.meta["objects"], (255, 160)) if (clip.structure == level).any()]
        assert metrics.silhouette_colors(clip.video, clip.structure) == visible
    clip = make_clip(EVAL)
    shifted = np.roll(clip.video, 8, axis=2)  # objects moved 8 px right
    assert metrics.silhouette_iou(shifted, clip.structure) < 0.7


def test_silhouette_colors_survive_noise():
    clip = make_clip(EVAL)
    rng = np.random.default_rng(0)
    noisy = np.clip(clip.video.astype(int) + rng.normal(0, 20, clip.video.shape), 0, 255).astype(np.uint8)
    assert metrics.silhouette_colors(noisy, clip.structure) == [o["color"] for o in clip.meta["objects"]]
    assert metrics.nearest_color(np.array(PALETTE["cyan"]) + 12) == "cyan"


# --------------------------------------------------------------------------------------- probe


def test_targets_are_indexed_by_colour():
    two = clips_where(lambda m: len(m["objects"]) == 2)[0]
    one = clips_where(lambda m: len(m["objects"]) == 1)[0]
    targets = clip_targets([two.meta, one.meta], with_direction=False)
    assert targets["count"].tolist() == [1, 0]
    assert targets["present"].sum(1).tolist() == [2.0, 1.0]
    for b, clip in enumerate((two, one)):
        for obj in clip.meta["objects"]:
            c = list(PALETTE).index(obj["color"])
            x, y = obj["centers"][0]
            assert targets["cell"][b, c] == int(y) // 8 * 8 + int(x) // 8
            assert targets["shape"][b, c] == ("circle", "square", "triangle").index(obj["shape"])
            assert targets["direction"][b, c] == -100  # no direction for a still image
        absent = targets["present"][b] == 0
        assert (targets["cell"][b][absent] == -100).all() and (targets["size"][b][absent] == -100).all()


def test_slot_colors_order_two_objects_left_to_right():
    red, blue, green = (list(PALETTE).index(c) for c in ("red", "blue", "green"))
    color = torch.full((3, 7), -5.0)
    color[:, red], color[:, blue], color[:, green] = 4.0, 3.0, 2.0  # red likeliest, then blue
    where = torch.zeros(3, 7, 2)
    where[:, red] = torch.tensor([6.0, 1.0])  # red on the right
    where[:, blue] = torch.tensor([2.0, 5.0])  # blue on the left
    where[2, blue] = torch.tensor([6.0, 0.5])  # clip 2: same column, blue above red
    count = torch.tensor([2, 1, 2])
    assert slot_colors(color, where, count).tolist() == [[blue, red], [red, blue], [blue, red]]


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.zeros(8)
    shift[0] = 3.0
    assert frechet_distance(a, a + shift) == pytest.approx(9.0, rel=1e-6)  # same covariance: |shift|^2
    assert frechet_distance(a, 2 * a) > 1.0  # covariance differs
    assert frechet_distance(a, 2 * a) == pytest.approx(frechet_distance(2 * a, a), rel=1e-6)


def test_probe_takes_any_clip_length_and_gives_every_head(one_thread):
    probe = Probe(ProbeConfig.from_name("debug")).eval()
    for t in (1, 5, 17):
        frames = np.stack([make_clip(EVAL + i).video[:t] for i in range(3)])
        logits = probe(frames)
        assert {k: tuple(v.shape) for k, v in logits.items()} == {k: (3, n) for k, n in HEADS.items()}
        assert probe.features(frames).shape == (3, probe.config.hidden)
        for guess in probe.predict(frames):
            assert len(guess["objects"]) in (1, 2) and set(guess["objects"][0]) == set(metrics.ATTRIBUTES)
    with pytest.raises(UsageError):
        probe(make_clip(EVAL).video)  # one clip without the batch axis
    wide = np.stack([make_clip(EVAL, ShapesConfig(height=48, width=80)).video])  # another size: rescaled to its scale
    assert {k: tuple(v.shape) for k, v in probe(wide).items()} == {k: (1, n) for k, n in HEADS.items()}


def test_augmentation_keeps_every_colour_nearest_itself():
    clips = [make_clip(EVAL + i) for i in range(24)]
    video = torch.from_numpy(np.stack([c.video[:2] for c in clips])).float().div(255)
    noisy = (augment(video, torch.Generator().manual_seed(0)) * 255).round().byte().numpy()
    assert not np.array_equal(noisy, np.stack([c.video[:2] for c in clips]))
    for clip, frames in zip(clips, noisy):
        want = [o["color"] for o, level in zip(clip.meta["objects"], (255, 160)) if (clip.structure[:2] == level).any()]
        assert metrics.silhouette_colors(frames, clip.structure[:2]) == want


def test_save_and_load_give_the_same_outputs(tmp_path, one_thread):
    probe = Probe(ProbeConfig.from_name("debug"))
    frames = np.stack([make_clip(EVAL + i).video for i in range(3)])
    probe.train()(frames)  # moves the batch-norm running statistics off their initial values
    probe.eval()
    probe.save_pretrained(tmp_path / "probe")
    loaded = load_probe(tmp_path / "probe")
    assert loaded.config == probe.config and not loaded.training
    with torch.no_grad():
        before, after = probe(frames), loaded(frames)
        assert all(torch.equal(before[k], after[k]) for k in HEADS)
        assert torch.equal(probe.features(frames), loaded.features(frames))
    assert loaded.predict(frames) == probe.predict(frames)


def test_fit_probe_writes_a_probe_and_its_held_out_scores(tmp_path, one_thread):
    out = tmp_path / "probe"
    result = fit_probe(out, num_clips=64, steps=3, batch_size=4, preset="debug", eval_clips=4)
    assert set(result["clips"]) == {"count", "background", "shape", "color", "size", "direction"}
    assert set(result["images"]) == {"count", "background", "shape", "color", "size"}
    assert all(0.0 <= v <= 1.0 for view in ("clips", "images") for v in result[view].values())
    assert result["train"]["steps"] == 3
    assert json.loads((out / "metrics.json").read_text()) == result
    assert Probe.from_pretrained(out).config == ProbeConfig.from_name("debug")
    with pytest.raises(UsageError):  # refuses a non-empty folder before training
        fit_probe(out, num_clips=64, steps=1, batch_size=4, preset="debug", eval_clips=4)


def test_shipped_probe_reads_held_out_clips(one_thread):
    folder = resolve_model("shapes-64") / "probe"
    assert (folder / "model.safetensors").stat().st_size < 2 * 2**20
    probe = load_probe("shapes-64")
    clips = [make_clip(EVAL + 5000 + i, ShapesConfig(backgrounds=["black", "gray", "striped", "checkered", "noise"]))
             for i in range(16)]
    guesses = probe.predict(np.stack([c.video for c in clips]))
    right = total = 0
    for clip, guess in zip(clips, guesses):
        for correct, count in metrics.match_objects(clip.meta["objects"], guess["objects"]).values():
            right, total = right + correct, total + count
        right, total = right + (guess["background"] == clip.meta["background"]), total + 1
    assert right / total >= 0.95
    videos = np.stack([c.video for c in clips])
    empty = np.where(np.stack([c.structure for c in clips]) > 0, 0, videos).astype(np.uint8)  # objects blacked out
    with torch.no_grad():
        real, blank = probe.features(videos).numpy(), probe.features(empty).numpy()
    assert frechet_distance(real[:8], real[8:]) < frechet_distance(real[:8], blank[8:])
