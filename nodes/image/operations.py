"""Image nodes: create, transform, filter, resize and batch ``IMAGE`` tensors.

Every node follows ComfyUI core (COMFY_COMPAT §8): an ``IMAGE`` is a float32 tensor ``[B,H,W,C]``
in 0..1. The helpers below are plain functions on tensors so other node families can reuse them
(``common_upscale`` works on ``[B,C,H,W]`` like ComfyUI's ``comfy.utils.common_upscale``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, NodeResult, Output
from nodegraph.types import IMAGE, UINT64_MAX

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]
BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]
FLIP_METHODS = ["x-axis: vertically", "y-axis: horizontally"]
ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]


# -- tensor helpers ---------------------------------------------------------------------------------

def center_crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop ``[...,H,W]`` around the centre to the aspect ratio of ``width``×``height``."""
    old_h, old_w = samples.shape[-2], samples.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize ``[B,C,H,W]`` with Pillow's Lanczos filter, one image at a time (8-bit, as ComfyUI)."""
    resized = []
    for image in samples:
        array = np.clip(255.0 * image.movedim(0, -1).cpu().float().numpy(), 0, 255).astype(np.uint8)
        single = array.shape[-1] == 1
        pil = Image.fromarray(array[..., 0] if single else array)
        out = np.asarray(pil.resize((width, height), resample=Image.Resampling.LANCZOS))
        out = out[..., None] if single else out
        resized.append(torch.from_numpy(out.astype(np.float32) / 255.0).movedim(-1, 0))
    return torch.stack(resized).to(samples.device, samples.dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize ``[B,C,H,W]`` to ``height``×``width`` (ComfyUI's ``comfy.utils.common_upscale``)."""
    if method not in UPSCALE_METHODS:
        raise ValueError(f"unknown upscale method {method!r}; use one of {', '.join(UPSCALE_METHODS)}")
    source = center_crop_to_aspect(samples, width, height) if crop == "center" else samples
    if method == "lanczos":
        return lanczos(source, width, height)
    return F.interpolate(source, size=(height, width), mode=method)


def resize_image(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """``common_upscale`` for ``[B,H,W,C]`` images."""
    return common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def gaussian_kernel(kernel_size: int, sigma: float, device: torch.device | str | None = None) -> torch.Tensor:
    """ComfyUI's 2-D Gaussian: coordinates span -1..1 across the kernel, normalised to sum 1."""
    axis = torch.linspace(-1, 1, kernel_size, device=device)
    x, y = torch.meshgrid(axis, axis, indexing="ij")
    g = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return g / g.sum()


def convolve_image(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Convolve each channel of ``[B,H,W,C]`` with a ``(2r+1)²`` kernel, edges mirrored.

    ComfyUI pads with ``reflect``, which fails when the image is not larger than the radius; there we
    fall back to ``replicate`` padding so tiny images still work.
    """
    channels = image.shape[-1]
    weight = kernel.to(image.dtype).repeat(channels, 1, 1).unsqueeze(1)
    planar = image.movedim(-1, 1)
    mode = "reflect" if radius < min(image.shape[1], image.shape[2]) else "replicate"
    padded = F.pad(planar, (radius, radius, radius, radius), mode)
    return F.conv2d(padded, weight, groups=channels).movedim(1, -1)


def blend(image1: torch.Tensor, image2: torch.Tensor, mode: str) -> torch.Tensor:
    """The blend mode of ``image2`` over ``image1`` (before mixing by the blend factor)."""
    if mode == "normal":
        return image2
    if mode == "multiply":
        return image1 * image2
    if mode == "screen":
        return 1 - (1 - image1) * (1 - image2)
    if mode == "overlay":
        return torch.where(image1 <= 0.5, 2 * image1 * image2, 1 - 2 * (1 - image1) * (1 - image2))
    if mode == "soft_light":
        g = torch.where(image1 <= 0.25, ((16 * image1 - 12) * image1 + 4) * image1, torch.sqrt(image1))
        return torch.where(image2 <= 0.5, image1 - (1 - 2 * image2) * image1 * (1 - image1),
                           image1 + (2 * image2 - 1) * (g - image1))
    if mode == "difference":
        return image1 - image2
    raise ValueError(f"unknown blend mode {mode!r}; use one of {', '.join(BLEND_MODES)}")


def match_channels(image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the image with fewer channels with opaque (1.0) channels, e.g. RGB next to RGBA."""
    c1, c2 = image1.shape[-1], image2.shape[-1]
    if c1 < c2:
        image1 = F.pad(image1, (0, c2 - c1), value=1.0)
    elif c2 < c1:
        image2 = F.pad(image2, (0, c1 - c2), value=1.0)
    return image1, image2


# -- nodes ------------------------------------------------------------------------------------------

class EmptyImage(Node):
    """A batch of images filled with one colour (0xRRGGBB)."""

    category = "image"
    width = Input(INT, default=512, min=1, max=MAX_RESOLUTION, step=1)
    height = Input(INT, default=512, min=1, max=MAX_RESOLUTION, step=1)
    batch_size = Input(INT, default=1, min=1, max=4096)
    color = Input(INT, default=0, min=0, max=0xFFFFFF, step=1, display="color")
    outputs = (Output(IMAGE),)

    def execute(self, width: int, height: int, batch_size: int = 1, color: int = 0) -> tuple:
        rgb = [((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
        fill = torch.tensor(rgb, dtype=torch.float32)
        return (fill.expand(batch_size, height, width, 3).contiguous(),)


class ImageInvert(Node):
    """Inverts every channel: 1 − x."""

    category = "image"
    display_name = "Invert Image"
    image = Input(IMAGE)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor) -> tuple:
        # 1 − image, without the Python wrapper of Tensor.__rsub__; the one as a 0-dim tensor, which takes
        # part in type promotion as the number would, spares torch wrapping and converting a number each
        # call (~2 µs of ~5 for a 64 px image)
        return (torch.rsub(image, _ONE),)


#: ImageInvert's constant (read only)
_ONE = torch.tensor(1.0)


class ImageFlip(Node):
    """Mirrors images: about the x axis (upside down) or the y axis (left-right)."""

    category = "image/transform"
    image = Input(IMAGE)
    flip_method = Input(COMBO, choices=FLIP_METHODS)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, flip_method: str) -> tuple:
        if flip_method.startswith("x"):
            return (torch.flip(image, dims=[1]),)
        if flip_method.startswith("y"):
            return (torch.flip(image, dims=[2]),)
        return (image,)


class ImageRotate(Node):
    """Rotates images clockwise by a multiple of 90 degrees."""

    category = "image/transform"
    image = Input(IMAGE)
    rotation = Input(COMBO, choices=ROTATIONS)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, rotation: str) -> tuple:
        turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        return (torch.rot90(image, k=turns, dims=[2, 1]),)


class ImageBlend(Node):
    """Blends image2 over image1 with a blend mode; image2 is resized to image1 when sizes differ."""

    category = "image/postprocessing"
    image1 = Input(IMAGE)
    image2 = Input(IMAGE)
    blend_factor = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01)
    blend_mode = Input(COMBO, choices=BLEND_MODES)
    outputs = (Output(IMAGE),)

    def execute(self, image1: torch.Tensor, image2: torch.Tensor, blend_factor: float,
                blend_mode: str) -> tuple:
        image2 = image2.to(image1.device)
        image1, image2 = match_channels(image1, image2)
        if image1.shape[1:3] != image2.shape[1:3]:
            image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
        mixed = image1 * (1 - blend_factor) + blend(image1, image2, blend_mode) * blend_factor
        return (torch.clamp(mixed, 0, 1),)


class ImageBlur(Node):
    """Gaussian blur with a (2·radius+1)² kernel."""

    category = "image/postprocessing"
    image = Input(IMAGE)
    blur_radius = Input(INT, default=1, min=1, max=31, step=1)
    sigma = Input(FLOAT, default=1.0, min=0.1, max=10.0, step=0.1)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, blur_radius: int, sigma: float) -> tuple:
        if blur_radius == 0:
            return (image,)
        kernel = gaussian_kernel(blur_radius * 2 + 1, sigma, device=image.device)
        return (convolve_image(image, kernel, blur_radius),)


class ImageSharpen(Node):
    """Unsharp-mask style sharpening; alpha sets the strength."""

    category = "image/postprocessing"
    image = Input(IMAGE)
    sharpen_radius = Input(INT, default=1, min=1, max=31, step=1)
    sigma = Input(FLOAT, default=1.0, min=0.1, max=10.0, step=0.01)
    alpha = Input(FLOAT, default=1.0, min=0.0, max=5.0, step=0.01)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, sharpen_radius: int, sigma: float, alpha: float) -> tuple:
        if sharpen_radius == 0:
            return (image,)
        size = sharpen_radius * 2 + 1
        kernel = gaussian_kernel(size, sigma, device=image.device) * -(alpha * 10)
        centre = size // 2
        kernel[centre, centre] = kernel[centre, centre] - kernel.sum() + 1.0
        return (torch.clamp(convolve_image(image, kernel, sharpen_radius), 0, 1),)


class ImageAddNoise(Node):
    """Adds seeded Gaussian noise (strength · N(0,1)) and clamps to 0..1."""

    category = "image"
    image = Input(IMAGE)
    seed = Input(INT, default=0, min=0, max=UINT64_MAX, control_after_generate=True,
                 tooltip="The random seed used for creating the noise.")
    strength = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, seed: int, strength: float) -> tuple:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(image.size(), generator=generator, device="cpu").to(image)
        return (torch.clamp(image + strength * noise, 0.0, 1.0),)


