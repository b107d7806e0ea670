import os

import av
import numpy as np
import pytest

from videolm.core.errors import MediaError
from videolm.core.metrics import psnr
from videolm.data import media
from videolm.data.media import (
    frame_grid,
    num_frames_at,
    probe_video,
    read_audio,
    read_image,
    read_video,
    write_audio,
    write_grid,
    write_image,
    write_video,
)

RED, BLUE = (255, 40, 40), (60, 90, 255)


def shapes_clip(T=17, H=64, W=64):  # (T, H, W, 3)
    """A red square moving right and a blue disc moving left, 2 px/frame, on black."""
    frames = np.zeros((T, H, W, 3), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    for t in range(T):
        frames[t, H // 4:H // 4 + 12, 4 + 2 * t:16 + 2 * t] = RED
        disc = (yy - 3 * H // 4) ** 2 + (xx - (W - 10 - 2 * t)) ** 2 <= 36
        frames[t][disc] = BLUE
    return frames


def tone(freq, seconds, rate=16000):  # (S,)
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)).astype(
        np.float32)


def dominant_freq(audio, rate):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


@pytest.fixture(scope="module")
def clip():
    return shapes_clip()


@pytest.fixture(scope="module")
def mp4(tmp_path_factory, clip):
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    write_video(path, clip, fps=16, audio=tone(440, 17 / 16))
    return path


def test_mp4_default_round_trip(mp4, clip):
    back = read_video(mp4)
    assert back.shape == clip.shape and back.dtype == np.uint8
    assert psnr(back, clip) >= 29


def test_mp4_high_quality(tmp_path, clip):
    write_video(tmp_path / "high.mp4", clip, fps=16, quality="high")
    assert psnr(read_video(tmp_path / "high.mp4"), clip) >= 40


def test_mpeg4_fallback_without_libx264(tmp_path, clip, monkeypatch):
    monkeypatch.setattr(media, "_has_codec", lambda name: False)
    write_video(tmp_path / "fallback.mp4", clip, fps=16)
    with av.open(str(tmp_path / "fallback.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert psnr(read_video(tmp_path / "fallback.mp4"), clip) >= 25


def test_lossless_mkv_is_bit_exact_and_deterministic(tmp_path, clip):
    audio = tone(330, 17 / 16)
    write_video(tmp_path / "a.mkv", clip, fps=16, audio=audio, quality="lossless")
    write_video(tmp_path / "b.mkv", clip, fps=16, audio=audio, quality="lossless")
    assert (tmp_path / "a.mkv").read_bytes() == (tmp_path / "b.mkv").read_bytes()
    np.testing.assert_array_equal(read_video(tmp_path / "a.mkv"), clip)
    np.testing.assert_allclose(read_audio(tmp_path / "a.mkv"), audio, atol=1e-4)  # 16-bit FLAC


def test_lossless_mp4_is_bit_exact(tmp_path, clip):
    write_video(tmp_path / "l.mp4", clip, fps=16, quality="lossless")
    np.testing.assert_array_equal(read_video(tmp_path / "l.mp4"), clip)


def test_gif_round_trip_exact_palette(tmp_path, clip):
    write_video(tmp_path / "c.gif", clip, fps=8)
    back = read_video(tmp_path / "c.gif")
    np.testing.assert_array_equal(back, clip)
    assert read_video(tmp_path / "c.gif", fps=8).shape[0] == 17  # centisecond delays 13, 12, ...


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, clip):
    write_video(tmp_path / "ok.mp4", clip)
    with pytest.raises(ValueError):
        write_video(tmp_path / "bad.mp4", clip, audio=np.zeros((2, 10), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.mp4"]


def test_unknown_extension_is_media_error(tmp_path, clip):
    with pytest.raises(MediaError, match="clip.xyz"):
        write_video(tmp_path / "clip.xyz", clip)
    with pytest.raises(MediaError, match="a.jpg"):
        write_image(tmp_path / "a.jpg", clip[0])


def test_resample_fps_picks_every_other_frame(tmp_path, clip):
    write_video(tmp_path / "c.mkv", clip, fps=16, quality="lossless")
    half = read_video(tmp_path / "c.mkv", fps=8)
    np.testing.assert_array_equal(half, clip[::2])  # 17 frames at 16 fps -> 9 at 8 fps
    np.testing.assert_array_equal(read_video(tmp_path / "c.mkv", fps=32), np.repeat(clip, 2, 0))


def test_start_and_num_frames(tmp_path, clip):
    write_video(tmp_path / "c.mkv", clip, fps=16, quality="lossless")
    part = read_video(tmp_path / "c.mkv", fps=8, start=0.5, num_frames=3)
    np.testing.assert_array_equal(part, clip[8:14:2])
    np.testing.assert_array_equal(read_video(tmp_path / "c.mkv", start=0.5), clip[8:])
    with pytest.raises(MediaError, match="past the end"):
        read_video(tmp_path / "c.mkv", start=5.0)


def test_probe(mp4):
    info = probe_video(mp4)
    assert (info.fps, info.num_frames, info.width, info.height) == (16.0, 17, 64, 64)
    assert info.duration == pytest.approx(17 / 16, abs=0.01) and info.has_audio
    for fps in (5, 8, 16, 24):
        assert num_frames_at(info.duration, fps) == len(read_video(mp4, fps=fps)), fps


def wide_frame():  # (1, 48, 96, 3): red left half, blue right half, white centre column
    frame = np.zeros((1, 48, 96, 3), np.uint8)
    frame[:, :, :48] = RED
    frame[:, :, 48:] = BLUE
    frame[:, :, 44:52] = 255
    return frame


def test_resize_pad_puts_black_bars_above_and_below(tmp_path):
    write_video(tmp_path / "w.mkv", wide_frame(), quality="lossless")
    img = read_video(tmp_path / "w.mkv", size=(64, 64), fit="pad")[0]
    assert img.shape == (64, 64, 3)
    assert img[:15].max() == 0 and img[-15:].max() == 0  # 48x96 -> 32x64, bars of 16
    assert img[17:47, :, :].min(axis=2).max() > 200  # the picture fills the middle rows
    assert img[32, 4].tolist() == list(RED) and img[32, 60].tolist() == list(BLUE)


def test_resize_crop_keeps_the_centre(tmp_path):
    write_video(tmp_path / "w.mkv", wide_frame(), quality="lossless")
    img = read_video(tmp_path / "w.mkv", size=(64, 64), fit="crop")[0]
    assert img.shape == (64, 64, 3) and img.min(axis=2).max() > 0  # no black bars
    assert img[32, 32].tolist() == [255, 255, 255]  # the centre column survives
    assert img[32, 2].tolist() == list(RED) and img[32, 61].tolist() == list(BLUE)
    stretched = read_video(tmp_path / "w.mkv", size=(64, 64), fit="stretch")[0]
    assert stretched[0, 32].tolist() == [255, 255, 255]


def test_odd_sizes(tmp_path):
    clip = shapes_clip(9, 63, 65)
    write_video(tmp_path / "odd.mp4", clip)
    back = read_video(tmp_path / "odd.mp4")
    assert back.shape == (9, 64, 66, 3)  # yuv420p pads to even by repeating the edge
    assert psnr(back[:, :63, :65], clip) >= 29
    write_video(tmp_path / "odd.mkv", clip, quality="lossless")
    np.testing.assert_array_equal(read_video(tmp_path / "odd.mkv"), clip)
    write_video(tmp_path / "odd_high.mp4", clip, quality="high")
    assert read_video(tmp_path / "odd_high.mp4").shape == clip.shape


def test_wav_round_trip_and_resample(tmp_path):
    audio = tone(440, 0.5)
    write_audio(tmp_path / "a.wav", audio)
    np.testing.assert_allclose(read_audio(tmp_path / "a.wav"), audio, atol=1e-4)
    half = read_audio(tmp_path / "a.wav", sample_rate=8000)
    assert abs(len(half) - len(audio) // 2) <= 2
    assert dominant_freq(half, 8000) == pytest.approx(440, rel=0.02)
    part = read_audio(tmp_path / "a.wav", start=0.25, duration=0.125)
    np.testing.assert_allclose(part, audio[4000:6000], atol=1e-4)


def test_stereo_flac_is_averaged_to_mono(tmp_path):
    import soundfile

    left, right = tone(440, 0.25), np.zeros(4000, np.float32)
    soundfile.write(tmp_path / "s.flac", np.stack([left, right], axis=1), 16000)
    np.testing.assert_allclose(read_audio(tmp_path / "s.flac"), left / 2, atol=1e-4)


def test_audio_muxed_in_mp4(mp4):
    audio = read_audio(mp4)
    assert audio.dtype == np.float32 and abs(len(audio) - 17000) < 1100  # AAC pads a frame
    assert dominant_freq(audio[:16000], 16000) == pytest.approx(440, rel=0.02)
    part = read_audio(mp4, start=0.25, duration=0.5)
    assert len(part) == 8000 and dominant_freq(part, 16000) == pytest.approx(440, rel=0.02)


def test_png_round_trip_and_grid(tmp_path, clip):
    write_image(tmp_path / "f.png", clip[3])
    np.testing.assert_array_equal(read_image(tmp_path / "f.png"), clip[3])
    assert frame_grid(clip, pad=2).shape == (68, 17 * 66 + 2, 3)
    assert frame_grid(clip, cols=4, pad=0).shape == (5 * 64, 4 * 64, 3)
    batch = np.stack([clip[:5], clip[5:10]])  # (2, 5, 64, 64, 3)
    grid = frame_grid(batch, pad=1)
    assert grid.shape == (2 * 65 + 1, 5 * 65 + 1, 3)
    np.testing.assert_array_equal(grid[66:130, 1:65], clip[5])
    write_grid(tmp_path / "g.png", batch, pad=1)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), grid)


def test_psnr():
    a = np.zeros((4, 4), np.uint8)
    assert psnr(a, a) == pytest.approx(10 * np.log10(255**2 / 1e-10))  # identical: the floor, not inf
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255))


def audio_only_mp4(path):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone(440, 0.25)[None], format="flt", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def broken_files(folder, mp4_bytes):
    """name -> how to make it; every one must fail to read as a video."""
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n" * 10)
    (folder / "truncated.mp4").write_bytes(mp4_bytes[: int(len(mp4_bytes) * 0.4)])
    (folder / "a_folder.mp4").mkdir()
    write_audio(folder / "sound.wav", tone(440, 0.1))
    audio_only_mp4(folder / "audio_only.mp4")
    return ["missing.mp4", "empty.mp4", "text.mp4", "truncated.mp4", "a_folder.mp4",
            "sound.wav", "audio_only.mp4"]


def test_broken_inputs_raise_media_error(tmp_path, mp4):
    for name in broken_files(tmp_path, mp4.read_bytes()):
        with pytest.raises(MediaError, match=name) as info:
            read_video(tmp_path / name)
        assert info.value.cause, name
        with pytest.raises(MediaError, match=name):
            probe_video(tmp_path / name)


def test_truncated_mkv_and_corrupt_mp4(tmp_path, clip, mp4):
    write_video(tmp_path / "c.mkv", clip, quality="lossless")
    data = (tmp_path / "c.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: int(len(data) * 0.4)])  # decodes a few frames
    with pytest.raises(MediaError, match="cut.mkv: truncated"):
        read_video(tmp_path / "cut.mkv")
    data = bytearray(mp4.read_bytes())
    data[2000:6000] = np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes()
    (tmp_path / "garbled.mp4").write_bytes(bytes(data))
    with pytest.raises(MediaError, match="garbled.mp4"):
        read_video(tmp_path / "garbled.mp4")


def test_audio_errors(tmp_path, clip):
    write_video(tmp_path / "silent.mp4", clip)
    with pytest.raises(MediaError, match="silent.mp4: no audio stream"):
        read_audio(tmp_path / "silent.mp4")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(MediaError, match="text.wav"):
        read_audio(tmp_path / "text.wav")
    with pytest.raises(MediaError, match="missing.flac"):
        read_audio(tmp_path / "missing.flac")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path, mp4):
    path = tmp_path / "locked.mp4"
    path.write_bytes(mp4.read_bytes())
    path.chmod(0)
    with pytest.raises(MediaError, match="locked.mp4: permission denied"):
        read_video(path)


def test_float_wav_is_byte_identical_across_writes(tmp_path):
    import time

    audio = tone(330, 0.2)
    write_audio(tmp_path / "a.wav", audio, subtype="FLOAT")
    time.sleep(1.05)  # libsndfile stamps the write time (in seconds) into float wavs
    write_audio(tmp_path / "b.wav", audio, subtype="FLOAT")
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    assert np.array_equal(read_audio(tmp_path / "a.wav"), audio)


def _write_avi(path, frames, fps=8):
    """An MJPEG .avi made directly with PyAV (write_video does not produce avi)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuvj444p"
        stream.options = {"q:v": "2"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))


@pytest.mark.parametrize("ext, bar", [(".mp4", 29), (".webm", 29), (".mkv", 29), (".mov", 29), (".avi", 25), (".gif", 40)])
def test_every_container_reads_back_at_the_right_rate_and_size(tmp_path, clip, ext, bar):
    path = tmp_path / f"clip{ext}"
    if ext == ".avi":
        _write_avi(path, clip)
    else:
        write_video(path, clip, fps=8)
    back = read_video(path, fps=8)
    assert back.shape == clip.shape and back.dtype == np.uint8
    assert psnr(back, clip) >= bar
    assert read_video(path, fps=4, size=(32, 48)).shape == (9, 32, 48, 3)
