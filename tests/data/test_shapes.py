"""The Shapes generator checked against docs/design.md, from the pixels and samples it produces."""

import numpy as np
import pytest

from videolm.core.errors import DataError, UsageError
from videolm.data.shapes import (
    AMPLITUDES,
    BACKGROUNDS,
    EVAL_SEED_START,
    PALETTE,
    TONES,
    Scene,
    ShapeObject,
    ShapesConfig,
    make_clip,
    parse_caption,
    render,
)
from videolm.data.shapes_data import ShapesDataset

SEEDS = range(200)
STEP = {"left": (-2, 0), "right": (2, 0), "up": (0, -2), "down": (0, 2), "still": (0, 0)}


@pytest.fixture(scope="module")
def clips():
    return [make_clip(s) for s in SEEDS]


def _color_mask(video, color):
    return (video == np.array(PALETTE[color], np.uint8)).all(-1)  # (T, H, W)


def test_same_seed_same_clip_and_different_seeds_differ():
    a, b, c = make_clip(7), make_clip(7), make_clip(8)
    assert np.array_equal(a.video, b.video) and np.array_equal(a.audio, b.audio) and a.meta == b.meta
    assert not np.array_equal(a.video, c.video)


def test_clip_format_is_the_design_default(clips):
    clip = clips[0]
    assert clip.video.shape == (17, 64, 64, 3) and clip.video.dtype == np.uint8
    assert clip.structure.shape == (17, 64, 64, 3) and clip.structure.dtype == np.uint8
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (34000,)  # 2.125 s at 16 kHz
    assert np.abs(clip.audio).max() <= 1.0


def test_caption_grammar_agrees_with_metadata(clips):
    counts = set()
    for clip in clips:
        parsed = parse_caption(clip.caption)
        assert parsed["background"] == clip.meta["background"] == "black"
        assert not clip.caption.endswith(".") and clip.caption == clip.caption.lower()
        meta = [{k: o[k] for k in ("shape", "color", "size", "direction")} for o in clip.meta["objects"]]
        assert parsed["objects"] == meta
        counts.add(len(meta))
        if len(meta) == 2:
            assert meta[0]["color"] != meta[1]["color"]
    assert counts == {1, 2}


def test_caption_examples_and_background_suffix():
    obj = ShapeObject("circle", "red", "large", "left", (30.0, 10.0))
    still = ShapeObject("square", "blue", "small", "still", (5.0, 5.0))
    assert Scene(0, "black", [obj]).caption == "a large red circle moves left"
    assert Scene(0, "gray", [obj, still]).caption == (
        "a large red circle moves left and a small blue square stays still on a gray background"
    )
    with pytest.raises(DataError):
        parse_caption("a huge red circle moves left")


def test_palette_colours_are_exactly_where_the_objects_are(clips):
    for clip in clips:
        objects = clip.meta["objects"]
        level = clip.structure[..., 0]
        for k, obj in enumerate(objects):
            visible = level == (255, 160)[k]
            assert visible.any()
            assert _color_mask(clip.video, obj["color"])[visible].all()
        drawn = level > 0
        assert (clip.video[~drawn] == 0).all()  # black background elsewhere
        assert set(np.unique(level)) <= {0, 255, 160}
        assert np.array_equal(clip.structure[..., 0], clip.structure[..., 2])


def test_objects_fill_a_box_of_their_size_with_their_shape(clips):
    for clip in clips:
        if len(clip.meta["objects"]) == 1:
            obj = clip.meta["objects"][0]
            ys, xs = np.nonzero(_color_mask(clip.video[0], obj["color"]))
            s = {"small": 12, "large": 20}[obj["size"]]
            assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (s, s)
            fill = len(xs) / (s * s)
            expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[obj["shape"]]
            assert abs(fill - expected) < 0.1, (obj, fill)
            if obj["shape"] == "triangle":  # apex up: the top row is narrower than the bottom row
                assert (ys == ys.min()).sum() < (ys == ys.max()).sum() == s


def test_centroids_move_by_the_stated_direction_without_bouncing_early(clips):
    checked = 0
    for clip in clips:
        if len(clip.meta["objects"]) != 1:
            continue
        obj = clip.meta["objects"][0]
        assert all(b >= 8 for b in obj["bounces"])
        mask = _color_mask(clip.video, obj["color"])  # (T, H, W)
        ys, xs = np.arange(64)[:, None], np.arange(64)[None, :]
        centroid = np.stack([((mask * xs).sum((1, 2)), (mask * ys).sum((1, 2)))], 0)[0].T / mask.sum((1, 2))[:, None]
        steps = np.diff(centroid[:8], axis=0)  # frames 0..7: no bounce yet
        assert np.allclose(steps, STEP[obj["direction"]], atol=1e-6), (obj["direction"], steps)
        for t in range(17):  # the metadata's centre is the drawn bounding box's centre
            ys_t, xs_t = np.nonzero(mask[t])
            box_centre = ((xs_t.min() + xs_t.max() + 1) / 2, (ys_t.min() + ys_t.max() + 1) / 2)
            assert box_centre == tuple(obj["centers"][t])
        checked += 1
    assert checked > 50


