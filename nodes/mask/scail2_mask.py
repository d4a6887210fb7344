"""``SCAIL2ColoredMask`` (ComfyUI's "Create SCAIL-2 Colored Mask"): SAM 3 tracks of the driving video and of the
reference image(s) rendered as the coloured identity masks that ``WanSCAILToVideo`` turns into SCAIL-2's
28-channel mask latents.

Facts (ComfyUI's node): each tracked object is painted in one colour of a fixed palette — blue, red, green,
magenta, cyan, yellow (the colours SCAIL-2 was trained on), object ``i`` in colour ``i % 6`` — and where
objects overlap the lowest index wins. ``sort_by`` orders the objects before colouring, on each track alike:
objects that appear in an earlier frame first; within a frame ``left_to_right`` by the mask's centroid x at
its first appearance, ``area`` biggest mask first there, ``none`` SAM 3's order. ``object_indices`` (applied
after sorting) keeps the listed objects (comma-separated digits; others and indices out of range are
skipped; empty: all). Backgrounds: Animation Mode (``replacement_mode`` false) paints the driving masks on
black and the reference masks on white, Replacement Mode the reverse. The reference may be a SAM 3 track
(one identity per object), a plain MASK (one identity, the first colour, where the mask is above 0.5; a
batch is several views of it) or absent (one frame of the reference background, the driving video's size).
Masks smaller than the track's frames are enlarged (nearest).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from nodegraph.node import BOOLEAN, COMBO, STRING, Input, Node, Output
from nodegraph.types import IMAGE

from .sam3_track import SAM3_TRACK_DATA, Sam3TrackData, check_track, selected_objects

#: SCAIL-2's identity colours (RGB in 0..1), in the order objects take them
PALETTE = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0))
WHITE, BLACK = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
SORT_ORDERS = ("none", "left_to_right", "area")
TRACK_OR_MASK = f"{SAM3_TRACK_DATA},MASK"


def first_appearance(masks: torch.Tensor) -> tuple[list[int], list[float], list[float]]:
    """Per object of ``masks`` (bool ``[T, N, H, W]``): the first frame it shows in (``T`` when never), its
    centroid x over the width and its area over the frame's there (of the last frame when never)."""
    t, _, h, w = masks.shape
    columns = masks.sum(dim=-2, dtype=torch.int64).double()  # [T, N, W]
    area = columns.sum(dim=-1)  # [T, N]
    cx = (columns * torch.arange(w, dtype=torch.float64)).sum(dim=-1) / area.clamp(min=1)
    frames = torch.arange(t)[:, None].expand_as(area)
    first = torch.where(area > 0, frames, t).amin(dim=0)
    at = first.clamp(max=t - 1)[None]
    return (first.tolist(), (cx.gather(0, at)[0] / w).tolist(), (area.gather(0, at)[0] / (h * w)).tolist())


def color_order(data: Sam3TrackData, sort_by: str) -> list[int]:
    """The objects' indices in the order they take the palette's colours."""
    n = data.n_objects
    if sort_by == "none" or n == 0:
        return list(range(n))
    first, cx, area = first_appearance(data.masks)
    if sort_by == "left_to_right":
        return sorted(range(n), key=lambda i: (first[i], cx[i]))
    if sort_by == "area":
        return sorted(range(n), key=lambda i: (first[i], -area[i]))
    raise ValueError(f"SCAIL2ColoredMask.sort_by: {sort_by!r} is not one of {', '.join(SORT_ORDERS)}")


def pick_objects(data: Sam3TrackData, sort_by: str, object_indices: str) -> Sam3TrackData:
    """The track's objects sorted for colouring, then those ``object_indices`` names."""
    order = color_order(data, sort_by)
    order = [order[i] for i in selected_objects(object_indices, len(order))]
    return replace(data, masks=data.masks[:, order], scores=tuple(data.scores[i] for i in order if i < len(data.scores)))


