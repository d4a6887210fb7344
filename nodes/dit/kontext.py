"""Flux Kontext (image editing with reference latents) in ComfyUI's nodes: ``ReferenceLatent``,
``FluxKontextImageScale``, ``FluxKontextMultiReferenceLatentMethod``.

ReferenceLatent appends a LATENT (raw VAE latents) to the conditioning's ``reference_latents``; the Flux
runner (:mod:`.model`) puts each reference into the model's latent space, packs it into 2×2 patches
after the image's tokens and gives it position ids by ``reference_latents_method`` (ComfyUI's rules):

* ``offset`` (default): index 1; each further reference is placed beside (or below) the previous ones —
  right of them when the stack so far is taller than wide, else below;
* ``index``: reference *k* gets index *k*, no offset;
* ``uxo`` (``uxo/uno``): index 0, offset past the image and the previous references.

Only the image's tokens of the output are kept. One reference with ``offset`` is diffusers'
FluxKontextPipeline.
"""

from __future__ import annotations

import torch

from nodegraph.node import COMBO, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.image.operations import resize_image

#: Flux Kontext's preferred resolutions (width, height), ComfyUI's list
PREFERRED_KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)
METHODS = ["offset", "index", "uxo/uno", "index_timestep_zero"]  # the last: Qwen-Image-Edit 2511 (nodes/dit/qwen_image)


def reference_positions(method: str, image_hw: tuple[int, int], refs: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """``(index, row offset, column offset)`` in latent pixels for each reference of size ``(h, w)``."""
    img_h, img_w = image_hw
    out = []
    h = w = index = 0
    for rh, rw in refs:
        if method in ("index", "index_timestep_zero"):
            index += 1
            out.append((index, 0, 0))
        elif method == "uxo":
            out.append((0, img_h + h, img_w + w))
            h += rh
            w += rw
        else:
            h_off = w_off = 0
            if rh + h > rw + w:
                w_off = w
            else:
                h_off = h
            h = max(h, rh + h_off)
            w = max(w, rw + w_off)
            out.append((1, h_off, w_off))
    return out


class ReferenceLatent(Node):
    """Sets the guiding latent of an edit model (Flux Kontext); chain several for several references."""

    category = "advanced/conditioning/edit_models"
    conditioning = Input(CONDITIONING)
    latent = Input(LATENT, optional=True)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning: list, latent: dict | None = None) -> tuple:
        if latent is None:
            return (conditioning,)
        return ([[cond, {**extras, "reference_latents": list(extras.get("reference_latents", ())) + [latent["samples"]]}]
                 for cond, extras in conditioning],)


class FluxKontextImageScale(Node):
    """Resizes the image (Lanczos, center crop) to the Flux Kontext resolution closest in aspect ratio."""

    category = "advanced/conditioning/flux"
    image = Input(IMAGE)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor) -> tuple:
        aspect = image.shape[2] / image.shape[1]
        _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        return (resize_image(image, width, height, "lanczos", "center"),)


class FluxKontextMultiReferenceLatentMethod(Node):
    """How several reference latents are placed (see the module docstring)."""

    category = "advanced/conditioning/flux"
    conditioning = Input(CONDITIONING)
    reference_latents_method = Input(COMBO, choices=METHODS)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning: list, reference_latents_method: str) -> tuple:
        method = "uxo" if ("uxo" in reference_latents_method or "uso" in reference_latents_method) \
            else reference_latents_method
        return (set_values(conditioning, {"reference_latents_method": method}),)
