"""Latent arithmetic and layout nodes in ComfyUI's names: composite, blend, add/subtract/multiply,
interpolate, batch, concat, crop/flip/rotate, cut (to batch), and the latent operations
(``LATENT_OPERATION``: a function of a latent) applied directly or inside classifier-free guidance.

A LATENT is ``{"samples": [B,C,(T,)h,w], …}``; every node copies the dict and replaces ``samples``, so
``noise_mask``/``batch_index`` pass through as in ComfyUI. Pixel positions (``x``, ``y``, ``width``,
``height``, ``feather``) are image pixels, 1/8 of them latent cells (ComfyUI's fixed factor).

Stricter than ComfyUI, which silently repeats or truncates batches to fit: a second latent's batch must
equal the first's or be one (then it serves every item); latents of different channel counts are an
error; a position outside the destination is an error (ComfyUI pastes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import LATENT, MASK, MODEL

from nodegraph_nodes.image.operations import FLIP_METHODS, ROTATIONS, common_upscale, gaussian_kernel
from nodegraph_nodes.sampling.model import require_sampling_model

MAX_RESOLUTION = 16384
#: ComfyUI's socket type for a latent operation
LATENT_OPERATION = "LATENT_OPERATION"


# -- helpers ----------------------------------------------------------------------------------------

def samples_of(latent: dict, name: str) -> torch.Tensor:
    """``latent["samples"]``, or an error naming the input."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"input '{name}' is not a LATENT (a dict with a 'samples' tensor)")
    samples = latent["samples"]
    if samples.ndim < 4:
        raise ValueError(f"input '{name}' has samples of shape {tuple(samples.shape)}; a LATENT is "
                         "[batch, channels, (frames,) height, width]")
    return samples


def fit_batch(tensor: torch.Tensor, size: int, name: str, to_name: str) -> torch.Tensor:
    """``tensor`` with a batch of ``size``: already so, or one item repeated."""
    if tensor.shape[0] == size:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(size, *tensor.shape[1:])
    raise ValueError(f"input '{name}' has a batch of {tensor.shape[0]} and '{to_name}' a batch of {size}; "
                     "give equal batches, or a batch of one to use for every item")


def same_channels(a: torch.Tensor, name_a: str, b: torch.Tensor, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"input '{name_a}' has {a.shape[1]} channels and '{name_b}' {b.shape[1]}; latents "
                         "of different models cannot be combined")


def resize_like(target: torch.Tensor, latent: torch.Tensor, method: str = "bilinear") -> torch.Tensor:
    """``latent`` scaled (centre crop to the aspect first) to ``target``'s spatial size (ComfyUI's
    reshape_latent_to)."""
    if latent.shape[2:] == target.shape[2:]:
        return latent
    if latent.ndim != 4:
        raise ValueError(f"latents of shapes {tuple(target.shape)} and {tuple(latent.shape)} differ in frames "
                         "or size; only image latents are resized to match")
    return common_upscale(latent, target.shape[-1], target.shape[-2], method, "center")


def second_like(s1: torch.Tensor, s2: torch.Tensor, names: tuple[str, str], method: str = "bilinear") -> torch.Tensor:
    """``s2`` shaped like ``s1``: same channels, resized, batch equal or one repeated."""
    same_channels(s1, names[0], s2, names[1])
    return fit_batch(resize_like(s1, s2, method), s1.shape[0], names[1], names[0])


