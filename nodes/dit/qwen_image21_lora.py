"""LoRAs on a Qwen-Image 2.1 transformer (LoraLoader / LoraLoaderModelOnly on a ``qwen_image21`` MODEL).

Key layouts read (low-rank ``up``/``down`` pairs with an optional ``alpha``, suffixes as in
:mod:`nodegraph_nodes.diffusion.lora`; the transformer's own module names in all of them):

* ComfyUI / ai-toolkit: ``diffusion_model.transformer_blocks.N.attn.to_q.lora_A/B.weight`` (also under
  ``model.diffusion_model.``, or ``lora_down``/``lora_up`` + ``.alpha``);
* diffusers / PEFT: ``transformer.transformer_blocks.N.attn.to_q.lora_A/B.weight``;
* kohya / musubi: ``lora_unet_transformer_blocks_N_attn_to_q.lora_down/up`` + ``.alpha`` (every flattened name,
  also ``…_img_mlp_gate_layer`` and ``modulation_1``, which diffusers' Qwen-Image converter does not unflatten);
* ComfyUI's fused SwiGLU ``img_mlp.gate_up`` (as its 2.1 files store the weight): the ``up`` matrix is split by
  rows as the weight is (gate rows first → ``gate_layer``, then ``proj``), the ``down`` matrix shared.

The deltas (``strength · alpha/rank · up @ down``; alpha absent = the rank) are added to the weights for each run
and removed after it; keys that match no layer are returned as unmatched (LoraLoader warns about them).
"""

from __future__ import annotations

import torch

from nodegraph_nodes.diffusion.components import LoraPatch
from nodegraph_nodes.diffusion.lora import _module_names
from nodegraph_nodes.dit.llm_lora import PREFIXES
from nodegraph_nodes.dit.lora_common import TEXT_PREFIXES, finish, lora_layers

FUSED = ("img_mlp.gate_up", "img_mlp_gate_up")


def _targets(key: str, up: torch.Tensor, modules: dict[str, str]) -> list[tuple[str, torch.Tensor]]:
    """The transformer modules LoRA layer ``key`` patches, each with its part of ``up`` (empty: none)."""
    for prefix in PREFIXES:
        if not key.startswith(prefix):
            continue
        layer = key[len(prefix):]
        if layer in modules:
            return [(modules[layer], up)]
        if layer.endswith(FUSED):
            base = layer[:-len("gate_up")]
            gate, proj = base + "gate_layer", base + "proj"
            if gate in modules and proj in modules and up.shape[0] % 2 == 0:
                gate_up, proj_up = up.chunk(2, dim=0)
                return [(modules[gate], gate_up), (modules[proj], proj_up)]
    return []


def qwen21_lora_patch(net: torch.nn.Module, sd: dict, strength: float, name: str) -> LoraPatch:
    """The deltas of LoRA ``sd`` on the ``QwenImage21Transformer2DModel`` ``net``."""
    modules = _module_names(net, "unet")
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    unread = []
    for key, up, down, scale in lora_layers(sd):
        targets = _targets(key, up, modules)
        for module, part in targets:
            deltas[module + ".weight"] = (part, down, scale)
        if not targets and not key.startswith(TEXT_PREFIXES):
            unread.append(key)
    return finish(name, "Qwen-Image 2.1", deltas, unread, strength, sd)
