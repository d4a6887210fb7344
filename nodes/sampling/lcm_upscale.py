"""LCM with upscaling between steps (ComfyUI's SamplerLCMUpscale sampler) and the ``bislerp`` resize it
offers: each step jumps to the denoised latent, scales it up a little (reaching ``total_upscale`` after
``upscale_steps`` steps), then adds noise at the next sigma.

The noise continues the run's seeded CPU stream after the initial noise, as ComfyUI's ``randn_like``
on the global generator does on a CPU (on a GPU ComfyUI draws from the device's generator instead, so
GPU runs there differ; so does a latent with ``batch_index``, whose per-item initial draws move
ComfyUI's stream further). Like ComfyUI,
the noise is added as ``x + sigma · noise`` (the eps convention), whatever the model's sampling.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nodegraph_nodes.image.operations import common_upscale
from nodegraph_nodes.sampling.noise import prepare_noise

#: SamplerLCMUpscale's resize methods (ComfyUI's order)
UPSCALE_METHODS = ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"]


def _slerp(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of row vectors ``a`` → ``b`` ([N, C]) by ``ratio`` ([N, 1]); the length is
    interpolated linearly. Nearly equal directions keep ``a``; opposite ones interpolate linearly."""
    norm_a = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    norm_b = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    unit_a = torch.where(norm_a == 0, torch.zeros_like(a), a / norm_a)
    unit_b = torch.where(norm_b == 0, torch.zeros_like(b), b / norm_b)
    dot = (unit_a * unit_b).sum(-1)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    r = ratio.squeeze(1)
    out = (torch.sin((1.0 - r) * omega) / sin_omega).unsqueeze(1) * unit_a + \
        (torch.sin(r * omega) / sin_omega).unsqueeze(1) * unit_b
    out = out * (norm_a * (1.0 - ratio) + norm_b * ratio)
    same = dot > 1 - 1e-5
    opposite = dot < 1e-5 - 1
    out[same] = a[same]
    out[opposite] = (a * (1.0 - ratio) + b * ratio)[opposite]
    return out


def _neighbours(old: int, new: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``new`` positions: the left and right source index and the ratio between them (the
    sample positions of a bilinear resize, half-pixel centres)."""
    pos = F.interpolate(torch.arange(old, dtype=torch.float32, device=device).reshape(1, 1, 1, -1),
                        size=(1, new), mode="bilinear").reshape(-1)
    right_src = torch.arange(old, dtype=torch.float32, device=device) + 1
    right_src[-1] -= 1
    right = F.interpolate(right_src.reshape(1, 1, 1, -1), size=(1, new), mode="bilinear").reshape(-1)
    return pos.to(torch.int64), right.to(torch.int64), pos - pos.floor()


def _slerp_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Resize [N,C,H,W] along ``dim`` (-1 width, -2 height) by slerping neighbouring channel vectors."""
    left, right, ratio = _neighbours(x.shape[dim], size, x.device)
    a = x.index_select(dim, left).movedim(1, -1)
    b = x.index_select(dim, right).movedim(1, -1)
    shape = a.shape
    view = [1] * 3
    view[dim] = size
    r = ratio.reshape(view).expand(shape[:-1]).reshape(-1, 1)
    c = shape[-1]
    return _slerp(a.reshape(-1, c), b.reshape(-1, c), r).reshape(shape).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's bislerp: a bilinear resize whose blends are spherical in channel space (width first)."""
    dtype = samples.dtype
    out = _slerp_axis(samples.float(), width, -1)
    return _slerp_axis(out, height, -2).to(dtype)


def resize(x: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    if method == "bislerp":
        return bislerp(x, width, height)
    return common_upscale(x, width, height, method, "disabled")


def upscale_schedule(steps: int, total_upscale: float, upscale_steps: int | None) -> list[float]:
    """The scale after each of the first steps (ComfyUI: half the steps by default)."""
    n_sigmas = steps + 1
    if upscale_steps is None:
        count = max(n_sigmas // 2 + 1, 2)
    else:
        count = min(upscale_steps + 1, n_sigmas + 1)
    return [float(v) for v in np.linspace(1.0, total_upscale, count)[1:]]


def sample_lcm_upscale(model, x, sigmas, *, callback=None, noise_sampler=None, total_upscale=2.0,
                       upscale_method="bislerp", upscale_steps=None):
    from nodegraph_nodes.sampling.samplers import StepInfo

    if upscale_method not in UPSCALE_METHODS:
        raise ValueError(f"LCM upscale method {upscale_method!r}; use one of {', '.join(UPSCALE_METHODS)}")
    scales = upscale_schedule(len(sigmas) - 1, total_upscale, upscale_steps)
    height, width = x.shape[-2:]
    seed = getattr(model, "seed", None)
    generator = prepare_noise(torch.empty(x.shape), seed)[1] if seed is not None else None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        if callback is not None:
            callback(StepInfo(i, x, sigmas[i], denoised))
        x = denoised
        if i < len(scales):
            x = resize(x, round(width * scales[i]), round(height * scales[i]), upscale_method)
        if sigmas[i + 1] > 0:
            fresh = torch.randn(x.shape, generator=generator, dtype=torch.float32)
            x = x + sigmas[i + 1] * fresh.to(x.device, x.dtype)
    return x
