"""Tasks that continue a clip in time. With clips of t latent frames (5 at 17 frames):

- ``extend``: the first `context_latents` (3: frames 0-8) -> the rest (frames 9-16)
- ``extend_back``: the last 9 frames, tokenized on their own (``tail``) -> the first 3 latent
  frames (frames 0-8): what came before
- ``interpolate``: the first `start_latents` (2: frames 0-4) and the last 5 frames tokenized on
  their own (``end``) -> the latent frames between and after (frames 5-16), so that the clip
  ends where the end clip does

The causal tokenizer makes the beginning of a clip a prefix of its codes, so ``extend`` and
``interpolate`` read the clip's own codes and generate its remaining ones; what lies at a clip's
end must be tokenized on its own, exactly as a user's file is.
"""

from __future__ import annotations

import numpy as np
import torch

from videolm.core.metrics import psnr
from videolm.tasks.base import Media, Task, clip_frames, latents, require
from videolm.tokenizers.geometry import context_latents, frames_of, start_latents

# `Interpolate`: below this PSNR between the model's last frames and the end clip, the two clips are
# taken for different scenes (measured on held-out Shapes clips: docs/tasks.md, "interpolate")
CONNECT_DB = 17.0
from videolm.core.errors import UsageError


def _frames(video: np.ndarray, count: int, task: str, where: str) -> np.ndarray:
    """The first (``where="first"``) or last ``count`` frames of a user's video."""
    return clip_frames(video, {"frames": count}, task, where)


class Extend(Task):
    name = "extend"
    description = "what happens next: continues a clip forward"
    inputs = ("video",)
    needs = "--video"

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.video(sample["video"][:context_latents(latents(sample))])]

    def target_codes(self, sample):
        return sample["video"][context_latents(latents(sample)):]

    def output_latents(self, t):
        return t - context_latents(t)

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "video")
        ctx = context_latents(geometry["latents"])
        frames = _frames(inputs.video, frames_of(ctx), self.name, "last")  # continue from the clip's end
        return {**geometry, "video": tokenizer.encode_video([frames])[0]}  # (ctx, n)

    def to_media(self, codes, sample, tokenizer):
        ctx = context_latents(latents(sample))
        return super().to_media(torch.cat([sample["video"][:ctx], codes]), sample, tokenizer)


class ExtendBack(Task):
    name = "extend_back"
    description = "what came before: continues a clip backward"
    inputs = ("tail",)
    target = "video"
    needs = "--video"

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.video(sample["tail"])]

    def target_codes(self, sample):
        return sample["video"][:context_latents(latents(sample))]

    def output_latents(self, t):
        return context_latents(t)

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "video")
        n = frames_of(context_latents(geometry["latents"]))
        frames = _frames(inputs.video, n, self.name, "first")  # what came before the clip's start
        return {**geometry, "tail": tokenizer.encode_video([frames])[0], "tail_frames": frames}

    def to_media(self, codes, sample, tokenizer):
        """The generated frames before the given ones, then the given ones (as the tokenizer
        reconstructs them): one clip of the model's length."""
        h, w = int(sample["height"]), int(sample["width"])
        before = tokenizer.decode_video(codes, h, w)  # (9, H, W, 3): its last frame is the tail's first
        given = tokenizer.decode_video(sample["tail"], h, w)
        return Media(video=np.concatenate([before[:-1], given]))


class Interpolate(Task):
    name = "interpolate"
    description = "connects a start clip to an end clip"
    inputs = ("video", "end")
    needs = "--video START [--video END]"

    def condition(self, sample, drop_text):
        s = start_latents(latents(sample))
        return [self.resolution(sample), self.video(sample["video"][:s]), self.video(sample["end"])]

    def target_codes(self, sample):
        return sample["video"][start_latents(latents(sample)):]

    def output_latents(self, t):
        return t - start_latents(t)

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "video")
        if len(inputs.videos) > 2:
            raise UsageError(f"task {self.name} takes at most two --video (start, end), got {len(inputs.videos)}")
        n = frames_of(start_latents(geometry["latents"]))
        start = _frames(inputs.videos[0], n, self.name, "first")
        end = _frames(inputs.videos[-1], n, self.name, "last")
        codes = tokenizer.encode_video([start, end])  # (2, s, n)
        return {**geometry, "video": codes[0], "end": codes[1]}

    def to_media(self, codes, sample, tokenizer):
        """The start clip's frames, the generated ones, and the end clip's frames (as the tokenizer
        reconstructs both): the output ends where the end clip does. When the model's own last
        frames fall far from the end clip, the two clips most likely show different scenes, which
        no motion connects; a note says so."""
        s = start_latents(latents(sample))
        h, w = int(sample["height"]), int(sample["width"])
        made = tokenizer.decode_video(torch.cat([sample["video"][:s], codes]), h, w)  # (T, H, W, 3)
        end = tokenizer.decode_video(sample["end"], h, w)  # (n, H, W, 3)
        reach = psnr(made[-len(end):], end)
        notes = []
        if reach < CONNECT_DB:
            notes.append(f"interpolate: the generated frames reach the end clip at only {reach:.1f} dB PSNR "
                         f"(below {CONNECT_DB:g}); the start and end clips seem to show different scenes, which "
                         "no motion connects, so the output jumps to the end clip")
        return Media(video=np.concatenate([made[:-len(end)], end]), notes=notes)


__all__ = ["Extend", "ExtendBack", "Interpolate"]
