"""ComfyUI's ImageCompare: an output node that shows two images (or batches) on the canvas with a slider.

As in ComfyUI, both images are saved as previews in the temp folder (prefixes ``comfy.compare.a`` and
``comfy.compare.b`` plus PreviewImage's random ``_temp_`` part, no metadata) and sent to the client as
``ui = {"a_images": [...], "b_images": [...]}``. ComfyUI's ``compare_view`` input is the canvas's slider
widget (type ``IMAGECOMPARE``, its value a canvas-only ``["", ""]``); this engine has no constant type
for it, so the name is accepted and ignored rather than declared.
"""

from __future__ import annotations

import random

import torch

from nodegraph.node import Input, Node, NodeResult
from nodegraph.types import IMAGE
from nodegraph.user_files import folder_of
from nodegraph.value_checks import check_image

from .files import save_images


def _preview(images: torch.Tensor, stem: str, paths) -> list[dict[str, str]]:
    suffix = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return save_images(images, stem + suffix, folder_of(paths, "temp"), "temp", 1, {})


class ImageCompare(Node):
    """Compares two images side by side with a slider."""

    category = "image"
    display_name = "Image Compare"
    experimental = True
    output_node = True
    extra_inputs = ("compare_view",)
    image_a = Input(IMAGE, optional=True)
    image_b = Input(IMAGE, optional=True)
    outputs = ()

    def execute(self, image_a: torch.Tensor | None = None, image_b: torch.Tensor | None = None) -> NodeResult:
        result: dict[str, list] = {"a_images": [], "b_images": []}
        for key, name, stem, value in (("a_images", "image_a", "comfy.compare.a", image_a),
                                       ("b_images", "image_b", "comfy.compare.b", image_b)):
            if value is not None:
                images = check_image(value, name)
                result[key] = _preview(images, stem, self.ctx.paths)
        return NodeResult(ui=result)
