"""``inpaint``: fills the region a mask hides.

    <bos> <task:inpaint> <res:HxW> <bot_i> [caption] <eot_i> <bov_i> video, hidden positions as <mask> <eov_i>
          <bov_o> | video

The hidden latent cells (a box of the latent grid in training, the cells a user's mask touches at
generation) are blacked out in the pixels *before* tokenizing (the ``inpaint`` view) and their
positions replaced by ``<mask>`` in every latent frame, so nothing of the hidden content reaches
the prefix. The output is the whole clip; the result keeps the given pixels outside the hidden
cells. Scored by the probe attributes and ``fd_probe``, and PSNR inside the hidden region beside
leaving it black.
"""

from __future__ import annotations

import numpy as np
import torch

from videolm.core.errors import UsageError
from videolm.tasks.base import Media, Task, clip_frames, require
from videolm.tasks.views import box_mask, hide, pixel_mask_to_grid
from videolm.tokenizers.geometry import SPACE_DOWN, grid_of


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

    def score(self, made, scorer):
        videos, truth = scorer.videos(made), scorer.truth
        cells = [self.hidden(s) for s in scorer.samples]  # (gh, gw) per clip
        masks = np.stack([np.broadcast_to(np.repeat(np.repeat(c, SPACE_DOWN, 0), SPACE_DOWN, 1), truth.shape[1:4])
                          for c in cells])  # (N, T, H, W)
        blank = np.where(masks[..., None], 0, truth).astype(np.uint8)
        return {**super().score(made, scorer), **scorer.masked(videos, truth, masks, blank, "hidden region left black")}


__all__ = ["Inpaint"]
