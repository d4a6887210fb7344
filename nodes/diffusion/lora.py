"""LoRA files → per-parameter low-rank deltas, and patching them into modules for one use.

Formats: kohya / A1111 (``lora_unet_down_blocks_0_…lora_down.weight`` + ``.alpha``; text encoders
``lora_te_`` / ``lora_te1_`` / ``lora_te2_``), diffusers (``unet.….lora.down.weight``) and PEFT
(``unet.….lora_A.weight``). SDXL kohya files named after the original UNet blocks
(``lora_unet_input_blocks_…``) are mapped to diffusers names with diffusers' own helper.
Weights are patched in place (``w += strength · scale · up @ down``) under the model's lock and the
originals restored afterwards, so one loaded model serves LoRA and non-LoRA users alike.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch

from nodegraph_nodes.diffusion.components import LoraPatch

UNET_PREFIXES = ("lora_unet_", "unet.")
#: key starts of text-encoder layers in every layout read (kohya ``lora_te*``, diffusers ``text_encoder*``,
#: ``te_…``, ``lora_clip…``): a diffusion-model reader leaves them to the text encoders
TEXT_KEY_STARTS = ("lora_te", "text_encoder", "te_", "lora_clip")
TE_PREFIXES = {0: ("lora_te_", "lora_te1_", "text_encoder."), 1: ("lora_te2_", "text_encoder_2.")}
_SUFFIXES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".lora.down.weight": "down",
             ".lora.up.weight": "up", ".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha"}


def _group(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        for suffix, part in _SUFFIXES.items():
            if key.endswith(suffix):
                groups.setdefault(key[: -len(suffix)], {})[part] = value
                break
    return groups


def _module_names(module: torch.nn.Module, prefix_style: str) -> dict[str, str]:
    """Lookup: flattened kohya name and dotted name → parameter-owning module name."""
    names: dict[str, str] = {}
    for name, sub in module.named_modules():
        if not hasattr(sub, "weight") or not isinstance(getattr(sub, "weight"), torch.Tensor):
            continue
        variants = {name}
        if prefix_style == "text":
            variants |= {"text_model." + name if not name.startswith("text_model.") else name[len("text_model."):]}
        for v in variants:
            names[v] = name
            names[v.replace(".", "_")] = name
    return names


def _maybe_sgm(groups: dict[str, dict], unet_config) -> dict[str, dict]:
    if not any(k.startswith("lora_unet_input_blocks") or k.startswith("lora_unet_output_blocks")
               or k.startswith("lora_unet_middle_block") for k in groups):
        return groups
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    flat = {f"{k}.{p}": v for k, parts in groups.items() for p, v in parts.items()}
    mapped = _maybe_map_sgm_blocks_to_diffusers(flat, unet_config)
    out: dict[str, dict] = {}
    for key, value in mapped.items():
        base, part = key.rsplit(".", 1)
        out.setdefault(base, {})[part] = value
    return out


def lora_patch(sd: dict[str, torch.Tensor], module: torch.nn.Module, prefixes: Iterable[str], strength: float,
               name: str, style: str = "unet") -> LoraPatch:
    """The deltas of ``sd`` that apply to ``module`` (keys under one of ``prefixes``). ``unmatched``: the
    keys under ``prefixes`` that do not apply (for the UNet, ``style="unet"``, also every key that is not
    under them and not a text encoder's: nothing else reads those)."""
    groups = _group(sd)
    if style == "unet":
        groups = _maybe_sgm(groups, getattr(module, "config", None))
    lookup = _module_names(module, style)
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    unmatched: list[str] = []
    for key, parts in groups.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            if style == "unet" and not key.startswith(TEXT_KEY_STARTS):
                unmatched.append(key)
            continue
        target = lookup.get(key[len(prefix):])
        if target is None or "up" not in parts or "down" not in parts:
            unmatched.append(key)
            continue
        down, up = parts["down"], parts["up"]
        rank = down.shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
        deltas[target + ".weight"] = (up, down, alpha / rank)
    return LoraPatch(name, deltas, float(strength), tuple(unmatched))


def count_lora_keys(sd: dict[str, Any]) -> int:
    return len(_group(sd))


@contextmanager
def patched(module: torch.nn.Module, patches: Iterable[LoraPatch]) -> Iterator[torch.nn.Module]:
    """``module`` with the patches added to its weights; originals restored on exit."""
    patches = [p for p in patches if p.strength != 0 and p.deltas]
    if not patches:
        yield module
        return
    params = dict(module.named_parameters())
    backup: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for patch in patches:
                for pname, (up, down, scale) in patch.deltas.items():
                    weight = params.get(pname)
                    if weight is None:
                        continue
                    if pname not in backup:
                        backup[pname] = weight.detach().clone()
                    delta = (up.flatten(1).float() @ down.flatten(1).float()).reshape(weight.shape)
                    weight.add_((delta * (scale * patch.strength)).to(weight.dtype).to(weight.device))
        yield module
    finally:
        with torch.no_grad():
            for pname, original in backup.items():
                params[pname].copy_(original)
