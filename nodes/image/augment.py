"""Seeded image augmentation: random crop, flip, colour jitter and rotation, each producing ``copies``
augmented versions of every input image as one batch (``[B × copies, H, W, C]``, same size as the input).
The same seed always gives the same batch; image ``i``, copy ``k`` uses its own generator stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nodegraph.node import Input, Node, Output
from nodegraph.types import FLOAT, IMAGE, INT

from nodegraph.value_checks import check_image

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed((int(seed) * 1_000_003 + i) % (2**63)) for i in range(count)]


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


class _Augment(Node):
    abstract = True
    category = "image/augment"
    image = Input(IMAGE)
    copies = Input(INT, default=4, min=1, max=256)
    seed = Input(INT, default=0, min=0, max=SEED_MAX, control_after_generate=True)
    outputs = (Output(IMAGE),)

    def augment(self, image: torch.Tensor, g: torch.Generator, **params) -> torch.Tensor:
        raise NotImplementedError

    def execute(self, image, copies=4, seed=0, **params) -> tuple:
        image = check_image(image, "image")
        gens = _generators(seed, image.shape[0] * copies)
        out = []
        for b in range(image.shape[0]):
            for k in range(copies):
                out.append(self.augment(image[b], gens[b * copies + k], **params).clamp(0, 1))
        return (torch.stack(out),)


class AugmentCrop(_Augment):
    """Random crops (area fraction in [min_scale, 1]) resized back to the input size."""

    min_scale = Input(FLOAT, default=0.6, min=0.05, max=1.0, step=0.01)

    def augment(self, img, g, min_scale=0.6):
        h, w = img.shape[:2]
        scale = _uniform(g, min_scale, 1.0)
        ch, cw = max(1, round(h * math.sqrt(scale))), max(1, round(w * math.sqrt(scale)))
        top = int(torch.randint(0, h - ch + 1, (), generator=g))
        left = int(torch.randint(0, w - cw + 1, (), generator=g))
        crop = img[top:top + ch, left:left + cw].permute(2, 0, 1)[None]
        return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)


class AugmentFlip(_Augment):
    """Random horizontal / vertical flips with the given probabilities."""

    horizontal = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.05)
    vertical = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.05)

    def augment(self, img, g, horizontal=0.5, vertical=0.0):
        if _uniform(g, 0, 1) < horizontal:
            img = img.flip(1)
        if _uniform(g, 0, 1) < vertical:
            img = img.flip(0)
        return img


class AugmentColorJitter(_Augment):
    """Random brightness, contrast, saturation and hue shifts."""

    brightness = Input(FLOAT, default=0.2, min=0.0, max=1.0, step=0.01)
    contrast = Input(FLOAT, default=0.2, min=0.0, max=1.0, step=0.01)
    saturation = Input(FLOAT, default=0.2, min=0.0, max=1.0, step=0.01)
    hue = Input(FLOAT, default=0.02, min=0.0, max=0.5, step=0.01)

    def augment(self, img, g, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02):
        rgb = img[..., :3]
        rgb = rgb * _uniform(g, 1 - brightness, 1 + brightness)
        mean = rgb.mean()
        rgb = (rgb - mean) * _uniform(g, 1 - contrast, 1 + contrast) + mean
        gray = (rgb * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
        rgb = (rgb - gray) * _uniform(g, 1 - saturation, 1 + saturation) + gray
        if hue > 0:  # rotate around the gray axis in RGB space
            angle = _uniform(g, -hue, hue) * 2 * math.pi
            c, s = math.cos(angle), math.sin(angle)
            k = 1 / 3
            sq = math.sqrt(k)
            m = torch.tensor([[c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
                              [k * (1 - c) + sq * s, c + k * (1 - c), k * (1 - c) - sq * s],
                              [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + k * (1 - c)]])
            rgb = rgb @ m.T
        return torch.cat([rgb, img[..., 3:]], dim=-1) if img.shape[-1] > 3 else rgb


class AugmentRotate(_Augment):
    """Random rotations in [-max_degrees, max_degrees] (same size; corners filled with black)."""

    max_degrees = Input(FLOAT, default=15.0, min=0.0, max=180.0, step=0.5)

    def augment(self, img, g, max_degrees=15.0):
        angle = math.radians(_uniform(g, -max_degrees, max_degrees))
        h, w = img.shape[:2]
        c, s = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=img.dtype)[None]
        grid = F.affine_grid(theta, (1, img.shape[-1], h, w), align_corners=False)
        return F.grid_sample(img.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)[0].permute(1, 2, 0)