def target_size(height: int, width: int, want_w: int, want_h: int) -> tuple[int, int]:
    """ImageScale's size rule: a 0 side follows the aspect ratio of the other."""
    if want_w == 0:
        want_w = max(1, round(width * want_h / height))
    elif want_h == 0:
        want_h = max(1, round(height * want_w / width))
    return want_w, want_h


class ImageScale(Node):
    """Resizes images to width×height; one side 0 keeps the aspect ratio, both 0 keeps the size."""

    category = "image/upscaling"
    display_name = "Upscale Image"
    image = Input(IMAGE)
    upscale_method = Input(COMBO, choices=UPSCALE_METHODS)
    width = Input(INT, default=512, min=0, max=MAX_RESOLUTION, step=1)
    height = Input(INT, default=512, min=0, max=MAX_RESOLUTION, step=1)
    crop = Input(COMBO, choices=CROP_METHODS)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, upscale_method: str, width: int, height: int,
                crop: str) -> tuple:
        if width == 0 and height == 0:
            return (image,)
        width, height = target_size(image.shape[1], image.shape[2], width, height)
        return (resize_image(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    """Resizes images by a factor (each side rounded)."""

    category = "image/upscaling"
    display_name = "Upscale Image By"
    image = Input(IMAGE)
    upscale_method = Input(COMBO, choices=UPSCALE_METHODS)
    scale_by = Input(FLOAT, default=1.0, min=0.01, max=8.0, step=0.01)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, upscale_method: str, scale_by: float) -> tuple:
        width = max(1, round(image.shape[2] * scale_by))
        height = max(1, round(image.shape[1] * scale_by))
        return (resize_image(image, width, height, upscale_method, "disabled"),)


class ImageCrop(Node):
    """Crops a width×height region at (x, y); x and y are clamped inside the image."""

    category = "image/transform"
    display_name = "Image Crop"
    image = Input(IMAGE)
    width = Input(INT, default=512, min=1, max=MAX_RESOLUTION, step=1)
    height = Input(INT, default=512, min=1, max=MAX_RESOLUTION, step=1)
    x = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    y = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, width: int, height: int, x: int, y: int) -> tuple:
        x = min(x, image.shape[2] - 1)
        y = min(y, image.shape[1] - 1)
        return (image[:, y:y + height, x:x + width, :],)


class ImageBatch(Node):
    """Joins two image batches; image2 is resized (bilinear, centre crop) to image1's size."""

    category = "image"
    display_name = "Batch Images"
    image1 = Input(IMAGE)
    image2 = Input(IMAGE)
    outputs = (Output(IMAGE),)

    def execute(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple:
        image1, image2 = match_channels(image1, image2.to(image1.device))
        if image1.shape[1:] != image2.shape[1:]:
            image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (torch.cat((image1, image2), dim=0),)


class GetImageSize(Node):
    """Returns the width, height and batch size of an image batch."""

    category = "image"
    display_name = "Get Image Size"
    hidden = ("unique_id",)
    image = Input(IMAGE)
    outputs = (Output(INT, name="width"), Output(INT, name="height"), Output(INT, name="batch_size"))

    def execute(self, image: torch.Tensor, unique_id: str | None = None) -> NodeResult:
        batch, height, width = int(image.shape[0]), int(image.shape[1]), int(image.shape[2])
        text = f"width: {width}, height: {height}\n batch size: {batch}"
        return NodeResult(outputs=(width, height, batch), ui={"text": [text]})
