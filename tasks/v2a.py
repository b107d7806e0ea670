"""Video to audio: ``<bos> <task:v2a> <res:HxW> <bov_i> video <eov_i> <boa_o> | audio <eoa_o> <eos>``."""

from __future__ import annotations

from videolm.tasks.base import Task


class VideoToAudio(Task):
    name = "v2a"
    description = "the soundtrack of a video"
    inputs = ("video",)
    output = "audio"

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.video(sample["video"])]
