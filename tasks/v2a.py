"""``v2a``: the soundtrack of a video.

    <bos> <task:v2a> <res:HxW> <bov_i> video <eov_i> <boa_o> | audio <eoa_o> <eos>

Scored by whether the audio hums the tones the clip's shapes make and how far its bounce clicks
fall from the bounces.
"""

from __future__ import annotations

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


__all__ = ["VideoToAudio"]
