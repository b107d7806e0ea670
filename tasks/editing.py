"""Tasks that edit a clip in place.

- ``inpaint`` / ``outpaint``: ``<res> <bot_i> text <eot_i> <bov_i> video, hidden positions as
  <mask> <eov_i> <bov_o> | video``. The hidden latent cells (a box, or all but a box) are blacked
  out in the pixels *before* tokenizing (the ``inpaint``/``outpaint`` views) and their positions
  replaced by ``<mask>`` in every latent frame, so nothing of the hidden content reaches the
  prefix. The output is the whole clip; the result keeps the given pixels outside the hidden
  cells.
- ``stylize``: a structure video (silhouettes) and a caption -> a video with that structure and
  the caption's look.
"""

from __future__ import annotations

import numpy as np
import torch

from videolm.core.errors import UsageError
from videolm.tasks.base import Media, Task, clip_frames, require
from videolm.tasks.views import box_mask, hide, pixel_mask_to_grid
from videolm.tokenizers.geometry import grid_of


class Inpaint(Task):
    name = "inpaint"
    description = "fills the region a mask hides (white = generate)"
    inputs = ("inpaint",)
    target = "video"
    needs = "--video --mask [--prompt]"
    uses_text = True
    inside = True  # the box is what is hidden (outpaint: all but the box)

    def hidden(self, sample) -> np.ndarray:
        """``(gh, gw)`` bool: the latent cells the prefix does not show."""
        if "hidden" in sample:
            return np.asarray(sample["hidden"], dtype=bool)
        grid = grid_of(int(sample["height"]), int(sample["width"]))
        return box_mask(sample[f"{self.name}_box"], grid, self.inside)

    def condition(self, sample, drop_text):
        hidden = torch.from_numpy(self.hidden(sample)).flatten()  # (n,)
        if hidden.numel() != sample[self.name].shape[1]:
            raise UsageError(f"{self.name} needs one code per latent cell (a flat video tokenizer)")
        return [self.resolution(sample), self.text(sample, drop_text), self.video(sample[self.name], hidden)]

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "video", "mask")
        grid = grid_of(geometry["height"], geometry["width"])
        hidden = pixel_mask_to_grid(inputs.mask, grid)
        if not hidden.any():
            raise UsageError(f"task {self.name}: the mask hides nothing (white = the region to generate)")
        frames = clip_frames(inputs.video, geometry, self.name)
        sample = self.text_sample(inputs, tokenizer, geometry, required=False)
        sample.update({self.name: tokenizer.encode_video([hide(frames, hidden)])[0], "hidden": hidden,
                       "pixels": frames})
        return sample

    def to_media(self, codes, sample, tokenizer):
        made = super().to_media(codes, sample, tokenizer).video
        if "pixels" in sample:  # keep what was given where it was shown
            cells = self.hidden(sample)
            shown = ~np.repeat(np.repeat(cells, made.shape[1] // cells.shape[0], 0), made.shape[2] // cells.shape[1], 1)
            made = made.copy()
            made[:, shown] = sample["pixels"][:, shown]
        return Media(video=made)


class Outpaint(Inpaint):
    name = "outpaint"
    description = "extends a clip beyond the region a mask keeps (white = generate)"
    inputs = ("outpaint",)
    inside = False


class Stylize(Task):
    name = "stylize"
    description = "a video with a structure video's shapes and motion, styled by a caption"
    inputs = ("structure", "text")
    target = "video"
    needs = "--video STRUCTURE --prompt"
    uses_text = True

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.text(sample, drop_text), self.video(sample["structure"])]

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "video", "text")
        sample = self.text_sample(inputs, tokenizer, geometry)
        frames = clip_frames(inputs.video, geometry, self.name)
        sample["structure"] = tokenizer.encode_video([frames])[0]
        return sample


__all__ = ["Inpaint", "Outpaint", "Stylize"]
