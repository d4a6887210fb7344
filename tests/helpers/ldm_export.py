"""Test helper: diffusers/HF state dicts → the original single-file (LDM / SGM) key layout.

The reverse of what the loaders do, written independently of them (after diffusers'
``scripts/convert_diffusers_to_original_stable_diffusion.py``), so that the tests save tiny models
exactly as real SD 1.x / SDXL checkpoints are laid out.
"""

from __future__ import annotations

import torch


def unet_to_ldm(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    levels = len(config.block_out_channels)
    L = config.layers_per_block
    down_attn = [t.startswith("CrossAttn") for t in config.down_block_types]
    up_attn = [t.startswith("CrossAttn") for t in config.up_block_types]
    top = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
           "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out.",
           "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2."}
    prefixes: list[tuple[str, str]] = [(ldm, hf) for ldm, hf in top.items()]
    # a class embedding (Lotus-D's task embedding) is the same LDM label_emb as SDXL's add_embedding
    prefixes += [("label_emb.0.0.", "class_embedding.linear_1."), ("label_emb.0.2.", "class_embedding.linear_2.")]
    for i in range(levels):
        for j in range(L):
            prefixes.append((f"input_blocks.{i * (L + 1) + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn[i]:
                prefixes.append((f"input_blocks.{i * (L + 1) + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(L + 1):
            prefixes.append((f"output_blocks.{i * (L + 1) + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn[i]:
                prefixes.append((f"output_blocks.{i * (L + 1) + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            prefixes.append((f"input_blocks.{(i + 1) * (L + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            prefixes.append((f"output_blocks.{i * (L + 1) + L}.{2 if up_attn[i] else 1}.",
                             f"up_blocks.{i}.upsamplers.0."))
    prefixes.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        prefixes.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    resnet = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
              ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
    out = {}
    for key, value in sd.items():
        new = None
        for ldm, hf in prefixes:
            if key.startswith(hf):
                rest = key[len(hf):]
                if "resnets" in hf:
                    for a, b in resnet:
                        if rest.startswith(b + "."):
                            rest = a + rest[len(b):]
                new = ldm + rest
                break
        if new is None:
            raise KeyError(f"no LDM name for {key}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    levels = len(config.block_out_channels)
    L = config.layers_per_block
    prefixes: list[tuple[str, str]] = []
    for i in range(levels):
        for j in range(L):
            prefixes.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        for j in range(L + 1):
            prefixes.append((f"decoder.up.{levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
        if i < levels - 1:
            prefixes.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
            prefixes.append((f"decoder.up.{levels - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
    for part in ("encoder", "decoder"):
        for j in range(2):
            prefixes.append((f"{part}.mid.block_{j + 1}.", f"{part}.mid_block.resnets.{j}."))
        prefixes.append((f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0."))
        prefixes.append((f"{part}.norm_out.", f"{part}.conv_norm_out."))
    attn = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    out = {}
    for key, value in sd.items():
        new = key
        for ldm, hf in prefixes:
            if key.startswith(hf):
                rest = key[len(hf):]
                if "attentions" in hf:
                    for a, b in attn:
                        if rest.startswith(b):
                            rest = a + rest[len(b):]
                    if value.ndim == 2:
                        value = value[:, :, None, None]
                rest = rest.replace("conv_shortcut", "nin_shortcut")
                new = ldm + rest
                break
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text weights → ``<prefix>text_model.…`` (SD1 ``cond_stage_model.transformer.``)."""
    out = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        key = key if key.startswith("text_model.") else "text_model." + key
        out[prefix + key] = value
    return out


def clip_to_open_clip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP (with projection) → OpenCLIP layout under ``prefix`` (e.g. ``conditioner.embedders.1.model.``)."""
    out = {}
    layers: dict[str, dict[str, torch.Tensor]] = {}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for key, value in sd.items():
        k = key[len("text_model."):] if key.startswith("text_model.") else key
        if k.endswith("position_ids"):
            continue
        if k == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif k == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif k.startswith("final_layer_norm."):
            out[prefix + "ln_final." + k.rsplit(".", 1)[1]] = value
        elif k == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif k.startswith("encoder.layers."):
            _, _, idx, rest = k.split(".", 3)
            base = f"{prefix}transformer.resblocks.{idx}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                layers.setdefault(base, {})[rest] = value
                continue
            for a, b in names.items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
            out[base + rest] = value
    for base, parts in layers.items():
        for kind in ("weight", "bias"):
            out[base + f"attn.in_proj_{kind}"] = torch.cat(
                [parts[f"self_attn.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")], dim=0)
    return out
