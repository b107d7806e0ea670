"""``uncond``: a video from nothing but its size.

    <bos> <task:uncond> <res:HxW> <bov_o> | video

It asks for no objects, so it is scored by ``fd_probe`` alone.
"""

from __future__ import annotations

from videolm.tasks.base import Task


class Unconditional(Task):
    name = "uncond"
    description = "a video from nothing"
    inputs = ()
    target = "video"
    attributes = ()

    def condition(self, sample, drop_text):
        return [self.resolution(sample)]

    def encode_inputs(self, inputs, tokenizer, geometry):
        return dict(geometry)


__all__ = ["Unconditional"]
