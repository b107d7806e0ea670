"""``a2v``: a video for a soundtrack.

    <bos> <task:a2v> <res:HxW> <boa_i> audio <eoa_i> <bov_o> | video

Scored by the shapes the probe reads (all the audio tells: which tones hum; size only through
loudness) and ``fd_probe``.
"""

from __future__ import annotations

from videolm.core.errors import UsageError
from videolm.tasks.base import Media, Task, require


class AudioToVideo(Task):
    name = "a2v"
    description = "a video for a soundtrack"
    inputs = ("audio",)
    target = "video"
    needs = "--audio"
    attributes = ("shape",)

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


__all__ = ["AudioToVideo"]
