"""Qwen-Image 2.1's ComfyUI nodes: ``TextEncodeQwenImage21`` (prompt + negative prompt with up to 16 reference
images → positive, negative, an empty latent) and ``QwenImage21Cache`` (the prefix KV cache's device and storage
precision). Names, inputs, defaults and outputs are ComfyUI's (``comfy_extras/nodes_qwen.py``, 2026).

TextEncodeQwenImage21: the reference images (autogrow ``images.image_1`` … ``images.image_16``, taken in number
order, the first image of each batch) are resized to about ``resolution``² pixels in multiples of 32 keeping the
aspect ratio (``resolution`` 0: each image's own size rounded to 32; lanczos), shown to the Qwen3-VL encoder
with alpha composited over white and, with a VAE, encoded (all four channels) as reference latents. The latent
output is an empty ``[1, 64, h/16, w/16]`` at the first reference's size, else ``resolution``² (1024² at 0).
Stricter than ComfyUI: a CLIP that is not Qwen-Image 2.1's (Qwen3-VL) is an error naming the input.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from nodegraph.node import COMBO, INT, STRING, Input, Node, Output
from nodegraph.types import CLIP, CONDITIONING, IMAGE, LATENT, MODEL, VAE

from nodegraph_nodes.dit.qwen_image21 import CACHE_DEVICES, CACHE_DTYPES, QwenImage21Model
from nodegraph_nodes.dit.qwen_image21_text import Qwen21Clip

IMAGE_SLOTS = tuple(f"images.image_{i}" for i in range(1, 17))


def reference_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """ComfyUI's (width, height) of a reference image: about resolution² pixels in multiples of 32."""
    if resolution > 0:
        ratio = width / height
        w = round(math.sqrt(resolution * resolution * ratio) / 32) * 32
        h = round(math.sqrt(resolution * resolution / ratio) / 32) * 32
    else:
        w, h = round(width / 32) * 32, round(height / 32) * 32
    return max(32, w), max(32, h)


class TextEncodeQwenImage21(Node):
    """Encodes the prompt and the negative prompt for Qwen-Image 2.1, with optional reference images (seen by the
    text encoder and, with a VAE, spliced into the sequence as latents); also gives a matching empty latent."""

    category = "model/conditioning/qwen image"
    display_name = "Text Encode Qwen Image 2.1"
    clip = Input(CLIP)
    prompt = Input(STRING, multiline=True, dynamic_prompts=True)
    negative_prompt = Input(STRING, multiline=True, dynamic_prompts=True)
    vae = Input(VAE, optional=True)
    resolution = Input(INT, default=1024, min=0, max=4096, step=32, optional=True)
    vars().update({name: Input(IMAGE, optional=True) for name in IMAGE_SLOTS})
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, clip, prompt: str, negative_prompt: str, vae=None, resolution: int = 1024,
                **images: Any) -> tuple:
        from nodegraph_nodes.diffusion.latent import vae_encode
        from nodegraph_nodes.image.operations import resize_image

        if not isinstance(clip, Qwen21Clip):
            raise TypeError("TextEncodeQwenImage21.clip: this is not Qwen-Image 2.1's text encoder (Qwen3-VL, "
                            "CLIPLoader type qwen_image with qwen3vl_8b*.safetensors)")
        vision, refs = [], []
        size = resolution or 1024
        latent_w = latent_h = size
        for name in IMAGE_SLOTS:
            image = images.get(name)
            if image is None:
                continue
            image = image[:1]
            w, h = reference_size(image.shape[1], image.shape[2], resolution)
            if (w, h) != (image.shape[2], image.shape[1]):
                image = resize_image(image, w, h, "lanczos")
            if not vision:
                latent_w, latent_h = w, h
            rgb = image[..., :3]
            if image.shape[-1] > 3:  # the vision tower sees alpha over white; the VAE keeps all four channels
                rgb = rgb * image[..., 3:4] + (1.0 - image[..., 3:4])
            vision.append(rgb[0])
            if vae is not None:
                refs.append(encode_rgba(self.ctx, vae, image))
        positive = clip.encode(self.ctx, prompt, vision)
        negative = clip.encode(self.ctx, negative_prompt, vision)
        if refs:
            positive = [[c, {**e, "reference_latents": list(refs)}] for c, e in positive]
            negative = [[c, {**e, "reference_latents": list(refs)}] for c, e in negative]
        latent = torch.zeros([1, 64, latent_h // 16, latent_w // 16])
        return positive, negative, {"samples": latent}


def encode_rgba(ctx, vae, image: torch.Tensor) -> torch.Tensor:
    """VAE-encode an IMAGE keeping an alpha channel when it has one (the 2.1 VAE reads RGBA)."""
    from nodegraph_nodes.diffusion.latent import vae_encode

    if image.shape[-1] == 3:
        return vae_encode(ctx, vae, image)
    manager = ctx.service("models")
    with manager.use(vae.handle, ctx.device) as module, torch.inference_mode():
        dtype = next(module.parameters()).dtype
        x = image[..., :4].permute(0, 3, 1, 2).to(ctx.device, dtype) * 2 - 1
        return module.encode(x).latent_dist.mode().float().cpu()


class QwenImage21Cache(Node):
    """Sets where Qwen-Image 2.1 keeps its text/reference KV cache during sampling and at what precision.
    auto/gpu: on the compute device; cpu: in RAM between steps; off: the prefix is recomputed every step.
    default is lossless; int8 / int4 quantize per token and head (int4 is not bit-packed here)."""

    category = "model/conditioning/qwen image"
    display_name = "Qwen Image 2.1 Cache"
    model = Input(MODEL)
    device = Input(COMBO, choices=list(CACHE_DEVICES), default="auto")
    dtype = Input(COMBO, choices=list(CACHE_DTYPES), default="default")
    outputs = (Output(MODEL),)

    def execute(self, model, device: str, dtype: str) -> tuple:
        if not isinstance(model, QwenImage21Model):
            raise TypeError("QwenImage21Cache.model: this is not a Qwen-Image 2.1 model")
        return (model.with_cache(device, dtype),)
