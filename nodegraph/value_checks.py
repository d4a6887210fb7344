"""Checks of the values nodes receive on the core socket types: prompt-like text and IMAGE tensors.

Engine core, shared by every node family: each check returns the value (an IMAGE gets its batch axis) or
raises an error that names the input and says what was expected, so node families do not reach into one
another for them.
"""

from __future__ import annotations

from typing import Any

import torch

#: Longest text a prompt-like input accepts (longer inputs are refused with a clear message).
MAX_PROMPT_CHARS = 20_000


def check_text(text: Any, input_name: str, *, allow_empty: bool = False,
               max_chars: int = MAX_PROMPT_CHARS) -> str:
    """A prompt-like string, or a clear error naming the input."""
    if not isinstance(text, str):
        raise TypeError(f"input '{input_name}' must be text, got {type(text).__name__}")
    if not allow_empty and not text.strip():
        raise ValueError(f"input '{input_name}' is empty; write some text")
    if len(text) > max_chars:
        raise ValueError(f"input '{input_name}' has {len(text):,} characters; the limit is {max_chars:,}. "
                         "Shorten the text")
    return text


def validate_text(value: Any, input_name: str, *, allow_empty: bool = False,
                  max_chars: int = MAX_PROMPT_CHARS) -> bool | str:
    """The same checks as :func:`check_text`, as a ``validate_inputs`` answer."""
    if value is None:  # linked: checked at run time
        return True
    try:
        check_text(value, input_name, allow_empty=allow_empty, max_chars=max_chars)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return True


def check_image(image: Any, input_name: str = "image") -> torch.Tensor:
    """An IMAGE tensor ``[B,H,W,C]`` (C = 1, 3 or 4), or a clear error naming the input."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"input '{input_name}' must be an IMAGE tensor [B,H,W,C], got {type(image).__name__}")
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"input '{input_name}' must be an IMAGE of shape [batch, height, width, channels] "
                         f"with 1, 3 or 4 channels; got shape {list(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] < 2 or image.shape[2] < 2:
        raise ValueError(f"input '{input_name}' is empty or too small: shape {list(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"input '{input_name}' must hold floats in 0..1, got dtype {image.dtype}")
    return image
