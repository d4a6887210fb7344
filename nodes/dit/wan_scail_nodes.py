"""``WanSCAILToVideo`` (ComfyUI's name, inputs and outputs): SCAIL-2's conditioning and empty latent
(:mod:`.wan_scail` runs the model on them).

Facts (ComfyUI's node):

* latent ``[batch, 16, (length - 1) / 4 + 1, height / 8, width / 8]`` of zeros; ``ref_mask_flag`` = not
  ``replacement_mode`` on both conditionings;
* ``previous_frames``: the last ``previous_frame_count`` frames (resized bicubic, centre crop, to the video's
  size) encoded as a video into the first latent frames, a ``noise_mask`` 0 there; ``video_frame_offset`` goes
  back by their count (not below 0);
* ``reference_image``: each image resized (bicubic, centre crop) and encoded on its own (one latent frame each)
  and appended to ``reference_latents``; in Replacement Mode with ``reference_image_mask`` each is first blacked
  out where its mask (resized nearest, centre crop; the last mask for images past the masks) has no channel
  above 0.1;
* ``clip_vision_output`` as given;
* ``pose_video`` / ``pose_video_mask`` from frame ``video_frame_offset`` on (dropped when not longer than it),
  both cut to ``4k + 1`` frames of at most ``length`` (and of the shorter of the two); the pose video resized
  to half the video's size (area, centre crop), encoded, times ``pose_strength``, as ``pose_video_latent`` on
  the steps between ``pose_start`` and ``pose_end`` only; the mask video resized the same way as
  ``driving_mask_28ch``;
* with both ``reference_image`` and ``reference_image_mask``: ``ref_mask_28ch`` = the additional references'
  masks, the primary's, then zeros for the video's latent frames (masks resized nearest, centre crop, to the
  video's size).

A 28-channel mask (:func:`mask_to_28ch`): per pixel 7 binary colour classes (white, red, green, blue, yellow,
magenta, cyan; a channel is on above 225/255), area-downsampled 8×, the first frame repeated to 4 and each 4
frames' classes stacked into one latent frame: ``[1, frames, 28, h, w]``.
"""

from __future__ import annotations

import torch

from nodegraph.node import BOOLEAN, FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.dit.wan_i2v import MAX_RESOLUTION, encode_video, video_inputs
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT

ON_THRESHOLD = 225.0 / 255.0
#: ComfyUI's margin between a timestep range's entries (the sampler's range tests are inclusive)
RANGE_EPS = 1e-5


