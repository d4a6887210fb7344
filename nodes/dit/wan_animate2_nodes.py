"""ComfyUI's Wan Animate 2 nodes: ``WanAnimate2ToVideo`` (the reference image, the continuation frame and the
pose video as the model's conditioning, and the empty latent) and ``WanAnimate2Cache`` (keep the pose
branch's keys between steps). The model and its runner: :mod:`.wan_animate2`.

Facts (ComfyUI's node docs and templates, diffusers' pipeline): the latent has one more frame than the video's
``(length - 1) / 4 + 1``: frame 0 is the reference image's slot (``trim_latent`` = 1: TrimVideoLatent drops it
before decoding). The condition channels are a 4-channel mask and the latent of the reference image (frame 0,
known) followed by the latent of ``length`` frames: the last frame of ``continue_motion`` first (known on the
first latent frame), gray after it. The pose video is read from ``video_frame_offset`` (one frame earlier when
continuing: the continuation repeats the previous segment's last frame, ``trim_image`` = 1), ``length`` frames,
its last frame repeated where it is short, resized to width × height ("area", centre crop; the reference image
and the continuation frame likewise); the ``video_frame_offset`` output is where the next segment reads on.
Width and height are taken down to multiples of 8 (the latent's pixels; the templates pass GetImageSize's
482 × 854).
"""

from __future__ import annotations

import dataclasses

import torch

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, MODEL

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.dit.wan_animate2 import CacheSettings, PoseStream, WanAnimate2Model
from nodegraph_nodes.dit.wan_i2v import MAX_RESOLUTION, encode_video, video_inputs
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT

WHERE = "WanAnimate2ToVideo"


def _resized(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    from nodegraph_nodes.image.operations import common_upscale

    return common_upscale(images[..., :3].permute(0, 3, 1, 2).float(), width, height, "area",
                          "center").permute(0, 2, 3, 1)


def pose_frames(pose_video: torch.Tensor, offset: int, length: int) -> torch.Tensor:
    """``length`` frames of the pose video from ``offset``, the last one repeated where it runs out."""
    frames = pose_video[offset:offset + length]
    if frames.shape[0] < length:
        frames = torch.cat([frames, frames[-1:].expand(length - frames.shape[0], *frames.shape[1:])])
    return frames


def _first_states(conditioning, where: str) -> torch.Tensor:
    if not conditioning:
        raise ValueError(f"{where}: the conditioning is empty")
    return conditioning[0][0]


class WanAnimate2ToVideo(Node):
    """Wan Animate 2 conditioning: the character of ``reference_image`` performing the motion of ``pose_video``
    (raw driving video frames); the sampler's empty latent and the frames to trim after it."""

    category = "conditioning/video_models"
    vars().update(video_inputs())
    reference_image = Input(IMAGE, optional=True, tooltip="The character to animate (black without one).")
    pose_video = Input(IMAGE, optional=True, tooltip="The video whose motion is transferred.")
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True, tooltip="CLIP vision of the reference image.")
    positive_pose = Input(CONDITIONING, optional=True,
                          tooltip="Prompt for the pose-video branch (defaults to positive).")
    clip_vision_output_pose = Input(CLIP_VISION_OUTPUT, optional=True,
                                    tooltip="CLIP vision of the pose video's first frame.")
    continue_motion = Input(IMAGE, optional=True, tooltip="Previous frames; the last one starts this segment.")
    video_frame_offset = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    pose_strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    pose_start_percent = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.01)
    pose_end_percent = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)
    reference_image_strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"),
               Output(INT, "trim_latent"), Output(INT, "trim_image"), Output(INT, "video_frame_offset"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                video_frame_offset: int = 0, pose_strength: float = 1.0, pose_start_percent: float = 0.0,
                pose_end_percent: float = 1.0, reference_image_strength: float = 1.0, reference_image=None,
                pose_video=None, clip_vision_output=None, positive_pose=None, clip_vision_output_pose=None,
                continue_motion=None) -> tuple:
        if pose_start_percent > pose_end_percent:
            raise ValueError(f"{WHERE}: pose_start_percent ({pose_start_percent}) is after pose_end_percent "
                             f"({pose_end_percent})")
        frames = (length - 1) // 4 + 1
        h, w = height // 8, width // 8
        height, width = h * 8, w * 8  # sizes from GetImageSize (the templates' 482 × 854): the latent's pixels
        if reference_image is None:
            reference = torch.zeros(1, height, width, 3)
        else:
            reference = _resized(reference_image[:1], width, height)
        reference_latent = encode_video(self.ctx, vae, reference, WHERE)
        video = torch.full((length, height, width, 3), 0.5)
        offset = video_frame_offset
        if continue_motion is not None:
            video[:1] = _resized(continue_motion[-1:], width, height)
            offset = max(offset - 1, 0)
        segment_latent = encode_video(self.ctx, vae, video, WHERE)
        image_latent = torch.cat([reference_latent, segment_latent], dim=2)
        mask = torch.ones(1, 4, frames + 1, h, w)
        mask[:, :, 0] = 0.0  # the reference image: known
        if continue_motion is not None:
            mask[:, :, 1] = 0.0  # the continuation frame (the first pixel frame fills the first latent frame)
        values = {"concat_latent_image": image_latent, "concat_mask": mask,
                  "wan_animate2_reference_strength": float(reference_image_strength)}
        if clip_vision_output is not None:
            values["clip_vision_output"] = clip_vision_output
        if pose_video is not None:
            if pose_video.shape[0] <= video_frame_offset:
                raise ValueError(f"{WHERE}.pose_video: it has {pose_video.shape[0]} frames, not more than "
                                 f"video_frame_offset ({video_frame_offset})")
            pose = _resized(pose_frames(pose_video, offset, length), width, height)
            text = _first_states(positive_pose if positive_pose is not None else positive, f"{WHERE}.positive_pose")
            values["wan_animate2_pose"] = PoseStream(
                encode_video(self.ctx, vae, pose, WHERE), text,
                clip_vision_output_pose if clip_vision_output_pose is not None else clip_vision_output,
                float(pose_strength), float(pose_start_percent), float(pose_end_percent))
        latent = torch.zeros(batch_size, 16, frames + 1, h, w)
        trim_image = 1 if continue_motion is not None else 0
        return (set_values(positive, values), set_values(negative, values), {"samples": latent}, 1, trim_image,
                offset + length)


class WanAnimate2Cache(Node):
    """Keeps the pose video's per-block keys and values once per sampling run (and context window) instead of
    recomputing them every step: faster, more memory. ``int8`` / ``int4`` store them quantized (per-vector
    absmax; nodegraph's, not ComfyUI's convrot kernels: the int4 codes are kept one per byte)."""

    category = "advanced/model"
    model = Input(MODEL, tooltip="The Wan Animate2 model to attach the cache to.")
    device = Input(COMBO, choices=["cpu", "gpu"], default="cpu", tooltip="Where to keep the cache.")
    dtype = Input(COMBO, choices=["default", "int8", "int4"], default="default", tooltip="Storage precision.")
    outputs = (Output(MODEL),)

    def execute(self, model, device: str, dtype: str) -> tuple:
        if not isinstance(model, WanAnimate2Model):
            raise ValueError(f"WanAnimate2Cache.model: needs a Wan Animate 2 model; this is "
                             f"{type(model).__name__}")
        return (dataclasses.replace(model, pose_cache=CacheSettings(device, dtype)),)
