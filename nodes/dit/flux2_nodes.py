"""ComfyUI's Flux.2 nodes: ``EmptyFlux2LatentImage`` (128-channel latents at 1/16 of the image) and
``Flux2Scheduler`` (BFL's empirical schedule for a resolution and step count)."""

from __future__ import annotations

import math

import torch

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import LATENT

from nodegraph_nodes.sampling.types import SIGMAS

MAX_RESOLUTION = 16384


class EmptyFlux2LatentImage(Node):
    """A batch of empty Flux.2 latents: ``[batch, 128, height/16, width/16]``."""

    category = "latent"
    width = Input(INT, default=1024, min=16, max=MAX_RESOLUTION, step=16)
    height = Input(INT, default=1024, min=16, max=MAX_RESOLUTION, step=16)
    batch_size = Input(INT, default=1, min=1, max=4096)
    outputs = (Output(LATENT),)

    def execute(self, width: int, height: int, batch_size: int = 1) -> tuple:
        return ({"samples": torch.zeros([batch_size, 128, height // 16, width // 16])},)


def empirical_mu(image_seq_len: int, steps: int) -> float:
    """BFL's shift for Flux.2: linear in the token count, interpolated in the step count between fits at 10
    and 200 steps (above 4300 tokens the 200-step fit alone)."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    m_200 = a2 * image_seq_len + b2
    if image_seq_len > 4300:
        return float(m_200)
    m_10 = a1 * image_seq_len + b1
    slope = (m_200 - m_10) / 190.0
    return float(slope * steps + m_200 - 200.0 * slope)


def flux2_sigmas(steps: int, width: int, height: int) -> torch.Tensor:
    """``steps + 1`` sigmas from 1 to 0: ``t`` evenly spaced, shifted by ``e^mu / (e^mu + 1/t - 1)``."""
    mu = empirical_mu(round(width * height / 256), steps)
    t = torch.linspace(1, 0, steps + 1)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


class Flux2Scheduler(Node):
    """Flux.2's schedule for an image of ``width`` × ``height`` in ``steps`` steps (ends at 0)."""

    category = "sampling/custom_sampling/schedulers"
    steps = Input(INT, default=20, min=1, max=4096)
    width = Input(INT, default=1024, min=16, max=MAX_RESOLUTION, step=1)
    height = Input(INT, default=1024, min=16, max=MAX_RESOLUTION, step=1)
    outputs = (Output(SIGMAS),)

    def execute(self, steps: int, width: int, height: int) -> tuple:
        return (flux2_sigmas(steps, width, height),)
