"""Latent and option nodes of two families nodegraph cannot sample yet, in ComfyUI's names and specs:

* **Qwen-Image-Layered** — EmptyQwenImageLayeredLatentImage: zeros ``[batch, 16, layers + 1, height/8, width/8]``
  (the composite image and ``layers`` RGBA layers as frames of a Wan 2.1-format latent). The layered
  transformer (RGBA VAE, layer positions) does not load in nodegraph yet, so a sampler on this latent fails.
* **Chroma Radiance** (pixel-space Chroma) — EmptyChromaRadianceLatentImage: zeros ``[batch, 3, height, width]``
  (pixel space, no VAE); ChromaRadianceOptions: with ``nerf_tile_size`` −1 (the default) the model is returned
  unchanged, exactly as ComfyUI; otherwise ComfyUI sets the tile size of Radiance's NeRF decoder head for sigmas in
  ``[end_sigma, start_sigma]`` — an option only Chroma Radiance models read. nodegraph loads no Chroma Radiance model
  yet (diffusers has no Chroma Radiance class), so the MODEL is returned unchanged in every case (other models
  ignore the option in ComfyUI too). Stricter: ``end_sigma`` above ``start_sigma`` is an error.
"""

from __future__ import annotations

from typing import Any

import torch

from nodegraph.node import BOOLEAN, FLOAT, INT, Input, Node, Output
from nodegraph.types import LATENT, MODEL

MAX_RESOLUTION = 16384


class EmptyQwenImageLayeredLatentImage(Node):
    """Empty latent for Qwen-Image-Layered: the image plus ``layers`` layers as frames (16 channels, 1/8 size)."""

    category = "latent/qwen"
    display_name = "Empty Qwen Image Layered Latent"
    width = Input(INT, default=640, min=16, max=MAX_RESOLUTION, step=16)
    height = Input(INT, default=640, min=16, max=MAX_RESOLUTION, step=16)
    layers = Input(INT, default=3, min=0, max=MAX_RESOLUTION, step=1)
    batch_size = Input(INT, default=1, min=1, max=4096)
    outputs = (Output(LATENT),)

    def execute(self, width: int, height: int, layers: int, batch_size: int = 1) -> tuple:
        return ({"samples": torch.zeros([batch_size, 16, layers + 1, height // 8, width // 8])},)


class EmptyChromaRadianceLatentImage(Node):
    """Empty pixel-space latent for Chroma Radiance: ``[batch, 3, height, width]`` zeros."""

    category = "latent/chroma_radiance"
    width = Input(INT, default=1024, min=16, max=MAX_RESOLUTION, step=16)
    height = Input(INT, default=1024, min=16, max=MAX_RESOLUTION, step=16)
    batch_size = Input(INT, default=1, min=1, max=4096)
    outputs = (Output(LATENT),)

    def execute(self, width: int, height: int, batch_size: int = 1) -> tuple:
        return ({"samples": torch.zeros([batch_size, 3, height, width])},)


class ChromaRadianceOptions(Node):
    """Allows setting advanced options for the Chroma Radiance model (the NeRF decoder's tile size: −1 the
    default 32, 0 no tiling). nodegraph loads no Chroma Radiance model yet; other models ignore the option."""

    category = "model_patches/chroma_radiance"
    model = Input(MODEL)
    preserve_wrapper = Input(BOOLEAN, default=True)
    start_sigma = Input(FLOAT, default=1.0, min=0.0, max=1.0)
    end_sigma = Input(FLOAT, default=0.0, min=0.0, max=1.0)
    nerf_tile_size = Input(INT, default=-1, min=-1)
    outputs = (Output(MODEL),)

    def execute(self, model: Any, preserve_wrapper: bool = True, start_sigma: float = 1.0, end_sigma: float = 0.0,
                nerf_tile_size: int = -1) -> tuple:
        if end_sigma > start_sigma:
            raise ValueError("ChromaRadianceOptions: end_sigma is above start_sigma; the options would never apply")
        # nerf_tile_size -1: ComfyUI returns the model as is. Otherwise the option is read only by Chroma Radiance's
        # NeRF head, which no model nodegraph loads has; every other model ignores it, as in ComfyUI.
        return (model,)
