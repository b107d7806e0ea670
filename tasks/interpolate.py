"""``interpolate``: connects a start clip to an end clip.

    <bos> <task:interpolate> <res:HxW> <bov_i> first start latents <eov_i> <bov_i> end clip <eov_i> <bov_o> | the rest

The condition is the clip's first `start_latents` (2: frames 0-4) and the ``end`` view, its last 5
frames tokenized on their own; the output is the latent frames after the start (frames 5-16), so
that the clip ends where the end clip does. Scored by the probe attributes and ``fd_probe``, and the
frames between against the truth beside the nearer given frame.
"""

from __future__ import annotations

import numpy as np
import torch

from videolm.core.errors import UsageError
from videolm.core.metrics import psnr
from videolm.tasks.base import Media, Task, clip_frames, latents, require
from videolm.tokenizers.geometry import frames_of, start_latents

# below this PSNR between the model's last frames and the end clip, the two clips are taken for
# different scenes (measured on held-out Shapes clips: docs/tasks.md, "interpolate")
CONNECT_DB = 17.0


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
        n = {"frames": frames_of(start_latents(geometry["latents"]))}
        start = clip_frames(inputs.videos[0], n, self.name, "first")
        end = clip_frames(inputs.videos[-1], n, self.name, "last")
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

    def score(self, made, scorer):
        videos, truth = scorer.videos(made), scorer.truth
        s = frames_of(start_latents(latents(scorer.samples[0])))  # given frames at the start
        e = truth.shape[1] - s  # the end clip starts here
        between = slice(s, e)
        nearest = np.stack([truth[:, s - 1] if k - (s - 1) <= e - k else truth[:, e] for k in range(s, e)], 1)
        return {**super().score(made, scorer), **scorer.compare(videos[:, between], truth[:, between], nearest)}


__all__ = ["CONNECT_DB", "Interpolate"]
