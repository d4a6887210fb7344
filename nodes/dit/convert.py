"""Single-file transformer weights → diffusers modules, offline: key-layout detection, configs read off
the weights' shapes, and the key conversion.

Layouts (detected from the keys, with or without ComfyUI's ``model.diffusion_model.`` prefix):

* **SD3 / SD3.5** (Stability's MMDiT: ``joint_blocks.N.x_block…``, ``x_embedder``, ``pos_embed``) →
  ``SD3Transformer2DModel``; converted by diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers``.
  Head width 64 (every released MMDiT: hidden = 64 × depth); SD3.5's q/k RMS norms and Medium's second
  attention (``attn2``) are read from the keys.
* **Flux.1** (Black Forest Labs' layout: ``double_blocks.N…``, ``single_blocks.N…``, ``img_in``) →
  ``FluxTransformer2DModel``. diffusers' own converter fixes the width at 3072 (the 12B models), so
  the conversion here is the same key mapping with the width read from the weights. Head width 128,
  rotary axes (16, 56, 56); ``guidance_in`` present = a guidance-distilled model (dev), absent = schnell;
  ``img_in`` wider than 64 = Fill (extra image and mask channels).

Configs are built from these shapes (nothing is fetched); :func:`build_transformer` instantiates the
module with the converted weights in the wanted dtype. ComfyUI's ``fp8_scaled`` files are dequantized
first (:func:`dequantize_scaled_fp8`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from nodegraph_nodes.diffusion.checkpoint import _instantiate
from nodegraph_nodes.diffusion.files import ModelFileError

PREFIX = "model.diffusion_model."
SD3_HEAD_DIM = 64
FLUX_HEAD_DIM = 128
FLUX_AXES = (16, 56, 56)


@dataclass(frozen=True)
class TransformerKind:
    """What a transformer state dict is: ``family`` (``sd3`` / ``flux``), ``variant`` (flux: ``dev``,
    ``schnell``, ``fill``; sd3: ``sd3``, ``sd3.5``) and ``prefix`` (the key prefix in the file)."""

    family: str
    variant: str
    prefix: str


def detect_transformer(keys) -> TransformerKind | None:
    """The flow-transformer family of a state dict's keys, or ``None``."""
    keys = list(keys)
    for prefix in (PREFIX, ""):
        if prefix + "distilled_guidance_layer.in_proj.weight" in keys:  # Chroma: Flux's blocks, its own model
            return None
        if any(k.startswith(prefix + "joint_blocks.") for k in keys) and prefix + "x_embedder.proj.weight" in keys:
            qk = any(k.startswith(prefix) and ".ln_q." in k for k in keys)
            return TransformerKind("sd3", "sd3.5" if qk else "sd3", prefix)
        if any(k.startswith(prefix + "double_blocks.") for k in keys) and prefix + "img_in.weight" in keys:
            variant = "dev" if prefix + "guidance_in.in_layer.weight" in keys else "schnell"
            return TransformerKind("flux", variant, prefix)
    return None


def is_scaled_fp8(sd: dict[str, Any]) -> bool:
    return any(k.endswith(("scaled_fp8", ".scale_weight")) for k in sd)


def dequantize_scaled_fp8(sd: dict[str, Any]) -> dict[str, Any]:
    """A state dict already in memory with ComfyUI's quantised layers dequantised (``*_fp8_scaled`` files'
    ``scale_weight``, and every ``comfy_quant`` format: :func:`nodegraph_nodes.diffusion.quantized.
    dequantize_state_dict`); markers and scales are dropped. Other state dicts are returned unchanged.
    :func:`read_state_dict <nodegraph_nodes.diffusion.files.read_state_dict>` already does this while reading."""
    from nodegraph_nodes.diffusion.quantized import dequantize_state_dict

    return dequantize_state_dict(sd)


