"""IC-LoRA parameters (GetICLoRAParameters): the safetensors metadata of the LoRA last applied to a MODEL.

ComfyUI's LoRA loaders attach the LoRA file's metadata to the model they return (``lora_metadata``); here a
MODEL keeps its LoRA patches (``patches``, each naming its file), so the metadata is read from the header of the
last one's file in ``models/loras``. IC-LoRAs (LTX-2's in-context LoRAs) record there e.g.
``reference_downscale_factor``: how much smaller the reference (guide) video was encoded in training.

LTXVAddGuide then encodes the guide that much smaller and *dilates* it onto the latent's grid (ComfyUI's
``nodes_lt.py``): each guide token at every ``factor``-th row and column, zeros between; the noise mask of those
filler positions is negative, and the LTX-2 runner leaves tokens with a negative mask out of the transformer's
sequence (their output is 0). The real tokens' RoPE bounds end ``factor - 1`` patches later, so each spans the
``factor × factor`` patches it stands for — the positions diffusers' ``LTX2ICLoraPipeline`` gives its downscaled
reference tokens (their small-grid coordinates times the factor).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nodegraph.context import Paths

from nodegraph_nodes.diffusion.files import ModelFileError, resolve_model

#: the entry GetICLoRAParameters reads (a metadata key ending with it, as ComfyUI matches)
DOWNSCALE_KEY = "reference_downscale_factor"


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a .safetensors file's header (empty if none; other files have none)."""
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{path.name}: unreadable safetensors header ({exc})") from None


def last_lora_metadata(paths: Paths, model) -> dict[str, str]:
    """The metadata of the LoRA file last applied to ``model`` ({} for a MODEL without LoRAs)."""
    names = [p.name for p in getattr(model, "patches", ()) if isinstance(getattr(p, "name", None), str)]
    if not names:
        return {}
    try:
        path = resolve_model(paths, "loras", names[-1])
    except ModelFileError:
        return {}
    return safetensors_metadata(path)


def iclora_parameters(metadata: dict[str, str]) -> dict[str, int]:
    """``{"reference_downscale_factor": n}``: the entry rounded, at least 1; 1 if absent or not a number."""
    factor = 1
    value = next((v for k, v in metadata.items() if k.endswith(DOWNSCALE_KEY)), None)
    if value is not None:
        try:
            factor = max(1, round(float(value)))
        except (TypeError, ValueError):
            factor = 1
    return {DOWNSCALE_KEY: factor}


def dilate(guide: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``guide`` ``[B, C, F, h, w]`` spread over ``[B, C, F, h·factor, w·factor]`` (zeros between) and its mask
    ``[B, 1, F, h·factor, w·factor]``: 1 at the guide's tokens, -1 at the fillers."""
    b, c, f, h, w = guide.shape
    dilated = guide.new_zeros((b, c, f, h * factor, w * factor))
    dilated[..., ::factor, ::factor] = guide
    mask = guide.new_full((b, 1, f, h * factor, w * factor), -1.0)
    mask[..., ::factor, ::factor] = 1.0
    return dilated, mask


def widen_coords(coords: torch.Tensor, factor: int, scale: tuple[int, int]) -> torch.Tensor:
    """Keyframe pixel bounds ``[B, 3, tokens, 2]`` with the row and column ends moved ``factor - 1`` patches of
    ``scale`` (pixels per latent row, column) further."""
    out = coords.clone()
    offset = torch.tensor([(factor - 1) * s for s in scale], dtype=out.dtype)
    out[:, 1:, :, 1] += offset.view(1, 2, 1)
    return out
