"""``t2v``: a video from a caption.

    <bos> <task:t2v> <res:HxW> <bot_i> caption <eot_i> <bov_o> | video <eov_o> <eos>

Scored by the probe's reading of every object asked for (shape, color, size, direction) and by
``fd_probe``.
"""

from __future__ import annotations

from videolm.tasks.base import Task


class TextToVideo(Task):
    name = "t2v"
    description = "a video from a caption"
    inputs = ("text",)
    needs = "--prompt"
    uses_text = True

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.text(sample, drop_text)]

    def encode_inputs(self, inputs, tokenizer, geometry):
        return self.text_sample(inputs, tokenizer, geometry)


__all__ = ["TextToVideo"]
