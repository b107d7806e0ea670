"""``loop``: a video whose end flows back into its start, from a caption.

    <bos> <task:loop> <res:HxW> <bot_i> caption <eot_i> <bov_o> | the clip played forward then back

The training target is the ``loop`` view of each clip (`videolm.tasks.views.ping_pong`), whose last
frame is its first. Scored by shape, color and size (a ping-pong clip moves both ways, so it has
no one direction) and ``fd_probe``.
"""

from __future__ import annotations

from videolm.tasks.t2v import TextToVideo


class Loop(TextToVideo):
    name = "loop"
    description = "a video whose end flows back into its start, from a caption"
    target = "loop"
    attributes = ("shape", "color", "size")


__all__ = ["Loop"]