def mask_to_28ch(video: torch.Tensor) -> torch.Tensor:
    """A coloured mask video ``[T, H, W, 3]`` (T = 4k + 1) → SCAIL-2's mask latent ``[1, k + 1, 28, ⌈H/8⌉,
    ⌈W/8⌉]``."""
    frames, h, w = video.shape[:3]
    x = video[..., :3].movedim(-1, 1).float()
    r, g, b = ((x[:, i:i + 1] > ON_THRESHOLD).float() for i in range(3))
    nr, ng, nb = 1 - r, 1 - g, 1 - b
    classes = torch.cat([r * g * b, r * ng * nb, nr * g * nb, nr * ng * b, r * g * nb, r * ng * b, nr * g * b], dim=1)
    for _ in range(3):
        h, w = (h + 1) // 2, (w + 1) // 2
    classes = torch.nn.functional.interpolate(classes, size=(h, w), mode="area")
    if (frames - 1) % 4:
        raise ValueError(f"WanSCAILToVideo: a mask video of {frames} frames; it needs 4k + 1")
    padded = torch.cat([classes[:1].repeat(4, 1, 1, 1), classes[1:]])
    return padded.reshape((frames - 1) // 4 + 1, 28, h, w)[None]


def _resize(images: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    from nodegraph_nodes.image.operations import common_upscale

    return common_upscale(images.movedim(-1, 1).float(), width, height, method, "center").movedim(1, -1)


def _append(conditioning: list, key: str, values: list) -> list:
    return [[cond, {**extras, key: list(extras.get(key) or []) + values}] for cond, extras in conditioning]


def set_values_in_range(conditioning: list, values: dict, start: float, end: float) -> list:
    """``values`` on each entry only for the part of the schedule in ``[start, end]`` (the entry itself on the
    rest of its range; ComfyUI's ``conditioning_set_values_with_timestep_range``)."""
    if start > end:
        return conditioning
    out = []
    for cond, extras in conditioning:
        lo, hi = extras.get("start_percent", 0.0), extras.get("end_percent", 1.0)
        a, b = max(start, lo), min(end, hi)
        if a >= b:
            out.append([cond, extras])
            continue
        if lo < a:
            out.append([cond, {**extras, "start_percent": lo, "end_percent": a - RANGE_EPS}])
        inside = {**extras, **values}
        if (a, b) != (lo, hi) or "start_percent" in extras or "end_percent" in extras:
            inside.update(start_percent=a, end_percent=b)
        out.append([cond, inside])
        if b < hi:
            out.append([cond, {**extras, "start_percent": b + RANGE_EPS, "end_percent": hi}])
    return out


class WanSCAILToVideo(Node):
    """Conditioning and an empty latent for SCAIL and SCAIL-2 video models: reference images, pose video,
    CLIP vision output, coloured identity masks and the previous chunk's frames."""

    category = "model/conditioning/wan/scail"
    vars().update(video_inputs(width=512, height=896, size_step=32))
    pose_video = Input(IMAGE, optional=True, tooltip="Video used for pose conditioning. Will be downscaled to half "
                                                     "the resolution of the main video.")
    pose_video_mask = Input(IMAGE, optional=True, tooltip="SCAIL-2 only. Colored per-identity SAM3 mask video at the "
                                                          "same resolution as pose_video.")
    replacement_mode = Input(BOOLEAN, default=False, optional=True,
                             tooltip="SCAIL-2 only. False = Animation Mode (pose_video_mask should have black "
                                     "background). True = Replacement Mode (pose_video_mask should have white "
                                     "background).")
    pose_strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01, tooltip="Strength of the pose latent.")
    pose_start = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Start step of the pose conditioning.")
    pose_end = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01, tooltip="End step of the pose conditioning.")
    reference_image = Input(IMAGE, optional=True,
                            tooltip="Reference image. The first image is the primary reference; SCAIL-2: extra batch "
                                    "images are additional views, each needing a matching reference_image_mask.")
    reference_image_mask = Input(IMAGE, optional=True,
                                 tooltip="SCAIL-2 only. Colored reference mask, batch matching reference_image.")
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True,
                               tooltip="CLIP vision features for conditioning. Model is trained with stretch resize "
                                       "to aspect ratio.")
    video_frame_offset = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1,
                               tooltip="Cumulative output frame this chunk begins at. Wire from the previous chunk's "
                                       "video_frame_offset output.")
    previous_frame_count = Input(INT, default=5, min=1, max=MAX_RESOLUTION, step=4,
                                 tooltip="Tail frames of previous_frames to anchor. SCAIL-2 trained at 5.")
    previous_frames = Input(IMAGE, optional=True, tooltip="SCAIL-2 only. Full decoded output of the previous chunk. "
                                                          "Only the last previous_frame_count are used.")
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"),
               Output(INT, "video_frame_offset"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                pose_strength: float = 1.0, pose_start: float = 0.0, pose_end: float = 1.0,
                video_frame_offset: int = 0, previous_frame_count: int = 5, replacement_mode: bool = False,
                pose_video=None, pose_video_mask=None, reference_image=None, reference_image_mask=None,
                clip_vision_output=None, previous_frames=None) -> tuple:
        where = "WanSCAILToVideo"
        frames = (length - 1) // 4 + 1
        latent = torch.zeros(batch_size, 16, frames, height // 8, width // 8)
        noise_mask = None
        conds = [set_values(c, {"ref_mask_flag": not replacement_mode}) for c in (positive, negative)]

        previous = None
        if previous_frames is not None and previous_frames.shape[0] > 0:
            previous = previous_frames[-previous_frame_count:]
            video_frame_offset = max(0, video_frame_offset - previous.shape[0])

        if reference_image is not None:
            refs = _resize(reference_image[..., :3], width, height, "bicubic")
            if replacement_mode and reference_image_mask is not None:
                masks = _resize(reference_image_mask[..., :3], width, height, "nearest-exact")
                masks = masks[[min(i, masks.shape[0] - 1) for i in range(refs.shape[0])]]
                refs = refs * (masks.amax(dim=-1, keepdim=True) > 0.1).to(refs.dtype)
            latents = [encode_video(self.ctx, vae, refs[i:i + 1], where) for i in range(refs.shape[0])]
            conds = [_append(c, "reference_latents", latents) for c in conds]

        if clip_vision_output is not None:
            conds = [set_values(c, {"clip_vision_output": clip_vision_output}) for c in conds]

        def after_offset(video):
            return None if video is None or video.shape[0] <= video_frame_offset else video[video_frame_offset:]

        pose_video, pose_video_mask = after_offset(pose_video), after_offset(pose_video_mask)
        lengths = [v.shape[0] for v in (pose_video, pose_video_mask) if v is not None]
        if lengths:
            kept = (min(min(lengths), length) - 1) // 4 * 4 + 1
            pose_video = pose_video[:kept] if pose_video is not None else None
            pose_video_mask = pose_video_mask[:kept] if pose_video_mask is not None else None
        if pose_video is not None:
            pose = encode_video(self.ctx, vae, _resize(pose_video[..., :3], width // 2, height // 2, "area"), where)
            conds = [set_values_in_range(c, {"pose_video_latent": pose * pose_strength}, pose_start, pose_end)
                     for c in conds]
        if pose_video_mask is not None:
            driving = mask_to_28ch(_resize(pose_video_mask[..., :3], width // 2, height // 2, "area"))
            conds = [set_values(c, {"driving_mask_28ch": driving}) for c in conds]

        if reference_image is not None and reference_image_mask is not None:
            masks = _resize(reference_image_mask[..., :3], width, height, "nearest-exact")
            extra = [mask_to_28ch(masks[min(i, masks.shape[0] - 1)][None]) for i in range(1, reference_image.shape[0])]
            primary = mask_to_28ch(masks[:1])
            zeros = torch.zeros(1, frames, 28, *primary.shape[-2:])
            conds = [set_values(c, {"ref_mask_28ch": torch.cat(extra + [primary, zeros], dim=1)}) for c in conds]

        if previous is not None:
            encoded = encode_video(self.ctx, vae, _resize(previous[..., :3], width, height, "bicubic"), where)
            n = min(encoded.shape[2], frames)
            latent[:, :, :n] = encoded[:, :, :n]
            noise_mask = torch.ones(1, 1, frames, height // 8, width // 8)
            noise_mask[:, :, :n] = 0.0

        out = {"samples": latent}
        if noise_mask is not None:
            out["noise_mask"] = noise_mask
        return conds[0], conds[1], out, video_frame_offset + length
