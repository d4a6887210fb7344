"""Test images of 8×8-pixel blocks: the same after nearest, nearest-exact and block-aligned resizes, so a
ControlNet hint, a mask or a start image is compared without resampling noise; and the control / mask inputs
the latent-ControlNet suites (Flux.1, Qwen-Image) load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def blocks(seed: int, channels: int) -> np.ndarray:
    """A 64×64×``channels`` uint8 image of 8×8 random blocks (``numpy`` generator ``seed``)."""
    cells = np.random.default_rng(seed).integers(0, 256, (8, 8, channels), dtype=np.uint8)
    return np.kron(cells, np.ones((8, 8, 1), np.uint8))


def block_mask(seed: int) -> np.ndarray:
    """A 64×64 uint8 mask (0 or 255) of 8×8 blocks."""
    return ((blocks(seed, 1)[..., 0] > 128) * 255).astype(np.uint8)


def save_control_inputs(input_dir: Path) -> None:
    """``control.png`` / ``control_b.png`` (RGB blocks, seeds 3, 4) and ``mask.png`` / ``mask_b.png`` (masks,
    seeds 5, 6) in ``input_dir``."""
    input_dir.mkdir(parents=True, exist_ok=True)
    for name, seed in (("control.png", 3), ("control_b.png", 4)):
        Image.fromarray(blocks(seed, 3)).save(input_dir / name)
    for name, seed in (("mask.png", 5), ("mask_b.png", 6)):
        Image.fromarray(block_mask(seed)).save(input_dir / name)
