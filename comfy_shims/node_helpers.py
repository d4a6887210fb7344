"""ComfyUI's ``node_helpers``: small helpers packs use around images and conditioning."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from ._attrs import missing_attribute


def conditioning_set_values(conditioning: list, values: dict | None = None, append: bool = False) -> list:
    """A copy of each ``[cond, options]`` entry with ``values`` set (appended to lists with ``append``)."""
    values = values or {}
    out = []
    for cond, options in conditioning:
        options = dict(options)
        for key, value in values.items():
            if append and isinstance(options.get(key), list):
                options[key] = options[key] + value
            else:
                options[key] = value
        out.append([cond, options])
    return out


def pillow(fn: Callable[..., Any], arg: Any) -> Any:
    """Call a PIL function, retrying once with truncated images allowed (as ComfyUI does)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        return fn(arg)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def hasher() -> Callable[..., Any]:
    return hashlib.sha256


def string_to_torch_dtype(string: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[string]


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give ``source`` as many channels as ``destination`` (drop alpha, or add an opaque one)."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        destination = torch.nn.functional.pad(destination, (0, 1))
        destination[..., -1] = 1.0
    return destination, source


def __getattr__(name: str) -> Any:
    return missing_attribute("node_helpers", name)


__all__ = ["conditioning_set_values", "pillow", "hasher", "string_to_torch_dtype", "image_alpha_fix", "Image"]
