"""ComfyUI's ``WanCameraEmbedding`` (a preset camera move as a Plücker embedding) and ``WanCameraImageToVideo``
(camera-controlled image-to-video conditioning for Wan Fun Camera models, :mod:`.wan_fun_adapters`).

Facts (ComfyUI's, after VideoX-Fun and CameraCtrl):

* Moves: rotation angles (x, y, z) and translation T per preset; frame ``i`` of ``n`` (``length``) has the
  angles ``i / n · speed · π/3 · angle`` (rotation ``Rz · Ry · Rx``) and the translation ``i / n · speed · 1.5 ·
  T``; these camera-to-world poses are taken relative to the first one.
* Intrinsics: ``fx, fy, cx, cy`` are fractions of the width and height; against the poses' 1280×720 aspect, the
  focal length along the wider side is rescaled (``fx · height · 16/9 / width`` where the video is narrower than
  16:9, else ``fy · width · 9/16 / height``).
* Plücker embedding per pixel (centres at ``+0.5``): the ray direction ``d`` (normalized ``((u - cx) / fx,
  (v - cy) / fy, 1)`` rotated by the pose) and the camera origin ``o``: ``(o × d, d)``, 6 channels.
* The first frame is repeated four times in front of the others, then each four frames' channels are stacked:
  ``[1, 6 · 4, 1 + (length - 1) / 4, height, width]`` (channel ``c · 4 + k`` is channel ``c`` of frame ``k`` of
  the group); the node also passes width, height and length on.
* WanCameraImageToVideo: an empty ``[B, 16, frames, h / 8, w / 8]`` latent; with ``start_image``, its latent
  (the image alone, resized, center crop) leads ``concat_latent_image`` (the rest the latent format's zero)
  and ``concat_mask`` is 0 on the pixel frames of the image and the 3 after it; ``camera_conditions`` and
  ``clip_vision_output`` go on both conditionings as given.

Differences from ComfyUI: the cross product is taken over the xyz axis explicitly (ComfyUI's ``torch.cross``
without ``dim`` takes the first axis of size 3, which is the frame axis for a 3-frame video); a length that is
not ``1 + 4k`` is an error naming the node (ComfyUI fails in a reshape).
"""

from __future__ import annotations

import math

import torch

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.dit.wan_i2v import MAX_RESOLUTION, encode_into, pixel_frame_mask, video_inputs
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT

WAN_CAMERA_EMBEDDING = "WAN_CAMERA_EMBEDDING"

BASE_T_NORM = 1.5
BASE_ANGLE = math.pi / 3
POSE_WIDTH, POSE_HEIGHT = 1280, 720

#: preset → (rotation angles x, y, z; translation x, y, z)
CAMERA_MOVES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "Static": ((0, 0, 0), (0, 0, 0)),
    "Pan Up": ((0, 0, 0), (0, -1, 0)),
    "Pan Down": ((0, 0, 0), (0, 1, 0)),
    "Pan Left": ((0, 0, 0), (-1, 0, 0)),
    "Pan Right": ((0, 0, 0), (1, 0, 0)),
    "Zoom In": ((0, 0, 0), (0, 0, 2)),
    "Zoom Out": ((0, 0, 0), (0, 0, -2)),
    "Anti Clockwise (ACW)": ((0, 0, -1), (0, 0, 0)),
    "ClockWise (CW)": ((0, 0, 1), (0, 0, 0)),
}


def _rotation(ax: float, ay: float, az: float) -> torch.Tensor:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return rz @ ry @ rx


def camera_poses(pose: str, length: int, speed: float) -> torch.Tensor:
    """The preset's camera-to-world matrices ``[length, 4, 4]`` relative to the first frame's."""
    angle, move = CAMERA_MOVES[pose]
    poses = torch.zeros(length, 4, 4, dtype=torch.float64)
    for i in range(length):
        f = i / length * speed
        poses[i, :3, :3] = _rotation(*(f * BASE_ANGLE * a for a in angle))
        poses[i, :3, 3] = torch.tensor([f * BASE_T_NORM * t for t in move], dtype=torch.float64)
        poses[i, 3, 3] = 1.0
    return torch.linalg.inv(poses[0]) @ poses


def intrinsics(width: int, height: int, fx: float, fy: float, cx: float, cy: float) -> tuple[float, ...]:
    """``(fx, fy, cx, cy)`` in pixels, the focal length along the wider side fitted to the poses' aspect."""
    if POSE_WIDTH / POSE_HEIGHT > width / height:
        fx = height * POSE_WIDTH / POSE_HEIGHT * fx / width
    else:
        fy = width / (POSE_WIDTH / POSE_HEIGHT) * fy / height
    return fx * width, fy * height, cx * width, cy * height