def sample_pair(samples1: dict, samples2: dict, method: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs ``samples1`` and ``samples2``'s tensors, the second shaped like the first (:func:`second_like`)."""
    s1 = samples_of(samples1, "samples1")
    return s1, second_like(s1, samples_of(samples2, "samples2"), ("samples1", "samples2"), method)


def with_samples(latent: dict, samples: torch.Tensor) -> dict:
    out = dict(latent)
    out["samples"] = samples
    return out


def axis(samples: torch.Tensor, dim: str) -> int:
    """The tensor axis of ComfyUI's ``dim`` name: x = width, y = height, t = frames (3rd from the end)."""
    return samples.ndim - {"x": 1, "y": 2, "t": 3}[dim.strip("-")]


@dataclass(frozen=True)
class LatentOperation:
    """A ``LATENT_OPERATION`` value: ``op(latent=tensor)`` returns the transformed tensor (ComfyUI calls
    operations with the keyword ``latent``)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, latent: torch.Tensor, **_: object) -> torch.Tensor:
        return self.fn(latent)


# -- composite / blend ------------------------------------------------------------------------------

class LatentComposite(Node):
    """Pastes samples_from into samples_to with its top-left corner at (x, y) pixels, blending a
    feather-wide border (pixels) linearly where the pasted latent does not touch the edge. Errors
    when x, y lie outside samples_to (ComfyUI pastes nothing) or when batches or channels differ
    (batch one is used for every item)."""

    category = "latent"
    display_name = "Latent Composite"
    samples_to = Input(LATENT)
    samples_from = Input(LATENT)
    x = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    y = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    feather = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    outputs = (Output(LATENT),)

    def execute(self, samples_to: dict, samples_from: dict, x: int, y: int, feather: int = 0) -> tuple:
        dest = samples_of(samples_to, "samples_to")
        src = samples_of(samples_from, "samples_from")
        same_channels(dest, "samples_to", src, "samples_from")
        x, y, feather = x // 8, y // 8, feather // 8
        height, width = dest.shape[-2:]
        if x >= width or y >= height:
            raise ValueError(f"inputs 'x', 'y' are ({x * 8}, {y * 8}) pixels, outside samples_to's "
                             f"{width * 8}×{height * 8}; use x < {width * 8} and y < {height * 8}")
        src = fit_batch(src, dest.shape[0], "samples_from", "samples_to")[..., :height - y, :width - x]
        h, w = src.shape[-2:]
        out = dest.clone()
        region = out[..., y:y + h, x:x + w]
        if feather == 0:
            region[...] = src
        else:
            mask = torch.ones_like(src)
            for t in range(feather):
                ramp = (1.0 / feather) * (t + 1)
                if y != 0:
                    mask[..., t:t + 1, :] *= ramp
                if y + h < height:
                    mask[..., h - 1 - t:h - t, :] *= ramp
                if x != 0:
                    mask[..., :, t:t + 1] *= ramp
                if x + w < width:
                    mask[..., :, w - 1 - t:w - t] *= ramp
            region[...] = src * mask + region * (1.0 - mask)
        return (with_samples(samples_to, out),)


class LatentCompositeMasked(Node):
    """Pastes source into destination at (x, y) pixels through the optional mask (1 = source; resized
    bilinearly to the source). resize_source first scales the source to the destination's size.
    Errors when x, y lie outside the destination or when batches or channels differ (batch one is used
    for every item)."""

    category = "latent"
    destination = Input(LATENT)
    source = Input(LATENT)
    x = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    y = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    resize_source = Input(BOOLEAN, default=False)
    mask = Input(MASK, optional=True)
    outputs = (Output(LATENT),)

    def execute(self, destination: dict, source: dict, x: int, y: int, resize_source: bool = False,
                mask: torch.Tensor | None = None) -> tuple:
        dest = samples_of(destination, "destination")
        src = samples_of(source, "source").to(dest.device, dest.dtype)
        same_channels(dest, "destination", src, "source")
        if resize_source and src.shape[-2:] != dest.shape[-2:]:
            src = F.interpolate(src, size=dest.shape[-2:], mode="bilinear")
        src = fit_batch(src, dest.shape[0], "source", "destination")
        left, top = x // 8, y // 8
        height, width = dest.shape[-2:]
        if left >= width or top >= height:
            raise ValueError(f"inputs 'x', 'y' are ({x}, {y}) pixels, outside the destination's "
                             f"{width * 8}×{height * 8}; use x < {width * 8} and y < {height * 8}")
        if mask is None:
            weight = torch.ones_like(src)
        else:
            weight = mask.to(dest.device, dest.dtype).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
            weight = F.interpolate(weight, size=src.shape[-2:], mode="bilinear")
            weight = fit_batch(weight, src.shape[0], "mask", "source")
        h, w = min(src.shape[-2], height - top), min(src.shape[-1], width - left)
        out = dest.clone()
        region = out[..., top:top + h, left:left + w]
        weight = weight[..., :h, :w]
        region[...] = weight * src[..., :h, :w] + (1.0 - weight) * region
        return (with_samples(destination, out),)


class LatentBlend(Node):
    """samples1 · blend_factor + samples2 · (1 − blend_factor); samples2 is scaled (bicubic, centre crop)
    to samples1's size. Batches must be equal or one."""

    category = "_for_testing"
    display_name = "Latent Blend"
    samples1 = Input(LATENT)
    samples2 = Input(LATENT)
    blend_factor = Input(FLOAT, default=0.5, min=0, max=1, step=0.01)
    outputs = (Output(LATENT),)

    def execute(self, samples1: dict, samples2: dict, blend_factor: float) -> tuple:
        s1, s2 = sample_pair(samples1, samples2, "bicubic")
        return (with_samples(samples1, s1 * blend_factor + s2 * (1 - blend_factor)),)


# -- arithmetic -------------------------------------------------------------------------------------

class _LatentPairOp(Node):
    """Base of LatentAdd and LatentSubtract: ``combine`` of samples1 and samples2 (see :func:`sample_pair`)."""

    abstract = True
    category = "latent/advanced"
    samples1 = Input(LATENT)
    samples2 = Input(LATENT)
    outputs = (Output(LATENT),)

    def combine(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def execute(self, samples1: dict, samples2: dict) -> tuple:
        return (with_samples(samples1, self.combine(*sample_pair(samples1, samples2))),)


class LatentAdd(_LatentPairOp):
    """samples1 + samples2 (samples2 scaled to samples1's size; batches equal or one)."""

    def combine(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        return s1 + s2


class LatentSubtract(_LatentPairOp):
    """samples1 − samples2 (samples2 scaled to samples1's size; batches equal or one)."""

    def combine(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        return s1 - s2


class LatentMultiply(Node):
    """samples × multiplier."""

    category = "latent/advanced"
    samples = Input(LATENT)
    multiplier = Input(FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, multiplier: float) -> tuple:
        return (with_samples(samples, samples_of(samples, "samples") * multiplier),)


def _unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.nan_to_num(x / norm), norm


class LatentInterpolate(Node):
    """Interpolates direction and length of each cell's channel vector separately: ratio 1 gives
    samples1, 0 gives samples2 (samples2 scaled to samples1's size; batches equal or one)."""

    category = "latent/advanced"
    samples1 = Input(LATENT)
    samples2 = Input(LATENT)
    ratio = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)
    outputs = (Output(LATENT),)

    def execute(self, samples1: dict, samples2: dict, ratio: float) -> tuple:
        s1, s2 = sample_pair(samples1, samples2)
        u1, m1 = _unit(s1)
        u2, m2 = _unit(s2)
        direction, _ = _unit(u1 * ratio + u2 * (1.0 - ratio))
        return (with_samples(samples1, direction * (m1 * ratio + m2 * (1.0 - ratio))),)


# -- batches and layout -----------------------------------------------------------------------------

class LatentBatch(Node):
    """samples1's items followed by samples2's (scaled to samples1's size); batch_index lists are joined
    (each side's defaults to 0…n−1, so per-item noise repeats as in ComfyUI)."""

    category = "latent/batch"
    samples1 = Input(LATENT)
    samples2 = Input(LATENT)
    outputs = (Output(LATENT),)

    def execute(self, samples1: dict, samples2: dict) -> tuple:
        s1 = samples_of(samples1, "samples1")
        s2 = samples_of(samples2, "samples2")
        same_channels(s1, "samples1", s2, "samples2")
        s2 = resize_like(s1, s2)
        out = with_samples(samples1, torch.cat((s1, s2.to(s1.dtype)), dim=0))
        out["batch_index"] = list(samples1.get("batch_index", range(s1.shape[0]))) + \
            list(samples2.get("batch_index", range(s2.shape[0])))
        return (out,)


class LatentConcat(Node):
    """Joins samples2 to samples1 along width (x), height (y) or frames (t); a leading minus puts
    samples2 first. Batches equal or one."""

    category = "latent/advanced"
    samples1 = Input(LATENT)
    samples2 = Input(LATENT)
    dim = Input(COMBO, choices=["x", "-x", "y", "-y", "t", "-t"])
    outputs = (Output(LATENT),)

    def execute(self, samples1: dict, samples2: dict, dim: str) -> tuple:
        s1 = samples_of(samples1, "samples1")
        s2 = fit_batch(samples_of(samples2, "samples2"), s1.shape[0], "samples2", "samples1")
        same_channels(s1, "samples1", s2, "samples2")
        parts = (s2, s1) if dim.startswith("-") else (s1, s2)
        try:
            joined = torch.cat(parts, dim=axis(s1, dim) - s1.ndim)
        except RuntimeError as exc:
            raise ValueError(f"samples1 {tuple(s1.shape)} and samples2 {tuple(s2.shape)} cannot be joined "
                             f"along {dim.strip('-')}: the other sizes must match") from exc
        return (with_samples(samples1, joined),)


class LatentCrop(Node):
    """The width×height pixel window at (x, y) (kept at least 64 pixels inside the latent)."""

    category = "latent/transform"
    display_name = "Crop Latent"
    samples = Input(LATENT)
    width = Input(INT, default=512, min=64, max=MAX_RESOLUTION, step=8)
    height = Input(INT, default=512, min=64, max=MAX_RESOLUTION, step=8)
    x = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    y = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, width: int, height: int, x: int, y: int) -> tuple:
        s = samples_of(samples, "samples")
        x = max(0, min(x // 8, s.shape[-1] - 8))
        y = max(0, min(y // 8, s.shape[-2] - 8))
        return (with_samples(samples, s[..., y:y + height // 8, x:x + width // 8]),)


class LatentFlip(Node):
    """Mirrors the latent: x-axis flips it upside down, y-axis left to right."""

    category = "latent/transform"
    display_name = "Flip Latent"
    samples = Input(LATENT)
    flip_method = Input(COMBO, choices=FLIP_METHODS)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, flip_method: str) -> tuple:
        s = samples_of(samples, "samples")
        return (with_samples(samples, torch.flip(s, dims=[-2 if flip_method.startswith("x") else -1])),)


class LatentRotate(Node):
    """Rotates the latent clockwise by a quarter turn multiple."""

    category = "latent/transform"
    display_name = "Rotate Latent"
    samples = Input(LATENT)
    rotation = Input(COMBO, choices=ROTATIONS)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, rotation: str) -> tuple:
        turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        return (with_samples(samples, torch.rot90(samples_of(samples, "samples"), k=turns, dims=[-1, -2])),)


class LatentCut(Node):
    """``amount`` cells (frames) from ``index`` along x, y or t; a negative index counts from the end.
    Both are clamped to the latent, as in ComfyUI."""

    category = "latent/advanced"
    samples = Input(LATENT)
    dim = Input(COMBO, choices=["x", "y", "t"])
    index = Input(INT, default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1)
    amount = Input(INT, default=1, min=1, max=MAX_RESOLUTION, step=1)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, dim: str, index: int, amount: int) -> tuple:
        s = samples_of(samples, "samples")
        d = axis(s, dim)
        size = s.shape[d]
        if index >= 0:
            index = min(index, size - 1)
            amount = min(size - index, amount)
        else:
            index = max(index, -size)
            amount = min(-index, amount)
        return (with_samples(samples, torch.narrow(s, d, index, amount)),)


class LatentCutToBatch(Node):
    """Cuts the latent along t, x or y into slices of slice_size and stacks them as batch items (a
    remainder shorter than slice_size is dropped). An image latent's t is its channel axis, which is
    not cut: it passes unchanged, as in ComfyUI."""

    category = "latent/advanced"
    samples = Input(LATENT)
    dim = Input(COMBO, choices=["t", "x", "y"])
    slice_size = Input(INT, default=1, min=1, max=MAX_RESOLUTION, step=1)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, dim: str, slice_size: int) -> tuple:
        s = samples_of(samples, "samples")
        d = axis(s, dim)
        if d < 2:
            return (samples,)
        moved = s.movedim(d, 1)
        size = moved.shape[1]
        slice_size = min(slice_size, size)
        moved = moved[:, :size // slice_size * slice_size]
        cut = moved.reshape(-1, slice_size, *moved.shape[2:]).movedim(1, d)
        return (with_samples(samples, cut),)


class LatentBatchSeedBehavior(Node):
    """random: drop batch_index (each item its own noise); fixed: every item takes the first item's
    index (the same noise for all)."""

    category = "latent/advanced"
    samples = Input(LATENT)
    seed_behavior = Input(COMBO, choices=["random", "fixed"], default="fixed")
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, seed_behavior: str) -> tuple:
        s = samples_of(samples, "samples")
        out = dict(samples)
        if seed_behavior == "random":
            out.pop("batch_index", None)
        else:
            out["batch_index"] = [list(samples.get("batch_index", [0]))[0]] * s.shape[0]
        return (out,)


# -- latent operations ------------------------------------------------------------------------------

def tonemap_reinhard(latent: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Reinhard tone mapping of each cell's channel-vector length, the white point at
    (mean + 5·std of the lengths) · multiplier."""
    magnitude = (torch.linalg.vector_norm(latent, dim=1) + 1e-10)[:, None]
    normalized = latent / magnitude
    dims = list(range(1, magnitude.ndim))
    top = (torch.std(magnitude, dim=dims, keepdim=True) * 5 + torch.mean(magnitude, dim=dims, keepdim=True)) \
        * multiplier
    scaled = magnitude / top
    return normalized * (scaled / (scaled + 1.0)) * top


def sharpen(latent: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """Unsharp-style sharpening of the latent's direction field (lengths kept)."""
    luminance = (torch.linalg.vector_norm(latent, dim=1) + 1e-6)[:, None]
    normalized = latent / luminance
    channels = latent.shape[1]
    size = radius * 2 + 1
    kernel = gaussian_kernel(size, sigma, device=luminance.device) * (alpha * -10)
    center = size // 2
    kernel[center, center] = kernel[center, center] - kernel.sum() + 1.0
    padded = F.pad(normalized, (radius,) * 4, "reflect")
    out = F.conv2d(padded, kernel.repeat(channels, 1, 1).unsqueeze(1).to(latent.dtype), padding=size // 2,
                   groups=channels)[:, :, radius:-radius, radius:-radius]
    return luminance * out


class LatentOperationTonemapReinhard(Node):
    """A latent operation: Reinhard tone mapping of the latent's per-cell vector lengths (use it in
    guidance with LatentApplyOperationCFG to tame high cfg)."""

    category = "latent/advanced/operations"
    experimental = True
    multiplier = Input(FLOAT, default=1.0, min=0.0, max=100.0, step=0.01)
    outputs = (Output(LATENT_OPERATION),)

    def execute(self, multiplier: float) -> tuple:
        return (LatentOperation("tonemap_reinhard", lambda latent: tonemap_reinhard(latent, multiplier)),)


class LatentOperationSharpen(Node):
    """A latent operation: sharpens the latent's direction field with a Gaussian of the given radius."""

    category = "latent/advanced/operations"
    experimental = True
    sharpen_radius = Input(INT, default=9, min=1, max=31, step=1)
    sigma = Input(FLOAT, default=1.0, min=0.1, max=10.0, step=0.1)
    alpha = Input(FLOAT, default=0.1, min=0.0, max=5.0, step=0.01)
    outputs = (Output(LATENT_OPERATION),)

    def execute(self, sharpen_radius: int, sigma: float, alpha: float) -> tuple:
        return (LatentOperation("sharpen", lambda latent: sharpen(latent, sharpen_radius, sigma, alpha)),)


class LatentApplyOperation(Node):
    """Applies a latent operation to the samples."""

    category = "latent/advanced/operations"
    experimental = True
    samples = Input(LATENT)
    operation = Input(LATENT_OPERATION)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, operation: LatentOperation) -> tuple:
        return (with_samples(samples, operation(latent=samples_of(samples, "samples"))),)


@dataclass(frozen=True)
class _OperationInGuidance:
    """The pre-CFG patch: the operation on (cond − uncond), uncond added back (on cond alone when only one
    prediction is given), while sigma lies in [sigma_end, sigma_start]."""

    operation: LatentOperation
    sigma_start: float
    sigma_end: float

    def __call__(self, args: dict) -> list:
        out = list(args["conds_out"])
        sigma = float(args["sigma"].reshape(-1)[0])
        if sigma > self.sigma_start or sigma < self.sigma_end:
            return out
        if len(out) == 2:
            out[0] = self.operation(latent=out[0] - out[1]) + out[1]
        else:
            out[0] = self.operation(latent=out[0])
        return out


class LatentApplyOperationCFG(Node):
    """Patches the model so that the operation shapes the guidance direction (positive − negative
    prediction) at every step between start_percent and end_percent of the schedule."""

    category = "latent/advanced/operations"
    experimental = True
    model = Input(MODEL)
    operation = Input(LATENT_OPERATION)
    start_percent = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.001, optional=True,
                          tooltip="Start applying the operation at this fraction of the model's denoising "
                                  "schedule. 0 is the beginning.")
    end_percent = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.001, optional=True,
                        tooltip="Stop applying the operation at this fraction of the model's denoising "
                                "schedule. 1 is the end.")
    outputs = (Output(MODEL),)

    def execute(self, model, operation: LatentOperation, start_percent: float = 0.0,
                end_percent: float = 1.0) -> tuple:
        model = require_sampling_model(model, "LatentApplyOperationCFG.model")
        ms = model.model_sampling
        patch = _OperationInGuidance(operation, ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent))
        return (model.with_sampling_patches(model.sampling_patches.with_pre_cfg(patch)),)


__all__ = ["LatentOperation", "LATENT_OPERATION", "tonemap_reinhard", "sharpen"]
