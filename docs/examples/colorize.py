"""A task from outside the package: ``colorize``, a grayscale clip and its caption -> the color clip.

This module is the worked example of docs/finetuning.md. Nothing in videolm knows it: the config
``configs/finetune/colorize.yaml`` puts this folder on the import path and names the task as
``colorize:Colorize``. Sequence::

    <bos> <task:colorize> <res:64x64> <bot_i> caption <eot_i> <bov_i> grayscale clip <eov_i> <bov_o> | clip

The grayscale clip keeps every shape, size and motion; the caption says which color each object
is (several palette colors share a brightness, so the gray alone cannot tell). Its metric against
the ground truth is the color of each object the probe reads, beside PSNR.
"""

from __future__ import annotations

import numpy as np

from videolm.tasks.base import Task, clip_frames, require

# ITU-R BT.601 luma weights
LUMA = np.array([0.299, 0.587, 0.114])


def to_gray(video: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 -> the same shape, each pixel its luma on all three channels."""
    luma = np.rint(np.asarray(video, dtype=np.float64) @ LUMA).clip(0, 255).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=-1)


class Colorize(Task):
    name = "colorize"
    description = "a color clip from its grayscale version and a caption"
    inputs = ("gray", "text")
    target = "video"
    needs = "--video GRAY --prompt"
    uses_text = True

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.text(sample, drop_text), self.video(sample["gray"])]

    def views(self, clip):
        return {"gray": to_gray(clip["video"])}

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "video", "text")
        sample = self.text_sample(inputs, tokenizer, geometry)
        gray = to_gray(clip_frames(inputs.video, geometry, self.name))  # a color file is grayed first
        sample["gray"] = tokenizer.encode_video([gray])[0]
        return sample

    # what `videolm finetune` scores the task against
    def truth(self, clip: dict) -> np.ndarray:
        return clip["video"]

    def baseline(self, clip: dict) -> np.ndarray:
        """The copy baseline: the input itself, still gray."""
        return to_gray(clip["video"])
