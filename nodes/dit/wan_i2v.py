"""ComfyUI's ``WanImageToVideo`` and ``WanFirstLastFrameToVideo``: the start (and end) image(s) as the extra input channels of Wan image-to-video
transformers (36 input channels: the noisy latent, a 4-channel mask, the 16-channel latent of the start
frames followed by gray frames).

Facts (ComfyUI's): the start images are resized to width × height (bilinear, center crop), placed first
in ``length`` frames of gray (0.5), encoded as one video by the VAE (``concat_latent_image``); the mask
(``concat_mask``) is 0 on the latent frames the start images cover, 1 elsewhere. The runner
(:class:`nodegraph_nodes.dit.wan.WanRunner`) gives the transformer ``1 - mask`` (four channels) and the
latent in the model's space after the noisy latent. ``WanFirstLastFrameToVideo`` places the end images
last and makes a 4-channel mask over the pixel frames (the start images and the 3 frames after them, the
end images: 0), four pixel frames per latent frame.
"""

from __future__ import annotations

import torch

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, VAE

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT

MAX_RESOLUTION = 16384


def video_inputs(length: int = 81, batch_size: bool = True, width: int = 832, height: int = 480,
                 size_step: int = 16) -> dict[str, Input]:
    """The inputs Wan's ``*ToVideo`` conditioning nodes open with, as ComfyUI's: ``positive``, ``negative``,
    ``vae``, ``width`` / ``height`` (defaults ``width`` × ``height``, minimum and step ``size_step``), ``length``
    (default ``length``, step 4) and, unless ``batch_size`` is false, ``batch_size``. A node's class body takes
    them with ``vars().update(video_inputs())``."""
    inputs = {"positive": Input(CONDITIONING), "negative": Input(CONDITIONING), "vae": Input(VAE),
              "width": Input(INT, default=width, min=size_step, max=MAX_RESOLUTION, step=size_step),
              "height": Input(INT, default=height, min=size_step, max=MAX_RESOLUTION, step=size_step),
              "length": Input(INT, default=length, min=1, max=MAX_RESOLUTION, step=4)}
    if batch_size:
        inputs["batch_size"] = Input(INT, default=1, min=1, max=4096)
    return inputs


def encode_video(ctx, vae, frames: torch.Tensor, where: str) -> torch.Tensor:
    """``frames`` ``[F, H, W, 3]`` (0..1) encoded as one video: the latent ``[1, C, 1 + (F - 1) / 4, h, w]``
    (the distribution's mean)."""
    from nodegraph_nodes.dit.qwen_image import ImageVae

    manager = ctx.service("models")
    with manager.use(vae.handle, ctx.device) as module, torch.inference_mode():
        if not isinstance(module, ImageVae):
            raise ValueError(f"{where}.vae: a Wan (3D causal) VAE is needed to encode video frames; this is "
                             f"{type(module).__name__}")
        dtype = next(module.parameters()).dtype
        x = frames[..., :3].permute(3, 0, 1, 2)[None].to(ctx.device, dtype) * 2 - 1
        return module.vae.encode(x).latent_dist.mode().float().cpu()


