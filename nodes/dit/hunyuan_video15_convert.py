"""HunyuanVideo 1.5 single-file key layouts → diffusers' names (``HunyuanVideo15Transformer3DModel``,
``AutoencoderKLHunyuanVideo15``). Pure functions on state dicts; building and loading are in
:mod:`.hunyuan_video15`.

Transformer files come in two families of names, both read (per key, so mixed files too):

* Tencent's release: ``double_blocks.N.img_attn_q`` / ``_k`` / ``_v`` (or a fused ``img_attn_qkv``),
  ``img_attn_q_norm``, ``img_attn_proj``, ``img_mod.linear``, ``img_mlp.fc1`` / ``fc2``, ``txt_in.t_embedder.mlp.0``,
  ``txt_in.c_embedder.linear_1``, ``txt_in.individual_token_refiner.blocks.N.self_attn_qkv`` / ``mlp.fc1``,
  ``time_in.mlp.0``.
* ComfyUI's own (its HunyuanVideo model, which loads the Tencent names by renaming them): ``img_attn.qkv``,
  ``img_attn.norm.query_norm.weight`` (older files ``.scale``), ``img_attn.proj``, ``img_mod.lin``,
  ``img_mlp.0`` / ``2``, ``t_embedder.in_layer`` / ``out_layer``, ``self_attn.qkv``, ``mlp.0`` / ``2``.

Shared by both: ``img_in.proj``, ``byt5_in.layernorm`` / ``fc1..3``, ``vision_in.proj.0/1/3/4``,
``cond_type_embedding``, ``final_layer.linear`` / ``adaLN_modulation.1`` (shift then scale; diffusers'
``norm_out`` wants scale then shift). Fused q/k/v are split in three equal rows. A key of neither layout is an
error naming it. Meanflow (``time_r_in``, the 1080p super-resolution model) and guidance-embedded files
(``guidance_in``) are refused: diffusers' HunyuanVideo 1.5 class has no guidance embedding, and the SR
model's conditioning is not built here.

VAE files (ComfyUI's ``hunyuanvideo15_vae_fp16.safetensors``, Tencent's names): ``encoder.down.N.block.M``,
``encoder.down.N.downsample``, ``decoder.up.N.block.M``, ``decoder.up.N.upsample``, ``mid.block_1`` / ``block_2``,
``mid.attn_1.q`` / ``k`` / ``v`` / ``proj_out``; everything else keeps its name.
"""

from __future__ import annotations

import re

import torch

from nodegraph_nodes.diffusion.files import ModelFileError

# -- transformer ------------------------------------------------------------------------------------------

#: (pattern on a key's rest after its block prefix, diffusers name) for the dual-stream blocks
_DOUBLE = (
    (r"img_mod\.(?:linear|lin)\.", "norm1.linear."),
    (r"txt_mod\.(?:linear|lin)\.", "norm1_context.linear."),
    (r"img_attn_q\.", "attn.to_q."), (r"img_attn_k\.", "attn.to_k."), (r"img_attn_v\.", "attn.to_v."),
    (r"txt_attn_q\.", "attn.add_q_proj."), (r"txt_attn_k\.", "attn.add_k_proj."), (r"txt_attn_v\.", "attn.add_v_proj."),
    (r"img_attn(?:_q_norm|\.norm\.query_norm)\.(?:weight|scale)$", "attn.norm_q.weight"),
    (r"img_attn(?:_k_norm|\.norm\.key_norm)\.(?:weight|scale)$", "attn.norm_k.weight"),
    (r"txt_attn(?:_q_norm|\.norm\.query_norm)\.(?:weight|scale)$", "attn.norm_added_q.weight"),
    (r"txt_attn(?:_k_norm|\.norm\.key_norm)\.(?:weight|scale)$", "attn.norm_added_k.weight"),
    (r"img_attn(?:_proj|\.proj)\.", "attn.to_out.0."),
    (r"txt_attn(?:_proj|\.proj)\.", "attn.to_add_out."),
    (r"img_mlp\.(?:fc1|0)\.", "ff.net.0.proj."), (r"img_mlp\.(?:fc2|2)\.", "ff.net.2."),
    (r"txt_mlp\.(?:fc1|0)\.", "ff_context.net.0.proj."), (r"txt_mlp\.(?:fc2|2)\.", "ff_context.net.2."),
)
_DOUBLE_QKV = ((r"img_attn(?:_qkv|\.qkv)\.", ("attn.to_q.", "attn.to_k.", "attn.to_v.")),
               (r"txt_attn(?:_qkv|\.qkv)\.", ("attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj.")))
