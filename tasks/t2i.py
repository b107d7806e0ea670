"""``t2i``: an image (one latent frame) from a caption with its motion removed (``image_text``).

    <bos> <task:t2i> <res:HxW> <bot_i> caption without motion <eot_i> <bov_o> | first latent frame

Scored by the probe's reading of shape, color and size (an image shows no direction); no
``fd_probe``, whose features are those of clips.
"""

from __future__ import annotations

from videolm.tasks.t2v import TextToVideo


class TextToImage(TextToVideo):
    name = "t2i"
    description = "an image (one frame) from a caption"
    inputs = ("image_text",)
    attributes = ("shape", "color", "size")
    frechet = False

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.text(sample, drop_text, field="image_text")]

    def target_codes(self, sample):
        return sample["video"][:1]

    def output_latents(self, t):
        return 1

    def encode_inputs(self, inputs, tokenizer, geometry):
        sample = self.text_sample(inputs, tokenizer, geometry)
        if "text" in sample:  # an empty prompt has no text codes: the image is drawn unconditioned
            sample["image_text"] = sample.pop("text")
        return sample


__all__ = ["TextToImage"]
