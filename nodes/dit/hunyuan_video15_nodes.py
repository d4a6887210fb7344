"""ComfyUI's HunyuanVideo 1.5 latent nodes: ``EmptyHunyuanVideo15Latent`` and ``HunyuanVideo15ImageToVideo``.

Facts (ComfyUI's ``nodes_hunyuan``): the empty latent is ``[batch, 32, (length - 1) // 4 + 1, height // 16,
width // 16]`` zeros with ``downscale_ratio_spacial`` 16. HunyuanVideo15ImageToVideo gives the same empty
latent; with a start image (its first ``length`` frames resized to width × height, bilinear, center crop) the
frames are encoded by the VAE as one video and placed first in a zero latent of the output's size
(``concat_latent_image``), with ``concat_mask`` ``[1, 1, frames, h, w]`` 0 on the latent frames the start images
cover and 1 elsewhere, on both conditionings; a ``clip_vision_output`` (CLIPVisionEncode of the start image with
SigLIP) goes on both conditionings too. The runner (:class:`.hunyuan_video15.HunyuanVideo15Runner`) feeds them
to the transformer.
"""

from __future__ import annotations

import torch

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, VAE

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.dit.hunyuan_video15 import CHANNELS, SPATIAL
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT

MAX_RESOLUTION = 16384


def empty_latent(width: int, height: int, length: int, batch_size: int) -> torch.Tensor:
    return torch.zeros([batch_size, CHANNELS, (length - 1) // 4 + 1, height // SPATIAL, width // SPATIAL])


class EmptyHunyuanVideo15Latent(Node):
    """A batch of empty HunyuanVideo 1.5 video latents: 32 channels, ``1 + (length - 1) // 4`` latent frames at
    1/16 of the size."""

    category = "latent/video"
    display_name = "Empty Hunyuan Video 1.5 Latent"
    width = Input(INT, default=848, min=16, max=MAX_RESOLUTION, step=16)
    height = Input(INT, default=480, min=16, max=MAX_RESOLUTION, step=16)
    length = Input(INT, default=25, min=1, max=MAX_RESOLUTION, step=4)
    batch_size = Input(INT, default=1, min=1, max=4096)
    outputs = (Output(LATENT),)

    def execute(self, width: int, height: int, length: int, batch_size: int = 1) -> tuple:
        return ({"samples": empty_latent(width, height, length, batch_size), "downscale_ratio_spacial": SPATIAL},)


class HunyuanVideo15ImageToVideo(Node):
    """Image-to-video conditioning for HunyuanVideo 1.5: an empty video latent, and (with ``start_image``) the
    start frames' latent and mask, (with ``clip_vision_output``) the start image's SigLIP states, on both
    conditionings."""

    category = "conditioning/video_models"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    vae = Input(VAE)
    width = Input(INT, default=848, min=16, max=MAX_RESOLUTION, step=16)
    height = Input(INT, default=480, min=16, max=MAX_RESOLUTION, step=16)
    length = Input(INT, default=33, min=1, max=MAX_RESOLUTION, step=4)
    batch_size = Input(INT, default=1, min=1, max=4096)
    start_image = Input(IMAGE, optional=True)
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                start_image: torch.Tensor | None = None, clip_vision_output=None) -> tuple:
        from nodegraph_nodes.dit.wan_i2v import _resized, encode_video

        latent = empty_latent(width, height, length, batch_size)
        if start_image is not None:
            start = _resized(start_image[:length], width, height)
            encoded = encode_video(self.ctx, vae, start, "HunyuanVideo15ImageToVideo")
            image = torch.zeros((batch_size,) + tuple(latent.shape[1:]))
            image[:, :, :encoded.shape[2]] = encoded[:, :, :latent.shape[2]]
            mask = torch.ones((1, 1) + tuple(latent.shape[2:]))
            mask[:, :, :(start.shape[0] - 1) // 4 + 1] = 0.0
            values = {"concat_latent_image": image, "concat_mask": mask}
            positive, negative = set_values(positive, values), set_values(negative, values)
        if clip_vision_output is not None:
            values = {"clip_vision_output": clip_vision_output}
            positive, negative = set_values(positive, values), set_values(negative, values)
        return positive, negative, {"samples": latent}
