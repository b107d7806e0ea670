"""``outpaint``: extends a clip beyond the region a mask keeps.

Laid out, generated and scored as ``inpaint`` (`videolm.tasks.inpaint`), with the hidden cells
everything outside a box (the ``outpaint`` view) rather than a box.
"""

from __future__ import annotations

from videolm.tasks.inpaint import Inpaint


class Outpaint(Inpaint):
    name = "outpaint"
    description = "extends a clip beyond the region a mask keeps (white = generate)"
    inputs = ("outpaint",)
    inside = False


__all__ = ["Outpaint"]