def strip_prefix(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    if not prefix:
        return dict(sd)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def marker_prefix(keys, prefixes, markers) -> str | None:
    """The first of ``prefixes`` under which every one of ``markers`` is among ``keys``, or ``None`` (the
    families' ``detect_prefix``)."""
    keyset = set(keys)
    for prefix in prefixes:
        if all(prefix + m in keyset for m in markers):
            return prefix
    return None


def count_indices(sd: dict, pattern: str) -> int:
    r"""How many distinct indices ``pattern``'s first group matches at the start of ``sd``'s keys (the
    blocks or layers of a stack, e.g. ``r"transformer_blocks\.(\d+)\."``)."""
    return len({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def _count(sd: dict[str, Any], block: str) -> int:
    ids = {int(m.group(1)) for k in sd if (m := re.match(re.escape(block) + r"\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


# -- SD3 --------------------------------------------------------------------------------------------

def sd3_config(sd: dict[str, Any]) -> dict:
    """``SD3Transformer2DModel`` config for MMDiT weights (prefix removed)."""
    proj = sd["x_embedder.proj.weight"]
    inner, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    if inner % SD3_HEAD_DIM:
        raise ModelFileError(f"the MMDiT width {inner} is not a multiple of {SD3_HEAD_DIM}; not an SD3 model")
    layers = _count(sd, "joint_blocks")
    pos = sd["pos_embed"]
    max_size = int(round(pos.shape[1] ** 0.5))
    dual = tuple(sorted({int(k.split(".")[1]) for k in sd if k.startswith("joint_blocks.") and ".attn2." in k}))
    out = int(sd["final_layer.linear.weight"].shape[0]) // (patch * patch)
    return {
        "_class_name": "SD3Transformer2DModel", "sample_size": max_size, "patch_size": patch,
        "in_channels": in_channels, "num_layers": layers, "attention_head_dim": SD3_HEAD_DIM,
        "num_attention_heads": inner // SD3_HEAD_DIM,
        "joint_attention_dim": int(sd["context_embedder.weight"].shape[1]),
        "caption_projection_dim": int(sd["context_embedder.weight"].shape[0]),
        "pooled_projection_dim": int(sd["y_embedder.mlp.0.weight"].shape[1]), "out_channels": out,
        "pos_embed_max_size": max_size, "dual_attention_layers": dual,
        "qk_norm": "rms_norm" if any(".ln_q." in k for k in sd) else None,
    }


def convert_sd3(sd: dict[str, Any]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    return convert_sd3_transformer_checkpoint_to_diffusers(dict(sd))


# -- Flux -------------------------------------------------------------------------------------------

def flux_config(sd: dict[str, Any]) -> dict:
    """``FluxTransformer2DModel`` config for BFL-layout Flux.1 weights (prefix removed)."""
    img_in = sd["img_in.weight"]
    inner, in_channels = int(img_in.shape[0]), int(img_in.shape[1])
    if inner % FLUX_HEAD_DIM:
        raise ModelFileError(f"the Flux width {inner} is not a multiple of {FLUX_HEAD_DIM}; not a Flux.1 model")
    out = int(sd["final_layer.linear.weight"].shape[0])
    return {
        "_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": in_channels,
        "out_channels": out if out != in_channels else None,
        "num_layers": _count(sd, "double_blocks"), "num_single_layers": _count(sd, "single_blocks"),
        "attention_head_dim": FLUX_HEAD_DIM, "num_attention_heads": inner // FLUX_HEAD_DIM,
        "joint_attention_dim": int(sd["txt_in.weight"].shape[1]),
        "pooled_projection_dim": int(sd["vector_in.in_layer.weight"].shape[1]),
        "guidance_embeds": "guidance_in.in_layer.weight" in sd, "axes_dims_rope": list(FLUX_AXES),
    }


_FLUX_TOP = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out",
}
_FLUX_DOUBLE = {
    "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2", "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_FLUX_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight", "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight",
}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous wants (scale, shift)."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def flux_original_keys(num_layers: int, num_single_layers: int) -> list[str]:
    """The BFL layout's linear-layer names (without ``.weight``) of a Flux.1 model of that depth."""
    names = [k for k in _FLUX_TOP if k != "final_layer.linear"] + ["final_layer.linear", "final_layer.adaLN_modulation.1"]
    for i in range(num_layers):
        names += [f"double_blocks.{i}.{n}" for n in list(_FLUX_DOUBLE) + ["img_attn.qkv", "txt_attn.qkv"]]
    for i in range(num_single_layers):
        names += [f"single_blocks.{i}.{n}" for n in ("linear1", "linear2", "modulation.lin")]
    return names


def convert_flux(sd: dict[str, Any], inner: int | None = None) -> dict[str, Any]:
    """BFL-layout Flux.1 weights → ``FluxTransformer2DModel`` keys (the width read from ``img_in``, or
    given: a LoRA's ``up`` matrices convert the same way, row blocks split and reordered like the
    weights they change)."""
    inner = int(sd["img_in.weight"].shape[0]) if inner is None else inner
    out: dict[str, Any] = {}
    for key, value in sd.items():
        name, _, kind = key.rpartition(".")
        if name in _FLUX_TOP:
            out[f"{_FLUX_TOP[name]}.{kind}"] = value
        elif name == "final_layer.adaLN_modulation.1":
            out[f"norm_out.linear.{kind}"] = _swap_halves(value)
        elif m := re.match(r"double_blocks\.(\d+)\.(.+)$", key):
            i, rest = m.groups()
            base = f"transformer_blocks.{i}."
            rname, _, rkind = rest.rpartition(".")
            if rest in _FLUX_NORMS:
                out[base + _FLUX_NORMS[rest]] = value
            elif rname in ("img_attn.qkv", "txt_attn.qkv"):
                names = ("to_q", "to_k", "to_v") if rname.startswith("img") else ("add_q_proj", "add_k_proj", "add_v_proj")
                for n, part in zip(names, value.chunk(3, dim=0)):
                    out[f"{base}attn.{n}.{rkind}"] = part
            elif rname in _FLUX_DOUBLE:
                out[f"{base}{_FLUX_DOUBLE[rname]}.{rkind}"] = value
            else:
                raise ModelFileError(f"unexpected Flux weight {key}")
        elif m := re.match(r"single_blocks\.(\d+)\.(.+)$", key):
            i, rest = m.groups()
            base = f"single_transformer_blocks.{i}."
            rname, _, rkind = rest.rpartition(".")
            if rest in _FLUX_NORMS:
                out[base + _FLUX_NORMS[rest]] = value
            elif rname == "linear1":
                mlp = value.shape[0] - 3 * inner
                q, k, v, proj = torch.split(value, (inner, inner, inner, mlp), dim=0)
                for n, part in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", proj)):
                    out[f"{base}{n}.{rkind}"] = part
            elif rname == "linear2":
                out[f"{base}proj_out.{rkind}"] = value
            elif rname == "modulation.lin":
                out[f"{base}norm.linear.{rkind}"] = value
            else:
                raise ModelFileError(f"unexpected Flux weight {key}")
        else:
            raise ModelFileError(f"unexpected Flux weight {key}")
    return out


# -- building ---------------------------------------------------------------------------------------

def transformer_config(kind: TransformerKind, sd: dict[str, Any]) -> dict:
    return sd3_config(sd) if kind.family == "sd3" else flux_config(sd)


def build_transformer(kind: TransformerKind, sd: dict[str, Any], dtype: torch.dtype):
    """The diffusers transformer of ``kind`` from single-file weights (prefix already removed)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cfg = transformer_config(kind, sd)
    if kind.family == "sd3":
        return _instantiate(SD3Transformer2DModel, cfg, convert_sd3(sd), dtype, "SD3 transformer")
    return _instantiate(FluxTransformer2DModel, cfg, convert_flux(sd), dtype, "Flux transformer")