def plucker(poses: torch.Tensor, width: int, height: int, k: tuple[float, ...]) -> torch.Tensor:
    """Plücker rays ``[frames, 6, height, width]`` (``o × d``, ``d``) of the camera poses."""
    fx, fy, cx, cy = k
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                          torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    d = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    d = d / d.norm(dim=-1, keepdim=True)
    poses = poses.float()
    rays = d[None] @ poses[:, :3, :3].transpose(-1, -2)  # [F, HW, 3]
    origin = poses[:, None, :3, 3].expand_as(rays)
    out = torch.cat([torch.cross(origin, rays, dim=-1), rays], dim=-1)
    return out.reshape(poses.shape[0], height, width, 6).permute(0, 3, 1, 2)


def camera_embedding(pose: str, width: int, height: int, length: int, speed: float = 1.0, fx: float = 0.5,
                     fy: float = 0.5, cx: float = 0.5, cy: float = 0.5) -> torch.Tensor:
    """WanCameraEmbedding's tensor ``[1, 24, 1 + (length - 1) / 4, height, width]``."""
    if (length - 1) % 4:
        raise ValueError(f"WanCameraEmbedding.length: {length} frames; the camera embedding needs 1 + a multiple "
                         "of 4 frames (Wan's 4 frames per latent frame)")
    rays = plucker(camera_poses(pose, length, speed), width, height, intrinsics(width, height, fx, fy, cx, cy))
    rays = torch.cat([rays[:1].expand(4, -1, -1, -1), rays[1:]])  # [length + 3, 6, H, W]
    groups = rays.shape[0] // 4
    rays = rays.reshape(groups, 4, 6, height, width).transpose(1, 2).reshape(groups, 24, height, width)
    return rays.transpose(0, 1)[None].contiguous()


class WanCameraEmbedding(Node):
    """A preset camera move (pan, zoom, roll) as the Plücker embedding Wan Fun Camera models take, and the
    width, height and length it was made for."""

    category = "camera"
    camera_pose = Input(COMBO, choices=list(CAMERA_MOVES), default="Static")
    width = Input(INT, default=832, min=16, max=MAX_RESOLUTION, step=16)
    height = Input(INT, default=480, min=16, max=MAX_RESOLUTION, step=16)
    length = Input(INT, default=81, min=1, max=MAX_RESOLUTION, step=4)
    speed = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.1, optional=True)
    fx = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.000000001, optional=True)
    fy = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.000000001, optional=True)
    cx = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01, optional=True)
    cy = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01, optional=True)
    outputs = (Output(WAN_CAMERA_EMBEDDING, "camera_embedding"), Output(INT, "width"), Output(INT, "height"),
               Output(INT, "length"))

    def execute(self, camera_pose: str, width: int, height: int, length: int, speed: float = 1.0, fx: float = 0.5,
                fy: float = 0.5, cx: float = 0.5, cy: float = 0.5) -> tuple:
        embedding = camera_embedding(camera_pose, width, height, length, speed, fx, fy, cx, cy)
        return embedding, width, height, length


class WanCameraImageToVideo(Node):
    """Camera-controlled image-to-video conditioning for Wan Fun Camera models: an empty video latent; the start
    image's latent and mask, the camera embedding and the CLIP vision output (Wan 2.1 Fun Camera) on both
    conditionings."""

    category = "conditioning/video_models"
    vars().update(video_inputs())
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True)
    start_image = Input(IMAGE, optional=True)
    camera_conditions = Input(WAN_CAMERA_EMBEDDING, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                clip_vision_output=None, start_image: torch.Tensor | None = None,
                camera_conditions: torch.Tensor | None = None) -> tuple:
        from nodegraph_nodes.dit.qwen_image import WAN21

        frames = (length - 1) // 4 + 1
        h, w = height // 8, width // 8
        latent = torch.zeros([batch_size, 16, frames, h, w])
        values = {}
        if start_image is not None:
            concat = WAN21.process_out(torch.zeros([1, 16, frames, h, w]))
            encode_into(concat, slice(None), self.ctx, vae, start_image, width, height, length,
                        "WanCameraImageToVideo")
            mask = pixel_frame_mask(frames, h, w, start=min(start_image.shape[0], length))
            values.update(concat_latent_image=concat, concat_mask=mask)
        if camera_conditions is not None:
            values["camera_conditions"] = camera_conditions
        if clip_vision_output is not None:
            values["clip_vision_output"] = clip_vision_output
        return set_values(positive, values), set_values(negative, values), {"samples": latent}
