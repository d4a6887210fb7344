"""ComfyUI's ``WanTrackToVideo``: ATI (trajectory-conditioned Wan 2.1 image-to-video) conditioning — point tracks
drawn into the start image's latent, which an ordinary 36-channel Wan I2V transformer (ATI's weights) then
follows.

Facts (ComfyUI's, after ByteDance's ATI):

* Tracks (JSON, :func:`nodegraph_nodes.dit.wan_tracks.parse_json_tracks`): each is cut or padded to 121 points
  (padding invisible), its points ``(x, y)`` taken relative to the frame centre over half the short side
  (``(p - size / 2) / short · 2``), visibility ``±1``. Frame 0 stays; the other 120 are resampled to ``length -
  1`` (each repeated ``b`` times, then every ``a``-th from the second, ``a = 120 / g``, ``b = (length - 1) / g``,
  ``g = gcd(120, length - 1)``).
* Motion patch, per batch entry, on the start latent in the model's space (the Wan 2.1 latent format): in the
  latent grid (x over ``±W / short``, y over ``±H / short``, ``short`` the latent's short side) each latent frame
  ``k ≥ 1`` takes the visible tracks' mean position over its 4 pixel frames; a cell's weight for a track is
  ``exp(-temperature · distance²)`` (0 where not visible); the ``topk`` largest weights mix the tracks' features
  (sampled bilinearly from latent frame 0 at the tracks' frame-0 points, zeros outside) as ``Σ w · feature + latent
  · (1 - min(Σ w, 1))``. The mask is 1 on frame 0 and ``Σ w`` elsewhere; the conditioning gets ``1 - mask`` as
  ``concat_mask`` (4 channels) and the patched latent back in the VAE's space as ``concat_latent_image``, on both.
* The video: the start image (resized to width × height, bilinear, center crop) then gray (0.5) frames, one VAE
  encode per batch entry; the output latent is zeros ``[batch, 16, 1 + (length - 1) / 4, h / 8, w / 8]``.
* No tracks: WanImageToVideo's conditioning; no start image: only the CLIP vision output is added. Batch entries
  beyond the start images and the track sets take the nearest one (ComfyUI's ``resize_to_batch_size``).

Difference from ComfyUI: with a start image, a length that is not ``1 + 4k`` is an error naming the node
(ComfyUI fails in a reshape).
"""

from __future__ import annotations

import math

import torch

from nodegraph.node import FLOAT, INT, STRING, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, VAE

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.dit.wan_i2v import MAX_RESOLUTION, WanImageToVideo, _resized, encode_video
from nodegraph_nodes.dit.wan_tracks import parse_json_tracks
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT

#: ATI's track length (points at 24 fps for its 81-frame, 16 fps videos)
TRACK_POINTS = 121


def track_points(track: list) -> torch.Tensor:
    """One JSON track as ``[121, 3]`` (x, y, visible): cut, or padded with invisible zeros."""
    pts = torch.zeros(TRACK_POINTS, 3)
    given = torch.tensor([[float(p["x"]), float(p["y"]), 1.0] for p in track[:TRACK_POINTS]]).reshape(-1, 3)
    pts[:given.shape[0]] = given
    return pts


def ati_tracks(tracks: list, width: int, height: int, length: int) -> torch.Tensor:
    """A batch entry's tracks as ATI's ``[length, tracks, 4]`` (time in ``[-1, 1]``, x, y relative to the centre
    over half the short side, visibility ``±1``), resampled from 121 points to ``length`` frames."""
    pts = torch.stack([track_points(t) for t in tracks], dim=1)  # [121, N, 3]
    short = min(width, height)
    xy = (pts[..., :2] - torch.tensor([width / 2, height / 2])) / short * 2
    visible = pts[..., 2:] * 2 - 1
    time = torch.linspace(-1, 1, TRACK_POINTS).view(-1, 1, 1).expand_as(visible)
    out = torch.cat([time, xy, visible], dim=-1)
    frames = length - 1
    g = math.gcd(TRACK_POINTS - 1, frames)
    a, b = (TRACK_POINTS - 1) // g, frames // g
    rest = torch.repeat_interleave(out[1:], b, dim=0)[1::a]
    return torch.cat([out[:1], rest], dim=0)


