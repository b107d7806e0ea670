"""Text to video: ``<bos> <task:t2v> <res:HxW> <bot_i> text <eot_i> <bov_o> | video <eov_o> <eos>``."""

from __future__ import annotations

from videolm.tasks.base import Task


class TextToVideo(Task):
    name = "t2v"
    description = "a video from a caption"
    inputs = ("text",)
    output = "video"

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.text(sample, drop_text)]
