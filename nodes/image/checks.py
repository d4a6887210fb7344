"""Run-time checks shared by the image nodes of ComfyUI's V3 set (resize, batch, crop, colour).

Values that arrive through links skip the engine's range checks, so the nodes check them here; every
error names the node and the input. IMAGE is float ``[B,H,W,C]`` (C = 1, 3 or 4), MASK ``[B,H,W]``.
"""

from __future__ import annotations

from typing import Any

import torch


def node_error(node: str, message: str) -> ValueError:
    """A ValueError whose text starts with the node's class name."""
    return ValueError(f"{node}: {message}")


def image_input(node: str, name: str, value: Any) -> torch.Tensor:
    """``value`` checked as an IMAGE ``[B,H,W,C]`` with at least one item and one pixel."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{node}: input '{name}' must be an IMAGE tensor [batch, height, width, channels], "
                        f"got {type(value).__name__}")
    if value.ndim != 4 or value.shape[-1] not in (1, 3, 4):
        raise node_error(node, f"input '{name}' has shape {list(value.shape)}; an IMAGE is "
                               "[batch, height, width, channels] with 1, 3 or 4 channels")
    if value.shape[0] == 0 or value.shape[1] == 0 or value.shape[2] == 0:
        raise node_error(node, f"input '{name}' is empty: shape {list(value.shape)}")
    if not value.is_floating_point():
        raise node_error(node, f"input '{name}' must hold floats in 0..1, got dtype {value.dtype}")
    return value


def mask_input(node: str, name: str, value: Any) -> torch.Tensor:
    """``value`` checked as a MASK ``[B,H,W]`` (a single ``[H,W]`` mask is a batch of one)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{node}: input '{name}' must be a MASK tensor [batch, height, width], "
                        f"got {type(value).__name__}")
    if value.ndim == 2:
        value = value.unsqueeze(0)
    if value.ndim != 3:
        raise node_error(node, f"input '{name}' has shape {list(value.shape)}; a MASK is [batch, height, width]")
    if 0 in value.shape:
        raise node_error(node, f"input '{name}' is empty: shape {list(value.shape)}")
    return value.float() if not value.is_floating_point() else value


def image_or_mask(node: str, name: str, value: Any) -> tuple[torch.Tensor, bool]:
    """``(tensor, is_image)``: a 4-D IMAGE or a 3-D MASK, checked as such."""
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        return image_input(node, name, value), True
    if isinstance(value, torch.Tensor) and value.ndim in (2, 3):
        return mask_input(node, name, value), False
    shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
    raise node_error(node, f"input '{name}' is {shape}; it takes an IMAGE [batch, height, width, channels] "
                           "or a MASK [batch, height, width]")


def int_in_range(node: str, name: str, value: Any, low: int, high: int) -> int:
    """An int (bools refused) within ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise node_error(node, f"input '{name}' must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise node_error(node, f"input '{name}' is {value}; use a value from {low} to {high}")
    return value


def float_in_range(node: str, name: str, value: Any, low: float, high: float) -> float:
    """A finite float within ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise node_error(node, f"input '{name}' must be a number, got {value!r}")
    value = float(value)
    if not low <= value <= high:
        raise node_error(node, f"input '{name}' is {value}; use a value from {low} to {high}")
    return value


def choice(node: str, name: str, value: Any, choices: list[str] | tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``."""
    if value not in choices:
        raise node_error(node, f"input '{name}' is {value!r}; use one of {', '.join(map(repr, choices))}")
    return value


def hex_color(node: str, name: str, value: Any) -> tuple[float, float, float]:
    """``#RRGGBB`` (the ``#`` optional) as three floats in 0..1."""
    text = value.strip().lstrip("#") if isinstance(value, str) else ""
    try:
        if len(text) != 6:
            raise ValueError
        return tuple(int(text[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
    except ValueError:
        raise node_error(node, f"input '{name}' is {value!r}; write a colour as #RRGGBB, e.g. #000000") from None
