"""ComfyUI's HiDream-O1-Image nodes: ``EmptyHiDreamO1LatentImage`` (a pixel-space LATENT), ``ModelNoiseScale``
(the flow models' training noise scale), ``HiDreamO1ReferenceImages`` (reference IMAGEs on both
conditionings: one image edits, several personalise) and ``HiDreamO1PatchSeamSmoothing`` (shifted-grid
passes late in sampling). Behaviour from ComfyUI's node descriptions; the model is :mod:`.hidream_o1`."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, MODEL

#: HiDreamO1ReferenceImages' autogrow slots (ComfyUI: ``image_1`` … ``image_10``, used in number order)
IMAGE_SLOTS = tuple(f"images.image_{i}" for i in range(1, 11))


class EmptyHiDreamO1LatentImage(Node):
    """Empty pixel-space latent for HiDream-O1-Image: zeros ``[batch, 3, height, width]``. The model was
    trained at about 4 megapixels (2048×2048, 2304×1728, 1728×2304, 2560×1440, 1440×2560, 2496×1664,
    1664×2496, 3104×1312, 1312×3104, 2304×1792, 1792×2304); much smaller sizes lose quality."""

    category = "latent/image"
    display_name = "Empty HiDream-O1 Latent Image"
    width = Input(INT, default=2048, min=64, max=4096, step=32)
    height = Input(INT, default=2048, min=64, max=4096, step=32)
    batch_size = Input(INT, default=1, min=1, max=64)
    outputs = (Output(LATENT),)

    def execute(self, width: int, height: int, batch_size: int = 1) -> tuple:
        return ({"samples": torch.zeros(batch_size, 3, height, width)},)


class ModelNoiseScale(Node):
    """Sets the absolute training noise scale of a flow model's sampling (HiDream-O1 base: 8.0, dev: 7.5):
    the start noise and a sampler's fresh noise are scaled by it."""

    category = "advanced/model"
    model = Input(MODEL)
    noise_scale = Input(FLOAT, default=1.0, min=0.0, max=64.0, step=0.01,
                        tooltip="Absolute training noise scale. For example HiDream-O1 base: 8.0, dev: 7.5.")
    outputs = (Output(MODEL),)

    def execute(self, model, noise_scale: float) -> tuple:
        ms = getattr(model, "model_sampling", None)
        if ms is None or not hasattr(model, "with_model_sampling"):
            raise TypeError("ModelNoiseScale.model: needs a diffusion MODEL with a model sampling")
        if not ms.is_flow:
            raise ValueError(f"ModelNoiseScale.model: the noise scale applies to flow-matching models; this "
                             f"model's sampling is {ms.prediction!r}")
        return (model.with_model_sampling(dataclasses.replace(ms, noise_scale=float(noise_scale))),)


def _attach(conditioning: list, images: list[torch.Tensor]) -> list:
    return [[cond, {**extras, "reference_latents": list(extras.get("reference_latents", ())) + images}]
            for cond, extras in conditioning]


class HiDreamO1ReferenceImages(Node):
    """Attaches 1–10 reference images to the positive and negative conditioning (one image: an edit
    instruction; several: subject-driven personalisation), in socket order; with none connected the
    conditionings pass through."""

    category = "conditioning/image"
    display_name = "HiDream-O1 Reference Images"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    vars().update({name: Input(IMAGE, optional=True) for name in IMAGE_SLOTS})
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def execute(self, positive: list, negative: list, **images: Any) -> tuple:
        refs = [images[name] for name in IMAGE_SLOTS if images.get(name) is not None]
        if not refs:
            return (positive, negative)
        return (_attach(positive, refs), _attach(negative, refs))


class HiDreamO1PatchSeamSmoothing(Node):
    """Averages the HiDream-O1 model's output over shifted 32-pixel patch grids late in sampling, which
    cancels the patch seams (strength 0 or end ≤ start: the model unchanged)."""

    category = "advanced/model"
    display_name = "HiDream-O1 Patch Seam Smoothing"
    model = Input(MODEL)
    start_percent = Input(FLOAT, default=0.8, min=0.0, max=1.0, step=0.01,
                          tooltip="Sampling progress (0=start, 1=end) at which the blend turns ON.")
    end_percent = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
                        tooltip="Sampling progress at which the blend turns OFF.")
    pattern = Input(COMBO, choices=["single_shift", "symmetric"], default="single_shift")
    passes = Input(COMBO, choices=["2", "4", "ramp_2_4", "ramp_2_4_8"], default="2")
    blend = Input(COMBO, choices=["average", "window", "median"], default="average")
    strength = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
                     tooltip="Interpolation between the natural-grid prediction (0) and the averaged result (1).")
    outputs = (Output(MODEL),)

    def execute(self, model, start_percent: float, end_percent: float, pattern: str, passes: str, blend: str,
                strength: float) -> tuple:
        from nodegraph_nodes.dit.hidream_o1 import HiDreamO1Model, SeamSmoothing

        if strength <= 0.0 or end_percent <= start_percent:
            return (model,)
        if not isinstance(model, HiDreamO1Model):
            raise TypeError("HiDreamO1PatchSeamSmoothing.model: needs a HiDream-O1 model (its 32-pixel patch grid)")
        return (model.with_seam_smoothing(SeamSmoothing(start_percent, end_percent, pattern, passes, blend, strength)),)
