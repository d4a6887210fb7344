"""Run an image-to-image scaling function tile by tile and blend the tiles so no seam shows.

``tiled_scale`` cuts a ``[C,H,W]`` array into tiles of ``tile`` px whose neighbours share ``overlap``
px. Each tile is run through ``fn`` (output exactly ``scale`` × its input) together with up to
``context`` px of the image around it on the sides that have neighbours, which are cut away again
afterwards, so a tile's border pixels see what lies beyond them as they would in one whole-image
pass. The tiles are then written into the output with weights that ramp linearly across each shared
strip (staying 1 at the image border) and divided by the summed weights: neighbours cross-fade.
``tile = 0`` (or an image no larger than a tile) runs ``fn`` once on the whole image.

``upscale_image`` applies this to one IMAGE ``[H,W,C]`` for an RGB upscaler of either backend (ncnn or
torch): the RGB part is tiled through the model and clamped to 0..1, alpha is resized bicubically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

ScaleFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Span:
    """One tile's extent along an axis, in input pixels, and whether it has neighbours."""

    start: int
    stop: int
    before: bool  # a tile overlaps it on the low side
    after: bool   # a tile overlaps it on the high side


def spans(length: int, tile: int, overlap: int) -> list[Span]:
    """Tile extents covering ``0..length`` with at least ``overlap`` shared pixels between neighbours."""
    if tile <= 0 or length <= tile:
        return [Span(0, length, False, False)]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap ({overlap}) must be at least 0 and smaller than the tile size ({tile})")
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    starts = sorted(set(starts))
    return [Span(s, s + tile, i > 0, i < len(starts) - 1) for i, s in enumerate(starts)]


def ramp(size: int, ramp_len: int, before: bool, after: bool) -> np.ndarray:
    """Weights along one axis of a tile: 1 inside, rising over ``ramp_len`` px on overlapped sides."""
    w = np.ones(size, dtype=np.float32)
    n = min(ramp_len, size)
    if n > 0:
        up = (np.arange(n, dtype=np.float32) + 1.0) / (n + 1.0)
        if before:
            w[:n] = np.minimum(w[:n], up)
        if after:
            w[size - n:] = np.minimum(w[size - n:], up[::-1])
    return w


def tiled_scale(image: np.ndarray, fn: ScaleFn, scale: int, tile: int = 0, overlap: int = 0,
                on_tile: Callable[[int, int], None] | None = None, context: int = 0) -> np.ndarray:
    """``fn`` applied to ``image`` ``[C,H,W]`` tile by tile → ``[C', H·scale, W·scale]`` float32.

    ``on_tile(done, total)`` is called after each tile (progress, interruption checks).
    """
    if image.ndim != 3:
        raise ValueError(f"tiled_scale needs a [C,H,W] array, got shape {list(image.shape)}")
    _, height, width = image.shape
    rows, cols = spans(height, tile, overlap), spans(width, tile, overlap)
    total = len(rows) * len(cols)
    out = weights = None
    done = 0
    for r in rows:
        for c in cols:
            # context: extra input pixels around the tile, run through the model and cut away again
            top = min(context, r.start) if r.before else 0
            bottom = min(context, height - r.stop) if r.after else 0
            left = min(context, c.start) if c.before else 0
            right = min(context, width - c.stop) if c.after else 0
            piece = np.ascontiguousarray(image[:, r.start - top:r.stop + bottom, c.start - left:c.stop + right])
            result = np.asarray(fn(piece), dtype=np.float32)
            got = (piece.shape[1] * scale, piece.shape[2] * scale)
            if result.ndim != 3 or result.shape[1:] != got:
                raise ValueError(f"the model turned a {piece.shape[1]}×{piece.shape[2]} tile into shape "
                                 f"{list(result.shape)}, not {got[0]}×{got[1]} (scale {scale})")
            want = ((r.stop - r.start) * scale, (c.stop - c.start) * scale)
            result = result[:, top * scale:top * scale + want[0], left * scale:left * scale + want[1]]
            if total == 1:
                if on_tile is not None:
                    on_tile(1, 1)
                return result
            if out is None:
                out = np.zeros((result.shape[0], height * scale, width * scale), dtype=np.float32)
                weights = np.zeros((height * scale, width * scale), dtype=np.float32)
            w = np.outer(ramp(want[0], overlap * scale, r.before, r.after),
                         ramp(want[1], overlap * scale, c.before, c.after))
            ys, xs = slice(r.start * scale, r.stop * scale), slice(c.start * scale, c.stop * scale)
            out[:, ys, xs] += result * w
            weights[ys, xs] += w
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    return out / weights


def upscale_image(image: torch.Tensor, fn: ScaleFn, scale: int, tile: int = 0, overlap: int = 0,
                  on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """One IMAGE ``[H,W,C]`` (C = 1, 3 or 4) through an RGB ``fn`` → ``[H·s,W·s,C]`` in 0..1.

    Tiles of ``tile`` px share ``overlap`` px with their neighbours and read ``overlap`` px of context
    beyond their inner edges, so one model call sees at most ``tile + 2·overlap`` px a side."""
    channels = image.shape[-1]
    rgb = image[..., :3] if channels >= 3 else image.expand(*image.shape[:-1], 3)
    chw = rgb.detach().cpu().float().permute(2, 0, 1).contiguous().numpy()
    out = tiled_scale(chw, fn, scale, tile, overlap, on_tile, context=overlap)
    result = torch.from_numpy(out).permute(1, 2, 0).clamp_(0.0, 1.0)
    if channels == 1:
        result = result.mean(dim=-1, keepdim=True)
    elif channels == 4:
        alpha = torch.nn.functional.interpolate(image[..., 3:].detach().cpu().float().permute(2, 0, 1)[None],
                                                scale_factor=scale, mode="bicubic", align_corners=False)
        result = torch.cat([result, alpha[0].permute(1, 2, 0).clamp(0.0, 1.0)], dim=-1)
    return result.to(image.dtype)
