"""IC-LoRA parameters (GetICLoRAParameters): the safetensors metadata of the LoRA last applied to a MODEL.

ComfyUI's LoRA loaders attach the LoRA file's metadata to the model they return (``lora_metadata``); here a
MODEL keeps its LoRA patches (``patches``, each naming its file), so the metadata is read from the header of the
last one's file in ``models/loras``. IC-LoRAs (LTX-2's in-context LoRAs) record there e.g.
``reference_downscale_factor``: how much smaller the reference (guide) video was encoded in training.
"""

from __future__ import annotations

from pathlib import Path

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