def patch_motion(tracks: torch.Tensor, latent: torch.Tensor, temperature: float, topk: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch entry: ``tracks`` ``[length, N, 4]`` (:func:`ati_tracks`) drawn into ``latent`` ``[C, T, H, W]``
    (the model's space). The mask ``[T, H, W]`` and the patched latent."""
    _, frames, h, w = latent.shape
    count = tracks.shape[1]
    if tracks.shape[0] != 1 + 4 * (frames - 1):
        raise ValueError(f"WanTrackToVideo: the tracks resample to {tracks.shape[0]} frames, the latent has {frames} "
                         f"({1 + 4 * (frames - 1)} frames); ATI's resampling of its 121 points drops one frame where "
                         "length - 1 is a multiple of 120: choose another length")
    short = min(h, w)
    xy, visible = tracks[..., 1:3], tracks[..., 3:4].clamp(0, 1)
    span = torch.tensor([w / short, h / short])
    # each later latent frame: the visible tracks' mean position over its 4 pixel frames
    seen = visible[1:].reshape(frames - 1, 4, count, 1).sum(1)
    where = (xy[1:] * visible[1:]).reshape(frames - 1, 4, count, 2).sum(1) / (seen + 1e-5)
    gy, gx = torch.meshgrid(torch.linspace(-h / short, h / short, h), torch.linspace(-w / short, w / short, w),
                            indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)  # [H, W, 2] (x, y)
    distance = (where[:, None, None] - grid[None, :, :, None]).pow(2).sum(-1)  # [T-1, H, W, N]
    weight = torch.exp(-distance * temperature) * seen.clamp(0, 1).view(frames - 1, 1, 1, count)
    top_weight, top_index = torch.topk(weight, k=min(topk, count), dim=-1)
    start = (xy[:1] / span).clamp(-1, 1).to(latent.dtype)  # [1, N, 2] in grid_sample's coordinates
    features = torch.nn.functional.grid_sample(latent[:, :1].transpose(0, 1), start[None], mode="bilinear",
                                               padding_mode="zeros", align_corners=False)[0, :, 0].T  # [N, C]
    drawn = (features[top_index] * top_weight[..., None]).sum(-2).permute(3, 0, 1, 2)  # [C, T-1, H, W]
    total = top_weight.sum(-1)
    patched = torch.cat([latent[:, :1], drawn + latent[:, 1:] * (1 - total.clamp(0, 1))], dim=1)
    mask = torch.cat([torch.ones_like(total[:1]), total], dim=0)
    return mask, patched


def fit_list(items: list, size: int) -> list:
    """ComfyUI's ``resize_list_to_batch_size``: ``items`` spread over ``size`` entries (nearest, evenly)."""
    n = len(items)
    if n == size or n == 0:
        return items
    if size <= 1:
        return items[:size]
    if size < n:
        scale = (n - 1) / (size - 1)
        return [items[min(round(i * scale), n - 1)] for i in range(size)]
    scale = n / size
    return [items[min(math.floor((i + 0.5) * scale), n - 1)] for i in range(size)]


class WanTrackToVideo(Node):
    """Trajectory-conditioned image-to-video for Wan ATI: point tracks (JSON) drawn into the start image's latent
    as the I2V conditioning; an empty video latent. Without tracks, WanImageToVideo's conditioning."""

    category = "conditioning/video_models"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    vae = Input(VAE)
    tracks = Input(STRING, default="[]", multiline=True)
    width = Input(INT, default=832, min=16, max=MAX_RESOLUTION, step=16)
    height = Input(INT, default=480, min=16, max=MAX_RESOLUTION, step=16)
    length = Input(INT, default=81, min=1, max=MAX_RESOLUTION, step=4)
    batch_size = Input(INT, default=1, min=1, max=4096)
    temperature = Input(FLOAT, default=220.0, min=1.0, max=1000.0, step=0.1)
    topk = Input(INT, default=2, min=1, max=10)
    start_image = Input(IMAGE, optional=True)
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, tracks: str, width: int, height: int, length: int, batch_size: int,
                temperature: float, topk: int, start_image: torch.Tensor | None = None,
                clip_vision_output=None) -> tuple:
        from nodegraph_nodes.dit.qwen_image import WAN21

        data = parse_json_tracks(tracks)
        if not data:
            return WanImageToVideo.execute(self, positive, negative, vae, width, height, length, batch_size,
                                           clip_vision_output=clip_vision_output, start_image=start_image)
        if not isinstance(data[0], list) or not data[0]:
            raise ValueError("WanTrackToVideo.tracks: give a JSON list of tracks, each a list of {\"x\": …, \"y\": …} "
                             "points (or a list of such lists, one per batch entry)")
        if isinstance(data[0][0], dict):
            data = [data]  # one set of tracks for every batch entry
        frames = (length - 1) // 4 + 1
        latent = torch.zeros([batch_size, 16, frames, height // 8, width // 8])
        if start_image is not None:
            if (length - 1) % 4:
                raise ValueError(f"WanTrackToVideo.length: {length} frames; tracks need 1 + a multiple of 4 frames "
                                 "(Wan's 4 frames per latent frame)")
            start = _resized(start_image[:batch_size], width, height)
            videos = torch.full((start.shape[0], length, height, width, 3), 0.5)
            videos[:, 0] = start
            videos = fit_list(list(videos), batch_size)
            encoded = WAN21.process_in(torch.cat([encode_video(self.ctx, vae, v, "WanTrackToVideo") for v in videos]))
            per_entry = fit_list([ati_tracks(batch, width, height, length) for batch in data], batch_size)
            masks, patched = zip(*(patch_motion(t, y, temperature, topk) for t, y in zip(per_entry, encoded)))
            mask = 1.0 - torch.stack(masks)[:, None].expand(-1, 4, -1, -1, -1)
            values = {"concat_mask": mask, "concat_latent_image": WAN21.process_out(torch.stack(patched))}
            positive, negative = set_values(positive, values), set_values(negative, values)
        if clip_vision_output is not None:
            values = {"clip_vision_output": clip_vision_output}
            positive, negative = set_values(positive, values), set_values(negative, values)
        return positive, negative, {"samples": latent}
