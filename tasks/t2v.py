"""Tasks that make a clip from text, an image, or nothing.

- ``t2v``: ``<task:t2v> <res> <bot_i> text <eot_i> <bov_o> | video``
- ``t2i``: the same with the caption's motion removed (``image_text``), one latent frame out
- ``i2v``: ``<task:i2v> <res> <bot_i> [text] <eot_i> <bov_i> first latent frame <eov_i> <bov_o> | the rest``
- ``loop``: text -> the clip played forward then back (``loop`` view), whose end is its start
- ``uncond``: ``<task:uncond> <res> <bov_o> | video``
"""

from __future__ import annotations

import torch

from videolm.tasks.base import Task, require


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


class TextToImage(TextToVideo):
    name = "t2i"
    description = "an image (one frame) from a caption"
    inputs = ("image_text",)

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.text(sample, drop_text, field="image_text")]

    def target_codes(self, sample):
        return sample["video"][:1]

    def output_latents(self, t):
        return 1

    def encode_inputs(self, inputs, tokenizer, geometry):
        sample = self.text_sample(inputs, tokenizer, geometry)
        sample["image_text"] = sample.pop("text")
        return sample


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


class Loop(TextToVideo):
    name = "loop"
    description = "a video whose end flows back into its start, from a caption"
    target = "loop"


class Unconditional(Task):
    name = "uncond"
    description = "a video from nothing"
    inputs = ()
    target = "video"

    def condition(self, sample, drop_text):
        return [self.resolution(sample)]

    def encode_inputs(self, inputs, tokenizer, geometry):
        return dict(geometry)


__all__ = ["ImageToVideo", "Loop", "TextToImage", "TextToVideo", "Unconditional"]
