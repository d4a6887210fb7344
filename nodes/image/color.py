"""ComfyUI's ColorTransfer: match the colours of images to a reference (Reinhard or MKL in Lab space, or
per-channel histogram matching), plus the sRGB ↔ CIE Lab conversion it needs.

Names, inputs, defaults and outputs are ComfyUI's. ``source_stats`` is a DynamicCombo: the chosen
option is ``source_stats`` and its one field is the flat input ``source_stats.target_index`` (declared
required with a default, right after ``source_stats``, so the canvas lays it out where ComfyUI's does). The Lab
conversion is kornia's (D65 white, sRGB transfer curve, linear RGB clipped to 0..1 on the way back),
written here so the node needs no kornia.

Stricter than ComfyUI: Lab methods need 3-channel images; target and reference must have the same
channel count; with ``per_frame`` the reference batch must be one image or as long as the target
(ComfyUI reuses its last image); ``target_index`` past the batch is an error (ComfyUI clamps it).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import IMAGE

from .checks import choice, float_in_range, image_input, int_in_range, node_error

METHODS = ["reinhard_lab", "mkl_lab", "histogram"]
SOURCE_STATS = ["per_frame", "uniform", "target_frame"]
EPS = 1e-6
BINS = 256

_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_XYZ_TO_RGB = torch.tensor([[3.2404813432005266, -1.5371515162713185, -0.4985363261688878],
                            [-0.9692549499965682, 1.8759900014898907, 0.0415559265582928],
                            [0.0556466391351772, -0.2040413383665112, 1.0573110696453443]])
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])


def _mix(matrix: torch.Tensor, planar: torch.Tensor) -> torch.Tensor:
    """Apply a 3×3 colour matrix to ``[N,3,H,W]``."""
    return torch.einsum("ij,njhw->nihw", matrix.to(planar), planar)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``[N,3,H,W]`` in 0..1 → CIE Lab (L 0..100)."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    xyz = _mix(_RGB_TO_XYZ, linear) / _WHITE_D65.to(rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856).pow(1 / 3), 7.787 * xyz + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab ``[N,3,H,W]`` → sRGB, linear RGB clipped to 0..1 before the transfer curve."""
    fy = (lab[:, 0] + 16.0) / 116.0
    fx = lab[:, 1] / 500.0 + fy
    fz = (fy - lab[:, 2] / 200.0).clamp(min=0.0)
    f = torch.stack([fx, fy, fz], dim=1)
    xyz = torch.where(f > 0.2068966, f.pow(3.0), (f - 4.0 / 29.0) / 7.787) * _WHITE_D65.to(lab).view(1, 3, 1, 1)
    linear = _mix(_XYZ_TO_RGB, xyz).clamp(0.0, 1.0)
    return torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308).pow(1 / 2.4) - 0.055,
                       12.92 * linear)


def _lab_frame(images: torch.Tensor, index: int) -> torch.Tensor:
    """Frame ``index`` of ``[B,H,W,3]`` as Lab ``[3, H·W]``."""
    return rgb_to_lab(images[index:index + 1].float().permute(0, 3, 1, 2)).reshape(3, -1)


