"""ComfyUI's ``WanFunControlToVideo`` (Wan 2.1 Fun Control) and ``Wan22FunControlToVideo`` (Wan 2.2 Fun Control
A14B and 5B): a control video (depth, pose, canny … frames) and a start or reference image as the extra input
channels of Fun Control transformers.

Facts (ComfyUI's):

* WanFunControlToVideo: an empty ``[B, 16, frames, h / 8, w / 8]`` latent; ``concat_latent_image`` has 32
  channels — the control video's latent first, the start image's second (each resized to width × height,
  bilinear, center crop, encoded on its own and placed at the start; the rest the latent format's zero); no
  mask (Wan 2.1 Fun Control transformers take 16 + 32 input channels); ``clip_vision_output`` as given.
* Wan22FunControlToVideo: the VAE's latent channels ``C`` and scale (Wan 2.2 5B's VAE: 48, 1/16); the same two
  halves, the Wan 2.2 latent format's zero for 48 channels; a 4-channel mask of ones (the model gets ``1 -
  mask``, zeros) at ``concat_mask_index`` ``C``, after the control latent (A14B: 16 + 16 + 4 + 16 input
  channels); ``ref_image`` (its first image, resized) encoded and appended to ``reference_latents`` (the
  transformer's ``ref_conv`` takes it, :mod:`.wan_fun_adapters`). The node has no start image input (ComfyUI's
  code reads one its schema does not offer).

The runner (:class:`nodegraph_nodes.dit.wan.WanRunner`) puts these after the noisy latent.
"""

from __future__ import annotations

import torch

from nodegraph.node import Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.dit.wan_i2v import _resized, encode_into, encode_video, pixel_frame_mask, video_inputs
from nodegraph_nodes.dit.wan_vace import _append
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT


def _format(channels: int):
    from nodegraph_nodes.dit.qwen_image import WAN21
    from nodegraph_nodes.dit.wan22_5b import WAN22

    return WAN22 if channels == WAN22.channels else WAN21


class WanFunControlToVideo(Node):
    """Control-video conditioning for Wan 2.1 Fun Control models: an empty video latent; the control video's and
    the start image's latents side by side (32 channels) and the CLIP vision output on both conditionings."""

    category = "conditioning/video_models"
    vars().update(video_inputs())
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True)
    start_image = Input(IMAGE, optional=True)
    control_video = Input(IMAGE, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                clip_vision_output=None, start_image: torch.Tensor | None = None,
                control_video: torch.Tensor | None = None) -> tuple:
        where = "WanFunControlToVideo"
        shape = [1, 16, (length - 1) // 4 + 1, height // 8, width // 8]
        concat = _format(16).process_out(torch.zeros(shape)).repeat(1, 2, 1, 1, 1)
        if start_image is not None:
            encode_into(concat, slice(16, None), self.ctx, vae, start_image, width, height, length, where)
        if control_video is not None:
            encode_into(concat, slice(None, 16), self.ctx, vae, control_video, width, height, length, where)
        values = {"concat_latent_image": concat}
        if clip_vision_output is not None:
            values["clip_vision_output"] = clip_vision_output
        latent = torch.zeros([batch_size] + shape[1:])
        return set_values(positive, values), set_values(negative, values), {"samples": latent}


class Wan22FunControlToVideo(Node):
    """Control-video conditioning for Wan 2.2 Fun Control models (A14B, 5B): an empty video latent of the VAE's
    channels and scale; the control video's latent, a mask and an empty start latent, and the reference image's
    latent on both conditionings."""

    category = "conditioning/video_models"
    vars().update(video_inputs())
    ref_image = Input(IMAGE, optional=True)
    control_video = Input(IMAGE, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                ref_image: torch.Tensor | None = None, control_video: torch.Tensor | None = None) -> tuple:
        where = "Wan22FunControlToVideo"
        scale = int(getattr(vae, "scale_factor", 8))
        channels = int(getattr(vae, "latent_channels", 16))
        frames, h, w = (length - 1) // 4 + 1, height // scale, width // scale
        concat = _format(channels).process_out(torch.zeros([1, channels, frames, h, w])).repeat(1, 2, 1, 1, 1)
        if control_video is not None:
            encode_into(concat, slice(None, channels), self.ctx, vae, control_video, width, height, length, where)
        mask = pixel_frame_mask(frames, h, w)
        values = {"concat_latent_image": concat, "concat_mask": mask, "concat_mask_index": channels}
        positive, negative = set_values(positive, values), set_values(negative, values)
        if ref_image is not None:
            ref = encode_video(self.ctx, vae, _resized(ref_image[:1], width, height), where)
            positive = _append(positive, {"reference_latents": ref})
            negative = _append(negative, {"reference_latents": ref})
        latent = torch.zeros([batch_size, channels, frames, h, w])
        return positive, negative, {"samples": latent}