class WanImageToVideo(Node):
    """Image-to-video conditioning for Wan: an empty video latent, and (with ``start_image``) the start
    frames' latent and mask on both conditionings; ``clip_vision_output`` (CLIPVisionEncode of the start
    image) is what Wan 2.1 I2V transformers attend to (Wan 2.2 A14B ones have no image embedder and
    ignore it)."""

    category = "conditioning/video_models"
    vars().update(video_inputs())
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True)
    start_image = Input(IMAGE, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                clip_vision_output=None, start_image: torch.Tensor | None = None) -> tuple:
        latent = torch.zeros([batch_size, 16, (length - 1) // 4 + 1, height // 8, width // 8])
        if start_image is not None:
            image_latent, mask = start_frames_latent(self.ctx, vae, start_image, width, height, length,
                                                     "WanImageToVideo")
            values = {"concat_latent_image": image_latent, "concat_mask": mask}
            positive, negative = set_values(positive, values), set_values(negative, values)
        if clip_vision_output is not None:
            values = {"clip_vision_output": clip_vision_output}
            positive, negative = set_values(positive, values), set_values(negative, values)
        return positive, negative, {"samples": latent}


def _resized(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    from nodegraph_nodes.image.operations import common_upscale

    return common_upscale(images[..., :3].permute(0, 3, 1, 2).float(), width, height, "bilinear",
                          "center").permute(0, 2, 3, 1)


def start_frames_latent(ctx, vae, start_image: torch.Tensor, width: int, height: int, length: int,
                        where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The image-to-video ``concat_latent_image`` and ``concat_mask``: the start images (the first ``length``,
    resized) first in ``length`` gray frames, encoded as one video; the mask ``[1, 1, frames, h, w]`` 0 on the
    latent frames they cover, 1 elsewhere."""
    start = _resized(start_image[:length], width, height)
    video = torch.full((length, height, width, 3), 0.5)
    video[:start.shape[0]] = start
    image_latent = encode_video(ctx, vae, video, where)
    mask = torch.ones((1, 1, (length - 1) // 4 + 1, image_latent.shape[-2], image_latent.shape[-1]))
    mask[:, :, :(start.shape[0] - 1) // 4 + 1] = 0.0
    return image_latent, mask


def encode_into(concat: torch.Tensor, channels: slice, ctx, vae, images: torch.Tensor, width: int, height: int,
                length: int, where: str) -> None:
    """``images`` (the first ``length``, resized) encoded as one video into ``concat``'s ``channels`` from the
    first latent frame."""
    encoded = encode_video(ctx, vae, _resized(images[:length], width, height), where)
    n = min(encoded.shape[2], concat.shape[2])
    concat[:, channels, :n] = encoded[:, :, :n]


def pixel_frame_mask(frames: int, h: int, w: int, start: int = 0, end: int = 0) -> torch.Tensor:
    """The 4-channel ``concat_mask`` ``[1, 4, frames, h, w]`` over the pixel frames (four per latent frame): 0 on
    ``start`` start images and the 3 frames after them and on the last ``end`` frames, 1 elsewhere."""
    mask = torch.ones((1, 1, frames * 4, h, w))
    if start:
        mask[:, :, :start + 3] = 0.0
    if end:
        mask[:, :, -end:] = 0.0
    return mask.view(1, frames, 4, h, w).transpose(1, 2)


class WanFirstLastFrameToVideo(Node):
    """First-last-frame conditioning for Wan: an empty video latent, and the start / end frames' latent
    (gray between them) with a 4-channel mask on both conditionings; the two CLIP vision outputs' states side
    by side for Wan 2.1 FLF2V transformers (ignored by models without an image embedder)."""

    category = "conditioning/video_models"
    vars().update(video_inputs())
    clip_vision_start_image = Input(CLIP_VISION_OUTPUT, optional=True)
    clip_vision_end_image = Input(CLIP_VISION_OUTPUT, optional=True)
    start_image = Input(IMAGE, optional=True)
    end_image = Input(IMAGE, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                clip_vision_start_image=None, clip_vision_end_image=None, start_image: torch.Tensor | None = None,
                end_image: torch.Tensor | None = None) -> tuple:
        frames = (length - 1) // 4 + 1
        scale = int(getattr(vae, "scale_factor", 8))  # ComfyUI's: the VAE's channels and size (Wan 2.2's: 48, 1/16)
        h, w = height // scale, width // scale
        latent = torch.zeros([batch_size, int(getattr(vae, "latent_channels", 16)), frames, h, w])
        video = torch.full((length, height, width, 3), 0.5)
        starts = ends = 0
        if start_image is not None:
            start = _resized(start_image[:length], width, height)
            video[:start.shape[0]] = start
            starts = start.shape[0]
        if end_image is not None:
            end = _resized(end_image[-length:], width, height)
            video[-end.shape[0]:] = end
            ends = end.shape[0]
        image_latent = encode_video(self.ctx, vae, video, "WanFirstLastFrameToVideo")
        mask = pixel_frame_mask(frames, h, w, starts, ends)
        values = {"concat_latent_image": image_latent, "concat_mask": mask}
        vision = clip_vision_start_image
        if clip_vision_end_image is not None:
            if vision is None:
                vision = clip_vision_end_image
            else:  # both images' penultimate states side by side (ComfyUI's)
                from dataclasses import replace

                states = torch.cat([vision.penultimate_hidden_states,
                                    clip_vision_end_image.penultimate_hidden_states], dim=-2)
                vision = replace(vision, penultimate_hidden_states=states)
        if vision is not None:
            values["clip_vision_output"] = vision
        return set_values(positive, values), set_values(negative, values), {"samples": latent}

