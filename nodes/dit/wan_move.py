"""ComfyUI's ``WanMoveTrackToVideo``: Wan-Move (motion-controlled Wan 2.1 image-to-video) conditioning — the start
image's latent features copied along point tracks (:mod:`.wan_tracks`) into the later latent frames, for an
ordinary 36-channel Wan I2V transformer (Wan-Move's weights).

Facts (ComfyUI's, after Alibaba's Wan-Move):

* Like WanImageToVideo: the start image(s) (resized to width × height, bilinear, center crop; at most ``length``)
  then gray (0.5) frames encoded as one video (``concat_latent_image``, the VAE's space); ``concat_mask`` 0 on the
  latent frames the images cover, 1 elsewhere; an empty latent ``[batch, 16, 1 + (length - 1) / 4, h / 8, w / 8]``.
* Tracks (their first ``length`` frames): on each latent frame ``k`` (pixel frame ``4k``), a track that is visible
  and inside the frame (``0 ≤ x < width``, ``0 ≤ y < height``) sits at latent cell ``(⌊y / 8⌋, ⌊x / 8⌋)``. For each
  latent frame ``k ≥ 1`` a track sits on, that cell becomes ``dst + (src - dst) · strength``, ``src`` the latent at
  the track's cell on frame 0 and ``dst`` the cell's own value (both before any change).
* With tracks and ``strength > 0`` the changed latent goes on both conditionings (ComfyUI changes the encoded
  latent in place, so its negative gets the changed one too); ``clip_vision_output`` on both.

Differences from ComfyUI: where two tracks land on the same cell of a frame, the later track (in the TRACKS
order) wins — ComfyUI shuffles the tracks with the global random generator first, so its winner varies from run
to run; a track not placed on frame 0 moves nothing (ComfyUI reads its source at index -1, the far corner); any
batch size works (ComfyUI's fails above 1 with tracks).
"""

from __future__ import annotations

import torch

from nodegraph.node import FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, VAE

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.dit.wan_i2v import MAX_RESOLUTION, start_frames_latent
from nodegraph_nodes.dit.wan_tracks import TRACKS, Tracks
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT

#: pixel frames per latent frame, pixels per latent cell
TIME_STRIDE, SPACE_STRIDE = 4, 8


def track_cells(tracks: Tracks, length: int, width: int, height: int) -> torch.Tensor:
    """Each track's latent cell ``(row, column)`` on each latent frame its path reaches, ``-1`` where it is hidden
    or outside the frame: ``[tracks, latent frames, 2]`` (long)."""
    path = tracks.path[:length]
    frames = (path.shape[0] - 1) // TIME_STRIDE + 1
    sampled = path[::TIME_STRIDE][:frames]  # [frames, N, 2]
    seen = tracks.visibility[::TIME_STRIDE][:frames].bool()
    x, y = sampled[..., 0], sampled[..., 1]
    inside = seen & (x >= 0) & (y >= 0) & (x < width) & (y < height)
    cells = torch.stack([torch.div(y, SPACE_STRIDE, rounding_mode="floor"),
                         torch.div(x, SPACE_STRIDE, rounding_mode="floor")], dim=-1).long()
    cells[~inside] = -1
    return cells.transpose(0, 1)


def move_features(latent: torch.Tensor, cells: torch.Tensor, strength: float) -> torch.Tensor:
    """``latent`` ``[B, C, T, H, W]`` with frame 0's features copied along ``cells`` (:func:`track_cells`) at
    ``strength``; a new tensor."""
    out = latent.clone()
    for track in cells:
        if (track[0] < 0).any():
            continue
        source = latent[:, :, 0, track[0, 0], track[0, 1]]
        for k in range(1, track.shape[0]):
            row, col = int(track[k, 0]), int(track[k, 1])
            if row < 0 or col < 0 or k >= latent.shape[2]:
                continue
            own = latent[:, :, k, row, col]
            out[:, :, k, row, col] = own + (source - own) * strength
    return out


class WanMoveTrackToVideo(Node):
    """Motion-controlled image-to-video for Wan-Move: the start image's latent and mask as WanImageToVideo makes
    them, with the first frame's features copied along the tracks; an empty video latent."""

    category = "conditioning/video_models"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    vae = Input(VAE)
    tracks = Input(TRACKS, optional=True)
    strength = Input(FLOAT, default=1.0, min=0.0, max=100.0, step=0.01, tooltip="Strength of the track conditioning.")
    width = Input(INT, default=832, min=16, max=MAX_RESOLUTION, step=16)
    height = Input(INT, default=480, min=16, max=MAX_RESOLUTION, step=16)
    length = Input(INT, default=81, min=1, max=MAX_RESOLUTION, step=4)
    batch_size = Input(INT, default=1, min=1, max=4096)
    start_image = Input(IMAGE)
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, strength: float, width: int, height: int, length: int,
                batch_size: int, start_image: torch.Tensor | None = None, tracks: Tracks | None = None,
                clip_vision_output=None) -> tuple:
        latent = torch.zeros([batch_size, 16, (length - 1) // 4 + 1, height // 8, width // 8])
        values: dict = {}
        if start_image is not None:
            image_latent, mask = start_frames_latent(self.ctx, vae, start_image, width, height, length,
                                                     "WanMoveTrackToVideo")
            if tracks is not None and strength > 0.0:
                image_latent = move_features(image_latent, track_cells(tracks, length, width, height), strength)
            values.update(concat_latent_image=image_latent, concat_mask=mask)
        if clip_vision_output is not None:
            values["clip_vision_output"] = clip_vision_output
        return set_values(positive, values), set_values(negative, values), {"samples": latent}
