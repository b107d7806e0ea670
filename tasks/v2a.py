"""Between sound and picture.

- ``v2a``: ``<task:v2a> <res> <bov_i> video <eov_i> <boa_o> | audio`` (the soundtrack of a video)
- ``a2v``: ``<task:a2v> <res> <boa_i> audio <eoa_i> <bov_o> | video`` (a video for a soundtrack)
"""

from __future__ import annotations

from videolm.core.errors import UsageError
from videolm.tasks.base import Media, Task, clip_frames, require


class VideoToAudio(Task):
    name = "v2a"
    description = "the soundtrack of a video"
    inputs = ("video",)
    output = "audio"
    needs = "--video"

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.video(sample["video"])]

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "video")
        frames = clip_frames(inputs.video, geometry, self.name)
        return {**geometry, "video": tokenizer.encode_video([frames])[0], "pixels": frames}

    def to_media(self, codes, sample, tokenizer):
        audio = super().to_media(codes, sample, tokenizer).audio
        return Media(video=sample.get("pixels"), audio=audio)


class AudioToVideo(Task):
    name = "a2v"
    description = "a video for a soundtrack"
    inputs = ("audio",)
    target = "video"
    needs = "--audio"

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.audio(sample["audio"])]

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "audio")
        n = geometry["num_samples"]
        wave = inputs.audio[:n]
        if len(wave) < n:
            raise UsageError(f"task {self.name} needs {n / geometry['sample_rate']:.3f} s of audio, "
                             f"got {len(wave) / geometry['sample_rate']:.3f} s")
        return {**geometry, "audio": tokenizer.encode_audio(wave), "wave": wave}

    def to_media(self, codes, sample, tokenizer):
        return Media(video=super().to_media(codes, sample, tokenizer).video, audio=sample.get("wave"))


__all__ = ["AudioToVideo", "VideoToAudio"]
