"""What the DiT families' LoRA readers share (SD3/Flux, Flux.2, Qwen-Image / Z-Image, Lumina 2): the
low-rank layers of a LoRA file with their scale, which keys belong to a text encoder, the error for a
LoRA that matches nothing in the transformer, and the patch with the keys that did not match (LoraLoader
warns about them). Each family keeps its own name mapping."""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch

from nodegraph_nodes.diffusion.components import LoraPatch
from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.diffusion.lora import TEXT_KEY_STARTS, _group

#: key starts of text-encoder layers (a LoRA may hold them beside the transformer's; not "unread")
TEXT_PREFIXES = TEXT_KEY_STARTS


#: key starts of transformer layers in diffusers' names (``transformer.…``, kohya-style ``lora_transformer_…``)
DIFFUSERS_PREFIXES = ("transformer.", "lora_transformer_")


def diffusers_weight(key: str, modules: dict[str, str]) -> str | None:
    """The weight that LoRA layer ``key`` patches when it is a transformer layer in diffusers' names (``modules``:
    :func:`nodegraph_nodes.diffusion.lora._module_names` of the net), else None."""
    prefix = next((p for p in DIFFUSERS_PREFIXES if key.startswith(p)), None)
    if prefix is not None and key[len(prefix):] in modules:
        return modules[key[len(prefix):]] + ".weight"
    return None


class LoraLayer(NamedTuple):
    """One low-rank layer of a LoRA file: its key without the suffix, ``up``, ``down`` and ``alpha/rank``
    (1 without an alpha)."""

    key: str
    up: torch.Tensor
    down: torch.Tensor
    scale: float


def lora_layers(sd: dict) -> Iterator[LoraLayer]:
    """The layers of LoRA ``sd`` that have both matrices (suffixes: :mod:`nodegraph_nodes.diffusion.lora`)."""
    for key, parts in _group(sd).items():
        if "up" not in parts or "down" not in parts:
            continue
        down, up = parts["down"], parts["up"]
        scale = float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0
        yield LoraLayer(key, up, down, scale)


def check_matched(name: str, what: str, deltas: dict, unread: list[str]) -> None:
    """A clear error when LoRA ``name`` has transformer keys (``unread``) but none matched the ``what``
    transformer: it was made for another model."""
    if unread and not deltas:
        raise ModelFileError(f"LoRA {name} has no weights matching this {what} transformer (e.g. {unread[0]}); "
                             "it was made for another model")


def finish(name: str, what: str, deltas: dict, unread: list[str], strength: float, sd: dict) -> LoraPatch:
    """The patch of a family's reader: :func:`check_matched`, then the deltas with the unmatched keys —
    ``unread`` and the transformer layers missing their ``up`` or ``down`` matrix."""
    check_matched(name, what, deltas, unread)
    incomplete = [k for k, parts in _group(sd).items()
                  if ("up" not in parts or "down" not in parts) and not k.startswith(TEXT_PREFIXES)]
    return LoraPatch(name, deltas, float(strength), tuple(unread) + tuple(incomplete))