def render_track(data: Sam3TrackData, background: tuple) -> torch.Tensor:
    """The coloured masks ``[T, H, W, 3]`` of a track at its frames' size: object ``i`` in ``PALETTE[i % 6]``
    (the lowest index on top) on ``background``."""
    h, w = data.orig_size
    masks = data.masks
    labels = torch.zeros(masks.shape[0], *masks.shape[2:], dtype=torch.long)
    for i in reversed(range(masks.shape[1])):
        labels.masked_fill_(masks[:, i].bool(), i % len(PALETTE) + 1)
    if tuple(labels.shape[-2:]) != (h, w):
        labels = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    table = torch.tensor((background,) + PALETTE, dtype=torch.float32)
    return table[labels]


def render_mask(mask: torch.Tensor, background: tuple) -> torch.Tensor:
    """A plain MASK ``[B, H, W]`` (or ``[H, W]``) as one identity: the first colour where it is above 0.5."""
    mask = mask[None] if mask.ndim == 2 else mask
    color = torch.tensor(PALETTE[0]).view(1, 1, 1, 3)
    return torch.where((mask.float() > 0.5)[..., None], color, torch.tensor(background).view(1, 1, 1, 3))


class SCAIL2ColoredMask(Node):
    """Render SAM3 tracks for the driving pose video and reference image(s) into the colored masks
    WanSCAILToVideo consumes. Shared `sort_by` keeps each identity on the same color across both outputs."""

    category = "model/conditioning/wan/scail"
    display_name = "Create SCAIL-2 Colored Mask"
    driving_track_data = Input(SAM3_TRACK_DATA, tooltip="SAM3 track of the driving pose video. Will be rendered "
                                                        "into the pose_video_mask output.")
    ref_track_data = Input(TRACK_OR_MASK, optional=True,
                           tooltip="SAM3 track of the reference image(s) (one identity per object, colored in batch "
                                   "order), or a plain MASK of the reference subject (rendered as a single "
                                   "identity).")
    object_indices = Input(STRING, default="", tooltip="Comma-separated list of person indices to include (e.g. "
                                                       "'0,2,3'). Applied to both reference and pose video masks. "
                                                       "Empty = all.")
    sort_by = Input(COMBO, choices=list(SORT_ORDERS), default="left_to_right",
                    tooltip="Order in which palette colors are assigned to the tracked objects (applied to both "
                            "reference and pose video so each identity keeps the same color).")
    replacement_mode = Input(BOOLEAN, default=False,
                             tooltip="False = Animation Mode (pose_video_mask has black background, "
                                     "reference_image_mask has white background). True = Replacement Mode "
                                     "(pose_video_mask has white background, reference_image_mask has black "
                                     "background).")
    outputs = (Output(IMAGE, "pose_video_mask"), Output(IMAGE, "reference_image_mask"))

    def execute(self, driving_track_data, object_indices: str = "", sort_by: str = "left_to_right",
                replacement_mode: bool = False, ref_track_data=None) -> tuple:
        node = "SCAIL2ColoredMask"
        driving = check_track(driving_track_data, node)
        pose_bg, ref_bg = (WHITE, BLACK) if replacement_mode else (BLACK, WHITE)
        pose = render_track(pick_objects(driving, sort_by, object_indices), pose_bg)
        if ref_track_data is None:
            h, w = driving.orig_size
            ref = torch.tensor(ref_bg).view(1, 1, 1, 3).expand(1, h, w, 3).clone()
        elif isinstance(ref_track_data, torch.Tensor):
            ref = render_mask(ref_track_data, ref_bg)
        elif isinstance(ref_track_data, Sam3TrackData):
            ref = render_track(pick_objects(ref_track_data, sort_by, object_indices), ref_bg)
        else:
            raise TypeError(f"{node}: input 'ref_track_data' takes SAM3_VideoTrack's track data or a MASK, got "
                            f"{type(ref_track_data).__name__}")
        return pose, ref