def test_bounces_keep_objects_inside_and_reverse_motion():
    cfg = ShapesConfig()
    scene = Scene(3, "black", [ShapeObject("square", "red", "small", "right", (40.0, 20.0))])  # edge at x=52
    clip = render(scene, cfg)
    obj = clip.meta["objects"][0]
    xs = np.array(obj["centers"])[:, 0]
    assert obj["bounces"] == [6]  # 40 + 2*6 = 52 touches the right edge
    assert xs.max() == 52 + 6 and np.all(np.diff(xs[:7]) == 2) and np.all(np.diff(xs[6:]) == -2)
    for t in range(17):
        assert _color_mask(clip.video[t], "red").sum() == 144  # never clipped by the frame


def test_tones_are_in_the_audio_spectrum(clips):
    freqs = np.fft.rfftfreq(34000, 1 / 16000)
    for clip in clips[:60]:
        spectrum = np.abs(np.fft.rfft(clip.audio * np.hanning(len(clip.audio))))
        present = {TONES[o["shape"]] for o in clip.meta["objects"]}
        level = {f: spectrum[np.abs(freqs - f) < 3].max() for f in TONES.values()}
        for f in present:
            peak = freqs[np.argmax(np.where(np.abs(freqs - f) < 20, spectrum, 0))]
            assert abs(peak - f) < 1.0  # the hum sits at its shape's frequency
            assert all(level[f] > 20 * level[g] for g in set(TONES.values()) - present)


def test_hum_amplitude_follows_size_and_clicks_sit_on_bounces():
    cfg = ShapesConfig()
    big = render(Scene(1, "black", [ShapeObject("circle", "red", "large", "still", (20.0, 20.0))]), cfg)
    small = render(Scene(1, "black", [ShapeObject("circle", "red", "small", "still", (20.0, 20.0))]), cfg)
    assert np.isclose(np.abs(big.audio).max(), AMPLITUDES["large"], atol=1e-3)
    assert np.isclose(np.abs(small.audio).max(), AMPLITUDES["small"], atol=1e-3)
    bouncing = render(Scene(1, "black", [ShapeObject("circle", "red", "small", "right", (40.0, 20.0))]), cfg)
    residual = bouncing.audio - small.audio  # the hum removed: clicks only
    onsets = np.flatnonzero(np.abs(residual) > 1e-4)
    assert onsets.size and abs(onsets[0] / 16000 - 6 / 8) < 0.002  # bounce on frame 6 at 8 fps
    assert np.abs(residual).max() == pytest.approx(0.5, abs=0.01)
    assert onsets[-1] - onsets[0] < 0.016 * 16000


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_backgrounds_stay_dark(background):
    cfg = ShapesConfig(backgrounds=[background])
    clip = make_clip(11, cfg)
    assert clip.meta["background"] == background
    bg = clip.video[clip.structure[..., 0] == 0]
    assert bg.max() <= 110
    assert (background == "black") == (bg.max() == 0)
    assert parse_caption(clip.caption)["background"] == background


def test_other_sizes_and_lengths_scale():
    cfg = ShapesConfig(height=64, width=96, frames=33)
    clip = make_clip(4, cfg)
    assert clip.video.shape == (33, 64, 96, 3) and clip.audio.shape == (66000,)
    big = ShapesConfig(height=128, width=128)
    assert big.size_px("small") == 24 and big.size_px("large") == 40
    moving = [o for s in range(40) for o in make_clip(s, big).meta["objects"] if o["direction"] == "right"]
    assert moving and all(np.diff(np.array(o["centers"])[:8, 0]).tolist() == [4.0] * 7 for o in moving)


def test_bad_world_settings_are_usage_errors():
    for bad in ({"height": 60}, {"frames": 16}, {"backgrounds": ["pink"]}, {"max_objects": 3}):
        with pytest.raises(UsageError):
            ShapesConfig(**bad)


def test_training_split_never_reaches_evaluation_seeds():
    ds = ShapesDataset(num=4, seed=10)
    assert [ds[i]["seed"] for i in range(4)] == [10, 11, 12, 13]
    ev = ShapesDataset(num=2, split="eval")
    assert ev[0]["seed"] == EVAL_SEED_START and np.array_equal(ev[1]["video"], make_clip(EVAL_SEED_START + 1).video)
    with pytest.raises(UsageError):
        ShapesDataset(num=10, seed=EVAL_SEED_START - 5)
    item = ds[0]
    assert set(item) >= {"video", "audio", "has_audio", "caption", "structure", "meta"}
