"""``i2v``: a video starting from an image, optionally guided by a caption.

    <bos> <task:i2v> <res:HxW> <bot_i> [caption] <eot_i> <bov_i> first latent frame <eov_i> <bov_o> | the rest

Scored by the probe attributes and ``fd_probe``, the first frame's PSNR, and the rest against the
truth beside the image repeated (the copy baseline).
"""

from __future__ import annotations

import numpy as np
import torch

from videolm.tasks.base import Task, require


class ImageToVideo(Task):
    name = "i2v"
    description = "a video starting from an image, optionally guided by a caption"
    inputs = ("video",)
    needs = "--image [--prompt]"
    uses_text = True
    text_dropout = 0.5  # trained as often without its text as with it: the text is optional

    def condition(self, sample, drop_text):
        drop = drop_text or (self.training and bool(torch.rand(()) < self.text_dropout))
        return [self.resolution(sample), self.text(sample, drop), self.video(sample["video"][:1])]

    def target_codes(self, sample):
        return sample["video"][1:]

    def output_latents(self, t):
        return t - 1

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "image")
        sample = self.text_sample(inputs, tokenizer, geometry, required=False)
        sample["video"] = tokenizer.encode_video([inputs.image[None]])[0]  # (1, n)
        return sample

    def to_media(self, codes, sample, tokenizer):
        return super().to_media(torch.cat([sample["video"][:1], codes]), sample, tokenizer)

    def score(self, made, scorer):
        videos, truth = scorer.videos(made), scorer.truth
        first = scorer.mean_psnr(videos[:, :1], truth[:, :1])
        rest = scorer.compare(videos[:, 1:], truth[:, 1:], np.broadcast_to(truth[:, :1], truth[:, 1:].shape))
        return {**super().score(made, scorer), "psnr_first_frame": first, **rest}


__all__ = ["ImageToVideo"]
