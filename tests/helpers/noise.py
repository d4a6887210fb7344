"""The engine's starting noise for a seed, to hand the same noise to a diffusers reference pipeline
(used by the diffusion and the IP-Adapter parity tests)."""

from __future__ import annotations

import torch


def engine_noise(shape, seed):
    """The engine's noise and the generator state after drawing it (see nodegraph_nodes.diffusion.sampler)."""
    from nodegraph_nodes.diffusion.sampler import prepare_noise

    return prepare_noise(torch.zeros(shape), seed)
