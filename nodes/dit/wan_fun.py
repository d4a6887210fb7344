"""ComfyUI's ``WanFunInpaintToVideo`` (Wan 2.1 / 2.2 Fun InP models: start and end frames to video).

Facts (ComfyUI's): the node is ``WanFirstLastFrameToVideo`` with ``clip_vision_output`` as the start image's
CLIP vision output — the same empty latent, the start / end frames with gray between encoded as one video, the
4-channel mask, on both conditionings (:class:`nodegraph_nodes.dit.wan_i2v.WanFirstLastFrameToVideo`). Fun InP
transformers have the image-to-video layout (36 input channels), which :class:`nodegraph_nodes.dit.wan.WanRunner`
feeds from these values.
"""

from __future__ import annotations

import torch

from nodegraph.node import Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT

from nodegraph_nodes.dit.wan_i2v import WanFirstLastFrameToVideo, video_inputs
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT


class WanFunInpaintToVideo(Node):
    """Start / end frames to video for Wan Fun InP models: WanFirstLastFrameToVideo with ``clip_vision_output``
    as the start image's CLIP vision output."""

    category = "conditioning/video_models"
    vars().update(video_inputs())
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True)
    start_image = Input(IMAGE, optional=True)
    end_image = Input(IMAGE, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                clip_vision_output=None, start_image: torch.Tensor | None = None,
                end_image: torch.Tensor | None = None) -> tuple:
        flf = WanFirstLastFrameToVideo(self.ctx)
        return flf.execute(positive, negative, vae, width, height, length, batch_size,
                           clip_vision_start_image=clip_vision_output, start_image=start_image, end_image=end_image)