def frame_stats(flat: torch.Tensor, reinhard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[C,1]`` and, for Reinhard, the standard deviation ``[C,1]``; for MKL the covariance ``[C,C]``."""
    mean = flat.mean(dim=-1, keepdim=True)
    if reinhard:
        return mean, flat.std(dim=-1, keepdim=True, unbiased=False).clamp_min(EPS)
    centred = flat - mean
    return mean, centred @ centred.T / flat.shape[-1]


def pooled_stats(images: torch.Tensor, reinhard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`frame_stats` pooled over every frame (mean of means, then mean spread around it)."""
    frames = [_lab_frame(images, i) for i in range(images.shape[0])]
    mean = sum(frame.mean(dim=-1, keepdim=True) for frame in frames) / len(frames)
    spread = []
    for frame in frames:
        centred = frame - mean
        spread.append((centred * centred).mean(dim=-1, keepdim=True) if reinhard
                      else centred @ centred.T / frame.shape[-1])
    pooled = sum(spread) / len(frames)
    return (mean, pooled.sqrt().clamp_min(EPS)) if reinhard else (mean, pooled)


def mkl_matrix(cov_source: torch.Tensor, cov_ref: torch.Tensor) -> torch.Tensor:
    """The Monge-Kantorovich linear map taking the source covariance to the reference's."""
    values_s, vectors_s = torch.linalg.eigh(cov_source)
    root_s = values_s.clamp_min(0).sqrt().clamp_min(EPS)
    scaled = vectors_s * root_s.unsqueeze(0)
    values_m, vectors_m = torch.linalg.eigh(scaled.T @ cov_ref @ scaled)
    middle = (vectors_m * values_m.clamp_min(0).sqrt().unsqueeze(0)) @ vectors_m.T
    inverse = vectors_s * (1.0 / root_s).unsqueeze(0)
    return inverse @ middle @ inverse.T


def _bins(flat: torch.Tensor) -> torch.Tensor:
    return (flat * (BINS - 1)).long().clamp(0, BINS - 1)


def cdf(flat: torch.Tensor) -> torch.Tensor:
    """Per-channel cumulative histogram (256 bins) of ``[C, N]`` values in 0..1, normalised to 1."""
    hist = torch.zeros(flat.shape[0], BINS, dtype=torch.float32)
    hist.scatter_add_(1, _bins(flat), torch.ones_like(flat, dtype=torch.float32))
    total = hist.cumsum(1)
    return total / total[:, -1:]


def histogram_lut(source_cdf: torch.Tensor, ref_cdf: torch.Tensor) -> torch.Tensor:
    """Per-channel lookup table ``[C,256]`` mapping source bins to reference values in 0..1."""
    return torch.searchsorted(ref_cdf, source_cdf).clamp_max(BINS - 1).float() / (BINS - 1)


def planar_frames(images: torch.Tensor) -> torch.Tensor:
    """``[B,H,W,C]`` as ``[C, B·H·W]``."""
    return images.float().permute(3, 0, 1, 2).reshape(images.shape[-1], -1)


class ColorTransfer(Node):
    """Match the colors of one image to another using various algorithms. Stricter than ComfyUI: Lab
    methods need RGB images, target and reference channels must agree, a per_frame reference batch must be
    one image or as long as the target, and target_index must lie in the batch."""

    category = "image/postprocessing"
    dynamic_combos = {"source_stats": {"per_frame": (), "uniform": (), "target_frame": ("source_stats.target_index",)}}
    image_target = Input(IMAGE, tooltip="Image(s) to apply the color transform to.")
    image_ref = Input(IMAGE, optional=True,
                      tooltip="Reference image(s) to match colors to. If not provided, processing is skipped")
    method = Input(COMBO, choices=METHODS)
    source_stats = Input(COMBO, choices=SOURCE_STATS,
                         tooltip="per_frame: each frame matched to image_ref individually. uniform: pool stats "
                                 "across all source frames as baseline, match to image_ref. target_frame: use "
                                 "one chosen frame as the baseline for the transform to image_ref, applied "
                                 "uniformly to all frames (preserves relative differences)")
    # required with a default (filled in when absent), declared before strength: ComfyUI's canvas order
    vars().update({"source_stats.target_index": Input(
        INT, default=0, min=0, max=10000,
        tooltip="Frame index used as the source baseline for computing the transform to image_ref "
                "(source_stats target_frame only)")})
    strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    outputs = (Output(IMAGE, "image"),)

    def execute(self, image_target: torch.Tensor, method: str, source_stats: str, strength: float = 1.0,
                image_ref: torch.Tensor | None = None, **fields: Any) -> tuple:
        node = "ColorTransfer"
        target = image_input(node, "image_target", image_target)
        method = choice(node, "method", method, METHODS)
        mode = choice(node, "source_stats", source_stats, SOURCE_STATS)
        strength = float_in_range(node, "strength", strength, 0.0, 10.0)
        index = fields.get("source_stats.target_index")
        index = int_in_range(node, "source_stats.target_index", 0 if index is None else index, 0, 10000)
        if strength == 0 or image_ref is None:
            return (target,)
        ref = image_input(node, "image_ref", image_ref)
        batch, channels = target.shape[0], target.shape[-1]
        if ref.shape[-1] != channels:
            raise node_error(node, f"input 'image_ref' has {ref.shape[-1]} channel(s) and 'image_target' "
                                   f"{channels}; give both the same")
        if method != "histogram" and channels != 3:
            raise node_error(node, f"method {method!r} works in Lab colour and needs RGB images; "
                                   f"'image_target' has {channels} channel(s)")
        if mode == "target_frame" and index >= batch:
            raise node_error(node, f"input 'source_stats.target_index' is {index}, outside the batch of {batch}")
        if mode == "per_frame" and ref.shape[0] not in (1, batch):
            raise node_error(node, f"input 'image_ref' has a batch of {ref.shape[0]} and 'image_target' "
                                   f"{batch}; with per_frame give one reference or one per frame")
        if method == "histogram":
            out = self.histogram(target, ref, mode, index, strength)
        else:
            out = self.lab(target, ref, mode, index, strength, reinhard=method == "reinhard_lab")
        return (out.clamp(0, 1).to(target.dtype),)

    @staticmethod
    def histogram(target: torch.Tensor, ref: torch.Tensor, mode: str, index: int, strength: float) -> torch.Tensor:
        batch, height, width, channels = target.shape
        shared = None
        if mode != "per_frame":
            source = target[index:index + 1] if mode == "target_frame" else target
            shared = histogram_lut(cdf(planar_frames(source)), cdf(planar_frames(ref)))
        out = torch.empty(batch, height, width, channels)
        for i in range(batch):
            src = planar_frames(target[i:i + 1])
            lut = shared if shared is not None else histogram_lut(
                cdf(src), cdf(planar_frames(ref[min(i, ref.shape[0] - 1):][:1])))
            matched = lut.gather(1, _bins(src))
            result = matched if strength == 1.0 else torch.lerp(src, matched, strength)
            out[i] = result.reshape(channels, height, width).permute(1, 2, 0)
        return out

    @staticmethod
    def lab(target: torch.Tensor, ref: torch.Tensor, mode: str, index: int, strength: float,
            reinhard: bool) -> torch.Tensor:
        batch, height, width, _ = target.shape
        transform: Callable[[torch.Tensor, int], torch.Tensor]
        if mode != "per_frame" or ref.shape[0] == 1:
            ref_mean, ref_spread = pooled_stats(ref, reinhard)
        if mode != "per_frame":
            if mode == "target_frame":
                src_mean, src_spread = frame_stats(_lab_frame(target, index), reinhard)
            else:
                src_mean, src_spread = pooled_stats(target, reinhard)
            if reinhard:
                scale = ref_spread / src_spread
                offset = ref_mean - scale * src_mean
                transform = lambda flat, i: flat * scale + offset  # noqa: E731
            else:
                matrix = mkl_matrix(src_spread, ref_spread)
                offset = ref_mean - matrix @ src_mean
                transform = lambda flat, i: matrix @ flat + offset  # noqa: E731
        else:
            def transform(flat: torch.Tensor, i: int) -> torch.Tensor:
                mean, spread = frame_stats(flat, reinhard)
                if ref.shape[0] == 1:
                    r_mean, r_spread = ref_mean, ref_spread
                else:
                    r_mean, r_spread = frame_stats(_lab_frame(ref, i), reinhard)
                centred = flat - mean
                if reinhard:
                    return centred * (r_spread / spread) + r_mean
                return mkl_matrix(centred @ centred.T / flat.shape[-1], r_spread) @ centred + r_mean

        out = torch.empty(batch, height, width, 3)
        for i in range(batch):
            source = _lab_frame(target, i)
            corrected = transform(source, i)
            mixed = corrected if strength == 1.0 else torch.lerp(source, corrected, strength)
            rgb = lab_to_rgb(mixed.reshape(1, 3, height, width))
            out[i] = rgb[0].permute(1, 2, 0)
        return out
