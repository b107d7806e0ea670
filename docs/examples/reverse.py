"""A task from outside the package: ``reverse``, a clip -> the same clip played backwards.

The second worked example of docs/finetuning.md, and the one no built-in task comes close to: the
base model has only ever continued motion (extend, interpolate) or drawn it from a caption, never
run it backwards. The config ``configs/finetune/reverse.yaml`` puts this folder on the import path
and names the task as ``reverse:Reverse``. Sequence::

    <bos> <task:reverse> <res:64x64> <bov_i> clip <eov_i> <bov_o> | the clip, last frame first

The output starts where the input ends and every object moves the other way. The reversed clip is
tokenized on its own (``views``): with a causal tokenizer it is not a reordering of the input's
codes. Its metric against the ground truth is the direction each object moves in as the probe reads
it (``truth_objects``: the reverse of how the object moved at the end of the input), beside PSNR.
"""

from __future__ import annotations

import numpy as np

from videolm.tasks.base import Task, clip_frames, require

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "still"}
STEP = {(-1, 0): "left", (1, 0): "right", (0, -1): "up", (0, 1): "down", (0, 0): "still"}


def end_direction(centers: list, frames: int = 8) -> str:
    """The way an object mostly moves over a clip's last ``frames`` frames (``centers``: (x, y) per
    frame): the sign most of its steps take. Those frames open the reversed clip, and the probe
    reads a direction from its first eight."""
    steps = np.sign(np.diff(np.asarray(centers[-frames:], dtype=np.float64), axis=0)).astype(int)  # (frames-1, 2)
    moving = steps[np.abs(steps).sum(1) > 0]
    if not len(moving):
        return "still"
    signs, counts = np.unique(moving, axis=0, return_counts=True)
    return STEP[tuple(int(v) for v in signs[counts.argmax()])]


class Reverse(Task):
    name = "reverse"
    description = "the clip played backwards"
    inputs = ("video",)
    target = "reversed"
    needs = "--video"

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.video(sample["video"])]

    def views(self, clip):
        return {"reversed": np.ascontiguousarray(clip["video"][::-1])}

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "video")
        frames = clip_frames(inputs.video, geometry, self.name, "last")  # play back from the video's end
        return {**geometry, "video": tokenizer.encode_video([frames])[0]}

    # what `videolm finetune` scores the task against
    def truth(self, clip: dict) -> np.ndarray:
        return clip["video"][::-1]

    def truth_objects(self, clip: dict) -> list[dict]:
        """The clip's objects as they appear in the truth: each moving opposite to how it mostly
        moved at the end of the clip (an object that bounced early enough comes back the way it
        first went)."""
        return [{**o, "direction": OPPOSITE[end_direction(o["centers"])]} for o in clip["meta"]["objects"]]

    def baseline(self, clip: dict) -> np.ndarray:
        """The copy baseline: the input itself, played forwards."""
        return clip["video"]
