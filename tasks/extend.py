"""``extend``: what happens next.

    <bos> <task:extend> <res:HxW> <bov_i> first context latents <eov_i> <bov_o> | the rest

With clips of t latent frames (5 at 17 frames) the context is `context_latents` (3: frames 0-8)
and the output the rest (frames 9-16). The causal tokenizer makes a clip's first frames a prefix
of its codes, so the context is the clip's own codes. Scored by the probe attributes and
``fd_probe``, and the new frames against the truth beside the last given frame repeated.
"""

from __future__ import annotations

import numpy as np
import torch

from videolm.tasks.base import Task, clip_frames, latents, require
from videolm.tokenizers.geometry import context_latents, frames_of


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
        n = frames_of(context_latents(geometry["latents"]))
        frames = clip_frames(inputs.video, {"frames": n}, self.name, "last")  # continue from the clip's end
        return {**geometry, "video": tokenizer.encode_video([frames])[0]}  # (ctx, n)

    def to_media(self, codes, sample, tokenizer):
        ctx = context_latents(latents(sample))
        return super().to_media(torch.cat([sample["video"][:ctx], codes]), sample, tokenizer)

    def score(self, made, scorer):
        videos, truth = scorer.videos(made), scorer.truth
        given = frames_of(context_latents(latents(scorer.samples[0])))
        new, last = slice(given, None), truth[:, given - 1:given]
        return {**super().score(made, scorer),
                **scorer.compare(videos[:, new], truth[:, new], np.broadcast_to(last, truth[:, new].shape))}


__all__ = ["Extend"]