#: the token refiner's blocks
_REFINER = (
    (r"norm1\.", "norm1."), (r"norm2\.", "norm2."),
    (r"self_attn(?:_proj|\.proj)\.", "attn.to_out.0."),
    (r"mlp\.(?:fc1|0)\.", "ff.net.0.proj."), (r"mlp\.(?:fc2|2)\.", "ff.net.2."),
    (r"adaLN_modulation\.1\.", "norm_out.linear."),
)
_REFINER_QKV = r"self_attn(?:_qkv|\.qkv)\."
#: the other (top-level) names
_TOP = (
    (r"img_in\.proj\.", "x_embedder.proj."),
    (r"time_in\.(?:mlp\.0|in_layer)\.", "time_embed.timestep_embedder.linear_1."),
    (r"time_in\.(?:mlp\.2|out_layer)\.", "time_embed.timestep_embedder.linear_2."),
    (r"txt_in\.input_embedder\.", "context_embedder.proj_in."),
    (r"txt_in\.t_embedder\.(?:mlp\.0|in_layer)\.", "context_embedder.time_text_embed.timestep_embedder.linear_1."),
    (r"txt_in\.t_embedder\.(?:mlp\.2|out_layer)\.", "context_embedder.time_text_embed.timestep_embedder.linear_2."),
    (r"txt_in\.c_embedder\.(?:linear_1|in_layer)\.", "context_embedder.time_text_embed.text_embedder.linear_1."),
    (r"txt_in\.c_embedder\.(?:linear_2|out_layer)\.", "context_embedder.time_text_embed.text_embedder.linear_2."),
    (r"byt5_in\.layernorm\.", "context_embedder_2.norm."),
    (r"byt5_in\.fc1\.", "context_embedder_2.linear_1."), (r"byt5_in\.fc2\.", "context_embedder_2.linear_2."),
    (r"byt5_in\.fc3\.", "context_embedder_2.linear_3."),
    (r"vision_in\.proj\.0\.", "image_embedder.norm_in."), (r"vision_in\.proj\.1\.", "image_embedder.linear_1."),
    (r"vision_in\.proj\.3\.", "image_embedder.linear_2."), (r"vision_in\.proj\.4\.", "image_embedder.norm_out."),
    (r"cond_type_embedding\.", "cond_type_embed."),
    (r"final_layer\.linear\.", "proj_out."),
)
_REFUSED = {"time_r_in.": "a meanflow model (HunyuanVideo 1.5's 1080p super-resolution transformer)",
            "guidance_in.": "a guidance-distilled model with a guidance embedding"}


def _rename(rest: str, rules) -> str | None:
    for pattern, new in rules:
        if m := re.match(pattern, rest):
            return new + rest[m.end():]
    return None


def _split_qkv(rest: str, pattern: str, names: tuple[str, str, str], value: torch.Tensor, prefix: str,
               out: dict) -> bool:
    if not (m := re.match(pattern, rest)):
        return False
    for name, part in zip(names, value.chunk(3, dim=0)):
        out[prefix + name + rest[m.end():]] = part.contiguous()
    return True


def _swap_shift_scale(value: torch.Tensor) -> torch.Tensor:
    shift, scale = value.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def transformer_to_diffusers(sd: dict) -> dict:
    """A HunyuanVideo 1.5 transformer state dict (Tencent's or ComfyUI's names, no prefix) in diffusers'
    names."""
    out: dict = {}
    for key, value in sd.items():
        for start, what in _REFUSED.items():
            if key.startswith(start):
                raise ModelFileError(f"this HunyuanVideo 1.5 transformer is {what} ({key}); nodegraph runs the "
                                     "480p/720p text- and image-to-video transformers")
        if m := re.match(r"double_blocks\.(\d+)\.", key):
            prefix, rest = f"transformer_blocks.{m.group(1)}.", key[m.end():]
            if any(_split_qkv(rest, p, names, value, prefix, out) for p, names in _DOUBLE_QKV):
                continue
            new = _rename(rest, _DOUBLE)
            new = None if new is None else prefix + new
        elif m := re.match(r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.", key):
            prefix, rest = f"context_embedder.token_refiner.refiner_blocks.{m.group(1)}.", key[m.end():]
            if _split_qkv(rest, _REFINER_QKV, ("attn.to_q.", "attn.to_k.", "attn.to_v."), value, prefix, out):
                continue
            new = _rename(rest, _REFINER)
            new = None if new is None else prefix + new
        elif key.startswith("final_layer.adaLN_modulation.1."):
            out["norm_out.linear." + key[len("final_layer.adaLN_modulation.1."):]] = _swap_shift_scale(value)
            continue
        else:
            new = _rename(key, _TOP)
        if new is None:
            raise ModelFileError(f"unknown HunyuanVideo 1.5 transformer weight {key!r} (neither Tencent's nor "
                                 "ComfyUI's names)")
        out[new] = value
    return out


# -- VAE --------------------------------------------------------------------------------------------------

_VAE = (
    (r"(encoder|decoder)\.down\.(\d+)\.block\.(\d+)\.", r"\1.down_blocks.\2.resnets.\3."),
    (r"encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"decoder\.up\.(\d+)\.block\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2."),
    (r"decoder\.up\.(\d+)\.upsample\.", r"decoder.up_blocks.\1.upsamplers.0."),
    (r"(encoder|decoder)\.mid\.block_([12])\.", None),
    (r"(encoder|decoder)\.mid\.attn_1\.([qkv])\.", r"\1.mid_block.attentions.0.to_\2."),
    (r"(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
)


def vae_to_diffusers(sd: dict) -> dict:
    """A HunyuanVideo 1.5 VAE state dict in Tencent's names (ComfyUI's file) in diffusers' names."""
    out = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in _VAE:
            if m := re.match(pattern, key):
                if repl is None:  # mid.block_1 / block_2 → mid_block.resnets.0 / 1
                    repl = rf"\1.mid_block.resnets.{int(m.group(2)) - 1}."
                new = m.expand(repl) + key[m.end():]
                break
        out[new] = value
    return out
