"""Tensor helpers shared by the mask nodes: shape checks, batch pairing, resizing, dilation/erosion.

A ``MASK`` is float ``[B,H,W]`` in 0..1 (ComfyUI also passes single ``[H,W]`` masks; they are read as a
batch of one). Batches pair up by one rule everywhere: equal sizes go item by item, a batch of one is
used for every item of the other, anything else is an error naming both inputs (ComfyUI silently
truncates or repeats).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def as_masks(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """``mask`` as ``[B,H,W]``; a ValueError naming the input for any other shape."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"input '{name}' is a {type(mask).__name__}, not a MASK tensor")
    if mask.ndim == 2:
        return mask.unsqueeze(0)
    if mask.ndim == 3:
        return mask
    if mask.ndim == 4 and mask.shape[1] == 1:
        return mask[:, 0]
    raise ValueError(f"input '{name}' has shape {tuple(mask.shape)}; a MASK is [batch, height, width]")


def as_images(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """``image`` checked as ``[B,H,W,C]``; a ValueError naming the input otherwise."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"input '{name}' is {shape}; an IMAGE is [batch, height, width, channels]")
    return image


def paired_batch(size_a: int, name_a: str, size_b: int, name_b: str) -> int:
    """The batch size two inputs make together: equal sizes, or one of them 1."""
    if size_a == size_b or size_b == 1:
        return size_a
    if size_a == 1:
        return size_b
    raise ValueError(f"input '{name_a}' has a batch of {size_a} and '{name_b}' a batch of {size_b}; "
                     "give equal batches, or a batch of one to use for every item")


def to_batch(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """A batch of ``size`` from ``tensor`` (already ``size`` items, or one item repeated)."""
    if tensor.shape[0] == size:
        return tensor
    return tensor.expand(size, *tensor.shape[1:])


def resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B,H,W]`` resized bilinearly to ``height``×``width`` (unchanged when already that size)."""
    if masks.shape[-2:] == (height, width):
        return masks
    return F.interpolate(masks.unsqueeze(1), size=(height, width), mode="bilinear").squeeze(1)


def grow(masks: torch.Tensor, steps: int, tapered_corners: bool) -> torch.Tensor:
    """Grey dilation (``steps`` > 0) or erosion (< 0) repeated ``|steps|`` times with a 3×3 footprint:
    a cross when ``tapered_corners``, else the full square. Pixels outside repeat the edge, as
    ``scipy.ndimage``'s default ``reflect`` mode does for a 3×3 footprint."""
    out = masks.unsqueeze(1)
    dilate = steps > 0
    for _ in range(abs(steps)):
        padded = F.pad(out, (1, 1, 1, 1), mode="replicate")
        if tapered_corners:
            shifted = torch.stack([padded[..., 1:-1, 1:-1], padded[..., :-2, 1:-1], padded[..., 2:, 1:-1],
                                   padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]])
            out = shifted.amax(0) if dilate else shifted.amin(0)
        else:
            out = F.max_pool2d(padded, 3, stride=1) if dilate else -F.max_pool2d(-padded, 3, stride=1)
    return out.squeeze(1)


def edge_ramp(length: int, start: int, end: int) -> torch.Tensor:
    """Weights along one axis: ``(i+1)/start`` over the first ``start`` positions, the mirror image
    over the last ``end``, 1 elsewhere (products where the two ramps overlap)."""
    weights = torch.ones(length)
    if start > 0:
        weights[:start] *= torch.arange(1, start + 1, dtype=torch.float32) / start
    if end > 0:
        weights[length - end:] *= torch.arange(end, 0, -1, dtype=torch.float32) / end
    return weights
