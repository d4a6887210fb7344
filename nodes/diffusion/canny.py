"""Canny edge detection (ComfyUI's ``Canny`` node, image/preprocessors), written in torch.

ComfyUI runs ``kornia.filters.canny``; this computes the same algorithm (kornia's defaults): RGB to
gray (0.299, 0.587, 0.114), a 5×5 Gaussian blur with sigma 1 (reflected borders), Sobel gradients
(replicated borders, unnormalised), magnitude ``sqrt(gx² + gy² + 1e-6)``, non-maximum suppression along
the gradient direction rounded to 45°, the double threshold (weak 0.5, strong 1) and hysteresis until
nothing changes: weak pixels next to a strong one become strong, the remaining weak ones are dropped.
The output is the edge map as a 3-channel IMAGE.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nodegraph.node import FLOAT, Input, Node, Output
from nodegraph.types import IMAGE
from nodegraph.value_checks import check_image

#: the 8 neighbours in order of the gradient angle in steps of 45° (x right, y down)
_NEIGHBOURS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def _neighbour_kernels(center: float, dtype, device) -> torch.Tensor:
    k = torch.zeros((8, 1, 3, 3), dtype=dtype, device=device)
    for i, (dy, dx) in enumerate(_NEIGHBOURS):
        k[i, 0, 1, 1] = center
        k[i, 0, 1 + dy, 1 + dx] += -1.0 if center else 1.0
    return k


def _gaussian_blur(x: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    coords = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    pad = size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, g.reshape(1, 1, 1, size).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.reshape(1, 1, size, 1).repeat(c, 1, 1, 1), groups=c)


def canny(image: torch.Tensor, low_threshold: float, high_threshold: float, eps: float = 1e-6) -> torch.Tensor:
    """Edges ``[B, 1, H, W]`` (0 or 1) of ``image`` ``[B, C, H, W]`` (C = 1 or 3, values 0..1)."""
    if low_threshold > high_threshold:
        raise ValueError(f"Canny: low_threshold ({low_threshold}) is above high_threshold ({high_threshold})")
    x = image.float()
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)
    elif x.shape[1] != 1:
        raise ValueError(f"Canny: the image needs 1 or 3 channels, not {x.shape[1]}")
    blurred = _gaussian_blur(x)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    padded = F.pad(blurred, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel.reshape(1, 1, 3, 3))
    gy = F.conv2d(padded, sobel.t().reshape(1, 1, 3, 3))
    magnitude = torch.sqrt(gx * gx + gy * gy + eps)
    angle = torch.round(torch.atan2(gy, gx) * (180.0 / math.pi) / 45) * 45
    diffs = F.conv2d(magnitude, _neighbour_kernels(1.0, x.dtype, x.device), padding=1)
    positive = ((angle / 45) % 8).long()
    negative = ((angle / 45 + 4) % 8).long()
    is_max = torch.minimum(torch.gather(diffs, 1, positive), torch.gather(diffs, 1, negative)) > 0.0
    magnitude = magnitude * is_max
    edges = (magnitude > low_threshold).to(x.dtype) * 0.5 + (magnitude > high_threshold).to(x.dtype) * 0.5
    kernels = _neighbour_kernels(0.0, x.dtype, x.device)
    previous = -torch.ones_like(edges)
    strong_now = edges
    while bool((previous != edges).any()):
        weak = (edges == 0.5).to(x.dtype)
        strong = (edges == 1).to(x.dtype)
        linked = (F.conv2d(edges, kernels, padding=1) == 1).any(1, keepdim=True).to(x.dtype)
        strong_now = linked * weak + strong
        previous = edges
        edges = strong_now + (strong_now == 0) * weak * 0.5
    return strong_now


class Canny(Node):
    """Finds edges with the Canny algorithm (thresholds on the gradient magnitude of the 0..1 image).
    Stricter than ComfyUI: an RGBA image is an error (not converted), and low_threshold may not exceed
    high_threshold."""

    category = "image/preprocessors"
    image = Input(IMAGE)
    low_threshold = Input(FLOAT, default=0.4, min=0.01, max=0.99, step=0.01)
    high_threshold = Input(FLOAT, default=0.8, min=0.01, max=0.99, step=0.01)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, low_threshold: float, high_threshold: float) -> tuple:
        image = check_image(image, "Canny.image")
        if image.shape[-1] == 4:
            raise ValueError("Canny.image has an alpha channel; Canny takes RGB or gray images")
        edges = canny(image.movedim(-1, 1).to(self.ctx.device), low_threshold, high_threshold)
        return (edges.cpu().repeat(1, 3, 1, 1).movedim(1, -1),)
