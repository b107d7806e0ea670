"""``stylize``: a structure video (silhouettes) and a caption -> a video with that structure and the
caption's look.

    <bos> <task:stylize> <res:HxW> <bot_i> caption <eot_i> <bov_i> structure video <eov_i> <bov_o> | video

Scored by how well the output fills the structure's silhouettes (IoU) and with the colours the
caption asks for, and by ``fd_probe``.
"""

from __future__ import annotations

from videolm.tasks.base import Task, clip_frames, require


class Stylize(Task):
    name = "stylize"
    description = "a video with a structure video's shapes and motion, styled by a caption"
    inputs = ("structure", "text")
    target = "video"
    needs = "--video STRUCTURE --prompt"
    uses_text = True
    attributes = ()  # read from the silhouettes instead

    def condition(self, sample, drop_text):
        return [self.resolution(sample), self.text(sample, drop_text), self.video(sample["structure"])]

    def encode_inputs(self, inputs, tokenizer, geometry):
        require(inputs, self.name, "video", "text")
        sample = self.text_sample(inputs, tokenizer, geometry)
        frames = clip_frames(inputs.video, geometry, self.name)
        sample["structure"] = tokenizer.encode_video([frames])[0]
        return sample

    def score(self, made, scorer):
        videos = scorer.videos(made)
        return {**super().score(made, scorer), **scorer.silhouettes(videos, [c["structure"] for c in scorer.clips])}


__all__ = ["Stylize"]
