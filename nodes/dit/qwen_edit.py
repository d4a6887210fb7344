"""ComfyUI's Qwen-Image-Edit encoders: ``TextEncodeQwenImageEdit`` (one image) and
``TextEncodeQwenImageEditPlus`` (up to three; Edit 2509/2511).

What they do (ComfyUI's facts):

* Edit: the image is scaled (area filter) to about 1024×1024 pixels keeping its aspect; the Qwen2.5-VL
  encoder sees it inside the edit template (``…<|im_start|>user\\n<|vision_start|><|image_pad|>
  <|vision_end|>{prompt}…``) and, with a VAE, its latent is appended to the conditioning's
  ``reference_latents`` (the transformer attends to its tokens).
* Edit Plus: each image is scaled to about 384×384 for the encoder, listed as ``Picture N:
  <|vision_start|><|image_pad|><|vision_end|>`` before the prompt in Plus's template, and (with a VAE)
  scaled to about 1024×1024 in multiples of 8 for its reference latent.

The system part is dropped as for text-to-image. The vision input is prepared by transformers' Qwen2-VL
image processor (resize to multiples of 28, 3136 … 12845056 pixels, CLIP normalisation), the same as
diffusers' edit pipelines; ComfyUI resizes with its own bicubic code, so pixel-level results may differ
slightly there. Stricter than ComfyUI: the CLIP must be Qwen-Image's (an error names the input otherwise),
and an alpha channel is dropped explicitly.
"""

from __future__ import annotations

import math

import torch

from nodegraph.node import STRING, Input, Node, Output
from nodegraph.types import CLIP, CONDITIONING, IMAGE, VAE

from nodegraph_nodes.diffusion.latent import vae_encode
from nodegraph_nodes.dit.llm_text import QWEN_IMAGE_EDIT_TEMPLATE, LlmClip
from nodegraph_nodes.image.operations import common_upscale

EDIT_PLUS_TEMPLATE = QWEN_IMAGE_EDIT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "")
VISION_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"


def _qwen_clip(clip, where: str) -> LlmClip:
    if not isinstance(clip, LlmClip) or clip.family != "qwen_image":
        what = clip.describe() if hasattr(clip, "describe") else type(clip).__name__
        raise ValueError(f"{where}: this CLIP ({what}) is not Qwen-Image's text encoder; load "
                         "qwen_2.5_vl_7b*.safetensors with CLIPLoader type qwen_image")
    return clip


def scale_to_area(image: torch.Tensor, area: int, multiple: int = 1) -> torch.Tensor:
    """``[B, H, W, C]`` scaled (area filter) to about ``area`` pixels, aspect kept; sides rounded to
    ``multiple`` (1: to the nearest pixel)."""
    samples = image[..., :3].movedim(-1, 1)
    scale = math.sqrt(area / (samples.shape[3] * samples.shape[2]))
    if multiple == 1:
        width, height = round(samples.shape[3] * scale), round(samples.shape[2] * scale)
    else:
        width = round(samples.shape[3] * scale / multiple) * multiple
        height = round(samples.shape[2] * scale / multiple) * multiple
    return common_upscale(samples, width, height, "area", "disabled").movedim(1, -1)


def _reference(conditioning: list, latents: list) -> list:
    return [[cond, {**extras, "reference_latents": list(extras.get("reference_latents", ())) + latents}]
            for cond, extras in conditioning]


class TextEncodeQwenImageEdit(Node):
    """Encodes an edit instruction with the input image for Qwen-Image-Edit; with a VAE the image's latent
    becomes a reference latent the model attends to."""

    category = "advanced/conditioning"
    clip = Input(CLIP)
    prompt = Input(STRING, multiline=True, dynamic_prompts=True)
    vae = Input(VAE, optional=True)
    image = Input(IMAGE, optional=True)
    outputs = (Output(CONDITIONING),)

    def execute(self, clip, prompt: str, vae=None, image=None) -> tuple:
        qwen = _qwen_clip(clip, "TextEncodeQwenImageEdit.clip")
        if image is None:
            return (qwen.encode_text(self.ctx, prompt),)
        scaled = scale_to_area(image, 1024 * 1024)
        conditioning = qwen.encode_with_images(self.ctx, QWEN_IMAGE_EDIT_TEMPLATE.format(prompt), [scaled[0]])
        if vae is not None:
            conditioning = _reference(conditioning, [vae_encode(self.ctx, vae, scaled)])
        return (conditioning,)


class TextEncodeQwenImageEditPlus(Node):
    """Encodes an edit instruction with up to three images (Qwen-Image-Edit 2509/2511): each is shown to
    the encoder as 'Picture N' and, with a VAE, added as a reference latent."""

    category = "advanced/conditioning"
    clip = Input(CLIP)
    prompt = Input(STRING, multiline=True, dynamic_prompts=True)
    vae = Input(VAE, optional=True)
    image1 = Input(IMAGE, optional=True)
    image2 = Input(IMAGE, optional=True)
    image3 = Input(IMAGE, optional=True)
    outputs = (Output(CONDITIONING),)

    def execute(self, clip, prompt: str, vae=None, image1=None, image2=None, image3=None) -> tuple:
        qwen = _qwen_clip(clip, "TextEncodeQwenImageEditPlus.clip")
        vision, latents, prefix = [], [], ""
        for i, image in enumerate((image1, image2, image3)):
            if image is None:
                continue
            vision.append(scale_to_area(image, 384 * 384)[0])
            if vae is not None:
                latents.append(vae_encode(self.ctx, vae, scale_to_area(image, 1024 * 1024, 8)))
            prefix += f"Picture {i + 1}: {VISION_TOKENS}"
        text = EDIT_PLUS_TEMPLATE.format(prefix + prompt)
        conditioning = qwen.encode_with_images(self.ctx, text, vision) if vision else qwen.encode_text(self.ctx, text)
        if latents:
            conditioning = _reference(conditioning, latents)
        return (conditioning,)
