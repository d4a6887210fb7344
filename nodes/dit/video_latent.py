"""ComfyUI's video-latent nodes used by Wan text-to-video: ``EmptyHunyuanLatentVideo`` (ComfyUI's empty
16-channel video latent, which Wan's templates use) and ``TrimVideoLatent``.

Video latents are 5-D ``[B, 16, frames, h, w]`` with ``frames = 1 + (length - 1) // 4`` (the 3D VAE keeps
the first frame and compresses each following 4 into one) at 1/8 of the size.
"""

from __future__ import annotations

import torch

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import LATENT

MAX_RESOLUTION = 16384


class EmptyHunyuanLatentVideo(Node):
    """A batch of empty 16-channel video latents: ``1 + (length - 1) // 4`` latent frames at 1/8 of the size
    (Wan 2.1, HunyuanVideo)."""

    category = "latent/video"
    width = Input(INT, default=848, min=16, max=MAX_RESOLUTION, step=16)
    height = Input(INT, default=480, min=16, max=MAX_RESOLUTION, step=16)
    length = Input(INT, default=25, min=1, max=MAX_RESOLUTION, step=4)
    batch_size = Input(INT, default=1, min=1, max=4096)
    outputs = (Output(LATENT),)

    def execute(self, width: int, height: int, length: int, batch_size: int = 1) -> tuple:
        frames = (length - 1) // 4 + 1
        return ({"samples": torch.zeros([batch_size, 16, frames, height // 8, width // 8])},)


class TrimVideoLatent(Node):
    """Drops the first ``trim_amount`` latent frames of a video latent. Stricter than ComfyUI: a latent that
    is not 5-D (an image latent) is an error instead of being cut along its height."""

    category = "latent/video"
    samples = Input(LATENT)
    trim_amount = Input(INT, default=0, min=0, max=99999)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, trim_amount: int) -> tuple:
        latent = samples["samples"]
        if latent.ndim != 5:
            raise ValueError(f"TrimVideoLatent.samples: a video latent [B, C, frames, h, w] is needed; this one "
                             f"is {list(latent.shape)}")
        out = dict(samples)
        out["samples"] = latent[:, :, trim_amount:]
        return (out,)
