"""``extend_back``: what came before.

    <bos> <task:extend_back> <res:HxW> <bov_i> the clip's last frames <eov_i> <bov_o> | its first latents

The condition is the ``tail`` view: the clip's last `context_latents` worth of frames (9 at 17),
tokenized on their own, exactly as a user's file is (a causal tokenizer's codes for a clip's end
depend on what came before it). The output is the first `context_latents` latent frames. Scored by
the probe attributes and ``fd_probe``, and the frames before the given ones against the truth beside
the first given frame repeated.
"""

from __future__ import annotations

import numpy as np

from videolm.tasks.base import Media, Task, clip_frames, latents, require
from videolm.tokenizers.geometry import context_latents, frames_of


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
        frames = clip_frames(inputs.video, {"frames": n}, self.name, "first")  # what came before the clip's start
        return {**geometry, "tail": tokenizer.encode_video([frames])[0], "tail_frames": frames}

    def to_media(self, codes, sample, tokenizer):
        """The generated frames before the given ones, then the given ones (as the tokenizer
        reconstructs them): one clip of the model's length."""
        h, w = int(sample["height"]), int(sample["width"])
        before = tokenizer.decode_video(codes, h, w)  # (9, H, W, 3): its last frame is the tail's first
        given = tokenizer.decode_video(sample["tail"], h, w)
        return Media(video=np.concatenate([before[:-1], given]))

    def score(self, made, scorer):
        videos, truth = scorer.videos(made), scorer.truth
        n = truth.shape[1] - frames_of(context_latents(latents(scorer.samples[0])))  # the given clip starts here
        new, first = slice(0, n), truth[:, n:n + 1]
        return {**super().score(made, scorer),
                **scorer.compare(videos[:, new], truth[:, new], np.broadcast_to(first, truth[:, new].shape))}


__all__ = ["ExtendBack"]
