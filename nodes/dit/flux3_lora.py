"""LoRAs on a FLUX.3 transformer (LoraLoader / LoraLoaderModelOnly on a FLUX.3 MODEL).

Key layouts read (low-rank ``up``/``down`` pairs with an optional ``alpha``, suffixes as in
:mod:`nodegraph_nodes.diffusion.lora`):

* diffusers / PEFT names: ``transformer.<module>.lora_A/lora_B.weight`` (or kohya-flattened
  ``lora_transformer_<module with _>``);
* Black Forest Labs' names as ComfyUI / ai-toolkit save them: ``diffusion_model.single_blocks.0.q_proj.lora_A.weight``
  (also under ``model.diffusion_model.``): each layer's ``up`` matrix is renamed by the same conversion as the weight
  it patches (diffusers' FLUX.3 single-file converter; the final modulation's shift/scale halves swapped), the
  ``down`` matrix is shared. diffusers' ``Flux3LoraLoaderMixin`` reads the block layers of this layout the same way;
* the same BFL names kohya-flattened (``lora_unet_single_blocks_0_q_proj.lora_down/lora_up`` + ``.alpha``, as
  ComfyUI reads ``lora_unet_`` + a flattened layer name): unflattened through the BFL names of the transformer's
  layers (:func:`kohya_names`), then read as above. diffusers 0.42.1 does not read this layout for FLUX.3.

The deltas are added to the transformer's weights for each run and removed after it.
"""

from __future__ import annotations

import torch

from nodegraph_nodes.diffusion.components import LoraPatch
from nodegraph_nodes.diffusion.lora import _module_names
from nodegraph_nodes.dit.lora_common import TEXT_PREFIXES, diffusers_weight, finish, lora_layers

ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
KOHYA_PREFIX = "lora_unet_"

#: diffusers → BFL names of layers (the inverse of diffusers' FLUX.3 converter for the layers a LoRA patches)
_EXACT = {"timestep_embedder.linear_1": "time_in.in_layer", "timestep_embedder.linear_2": "time_in.out_layer",
          "target_timestep_embedder.linear_1": "ref_time_in.in_layer",
          "target_timestep_embedder.linear_2": "ref_time_in.out_layer", "proj_out": "final_layer.image.linear",
          "norm_out.linear": "final_layer.image.adaLN_modulation.1", "context_embedder": "txt_in"}
_PREFIXES = {"x_embedders.": "emb_in.", "mode_blocks.": "content_mode_blocks.",
             "single_transformer_blocks.": "single_blocks."}
_SUFFIXES = {".attn.to_q": ".q_proj", ".attn.to_k": ".k_proj", ".attn.to_v": ".v_proj", ".attn.to_out.0": ".attn_out",
             ".ff.linear_in": ".mlp_in", ".ff.linear_out": ".mlp_out"}


def _converted(layer: str, up: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """The diffusers module an original (BFL) ``layer`` is, with ``up`` converted as its weight would be."""
    from diffusers.loaders.single_file_utils import convert_flux3_transformer_checkpoint_to_diffusers

    out = convert_flux3_transformer_checkpoint_to_diffusers({layer + ".weight": up})
    if len(out) != 1:
        return None
    (key, value), = out.items()
    return (key[:-len(".weight")], value) if key.endswith(".weight") else None


def _bfl_name(module: str) -> str:
    """The BFL name of the diffusers layer ``module`` (unchecked: see :func:`kohya_names`)."""
    if module in _EXACT:
        return _EXACT[module]
    prefix = next((p for p in _PREFIXES if module.startswith(p)), None)
    name = _PREFIXES[prefix] + module[len(prefix):] if prefix else module
    if "_modulations." in name and name.endswith(".linear"):
        return name[:-len(".linear")] + ".lin"
    suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
    return name[:-len(suffix)] + _SUFFIXES[suffix] if suffix else name


def kohya_names(modules: dict[str, str]) -> dict[str, str]:
    """kohya-flattened BFL name → dotted BFL name, for each layer of ``modules`` (:func:`_module_names`) whose BFL
    name diffusers' converter takes back to it."""
    out = {}
    for module in set(modules.values()):
        bfl = _bfl_name(module)
        converted = _converted(bfl, torch.zeros(2, 1))
        if converted is not None and converted[0] == module:
            out[bfl.replace(".", "_")] = bfl
    return out


def flux3_lora_patch(net: torch.nn.Module, sd: dict, strength: float, name: str) -> LoraPatch:
    """The deltas of LoRA ``sd`` on the ``Flux3Transformer2DModel`` ``net``."""
    modules = _module_names(net, "unet")
    kohya = kohya_names(modules) if any(k.startswith(KOHYA_PREFIX) for k in sd) else {}
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    unread = []
    for key, up, down, scale in lora_layers(sd):
        target = diffusers_weight(key, modules)
        if target is not None:
            deltas[target] = (up, down, scale)
            continue
        prefix = next((p for p in ORIGINAL_PREFIXES if key.startswith(p)), None)
        layer = key[len(prefix):] if prefix is not None else kohya.get(key[len(KOHYA_PREFIX):])
        converted = _converted(layer, up) if layer is not None else None
        if converted is not None and converted[0] in modules:
            deltas[modules[converted[0]] + ".weight"] = (converted[1], down, scale)
            continue
        if not key.startswith(TEXT_PREFIXES):
            unread.append(key)
    return finish(name, "FLUX.3", deltas, unread, strength, sd)
