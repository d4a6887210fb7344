"""Noise: the initial noise of a run (the ``NOISE`` socket's values) and the per-step noise of the
ancestral and SDE samplers.

Initial noise is ComfyUI's, so a seed gives the same picture as there: a CPU generator seeded with the
seed draws one ``randn`` over the latent's shape (per-item draws when the latent carries
``batch_index``). Per-step noise: :func:`gaussian_noise_sampler` draws from a fresh generator seeded
with the run's seed on the latent's device; :class:`BrownianTreeNoiseSampler` (torchsde) gives noise
that depends only on the sigma interval, which the SDE samplers of DPM-Solver++ need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SEED_MASK = 0xFFFF_FFFF_FFFF_FFFF


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: list[int] | None = None
                  ) -> tuple[torch.Tensor, torch.Generator]:
    """Initial noise for ``latent``'s shape and the generator after drawing it."""
    generator = torch.Generator("cpu").manual_seed(int(seed) & SEED_MASK)
    shape = tuple(latent.shape)
    if batch_index is None:
        return torch.randn(shape, generator=generator, dtype=torch.float32), generator
    draws: dict[int, torch.Tensor] = {}
    for i in range(max(batch_index) + 1):
        n = torch.randn((1, *shape[1:]), generator=generator, dtype=torch.float32)
        if i in batch_index:
            draws[i] = n
    return torch.cat([draws[i] for i in batch_index], dim=0), generator


class NoiseSource(Protocol):
    """A ``NOISE`` value: makes the initial noise for a LATENT dict."""

    seed: int

    def generate(self, latent: dict) -> torch.Tensor: ...


@dataclass(frozen=True)
class RandomNoise:
    seed: int

    def generate(self, latent: dict) -> torch.Tensor:
        nested = getattr(latent.get("noise_layout"), "draw_noise", None)
        if nested is not None:  # a packed nested latent (LTX-2 audio + video): its parts' noise, as ComfyUI draws it
            return nested(self.seed, latent["samples"].shape[0])
        return prepare_noise(latent["samples"], self.seed, latent.get("batch_index"))[0]


@dataclass(frozen=True)
class EmptyNoise:
    """No noise (DisableNoise): the latent is sampled as it is."""

    seed: int = 0

    def generate(self, latent: dict) -> torch.Tensor:
        samples = latent["samples"]
        return torch.zeros(samples.shape, dtype=samples.dtype)


def gaussian_noise_sampler(x: torch.Tensor, seed: int | None = None) -> NoiseSampler:
    """Standard normal noise shaped like ``x``, from a generator seeded with ``seed`` (unseeded: global)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed) & SEED_MASK)

    def draw(sigma, sigma_next) -> torch.Tensor:
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return draw


class BrownianTreeNoiseSampler:
    """Noise for the interval ``[sigma_next, sigma]`` from a Brownian tree over
    ``[sigma_min, sigma_max]`` (torchsde), normalised to unit variance. ``cpu``: the tree lives on the
    CPU, so a seed gives the same noise on every device."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed: int | None = None,
                 transform: Callable = lambda s: s, cpu: bool = False):
        try:
            import torchsde
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise RuntimeError("the SDE samplers need the 'torchsde' package (pip install torchsde)") from exc
        self.transform = transform
        self.cpu = cpu
        t0, t1 = transform(torch.as_tensor(sigma_min)), transform(torch.as_tensor(sigma_max))
        t0, t1, self.sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w0 = torch.zeros_like(x)
        if seed is None:
            seed = int(torch.randint(0, 2 ** 63 - 1, ()).item())
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=int(seed))

    def _increment(self, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        a, b, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        device, dtype = a.device, a.dtype
        if self.cpu:
            a, b = a.detach().cpu().float(), b.detach().cpu().float()
        return self.tree(a, b).to(device=device, dtype=dtype) * (self.sign * sign)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        return self._increment(t0, t1) / (t1 - t0).abs().sqrt()
