"""A tiny random-weight Wan Animate 2 transformer (diffusers' ``WanAnimate2Transformer3DModel``, ten blocks so the
unconditional branch's skipped block 9 exists, its image projection sized to the tiny CLIP vision tower of
:mod:`tests.dit.tiny_wan`) saved in the layout of Comfy-Org's repackaged files (Wan 2.1 I2V names
``blocks.N.self_attn.q.weight`` … under ``model.diffusion_model.``, the ``__metadata__`` entry ``config`` =
``{"transformer": {"model_type": "animate2"}}``) and, for the base model, also in Wan-AI's release layout (every
block wrapped: ``blocks.N.block.self_attn.q.weight``). diffusers' ``convert_wan_animate_2_transformer_to_diffusers``
reads both. The text encoder, tokenizer, VAE and CLIP vision tower are :func:`tests.dit.tiny_wan.build_wan`'s."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _random_transformer
from tests.dit.tiny_wan import CLIP_VISION_WIDTH, TEXT_WIDTH

FILE = "tiny_wan_animate2.safetensors"
DISTILLED_FILE = "tiny_wan_animate2_distill.safetensors"
OFFICIAL_FILE = "tiny_wan_animate2_official.safetensors"
COMFY_METADATA = {"config": json.dumps({"transformer": {"model_type": "animate2"}})}
_RENAMES = ((".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."), (".to_out.0.", ".o."),
            (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."))


def animate2_transformer(seed: int = 61):
    from nodegraph_nodes.dit.wan_animate2 import _Factory

    torch.manual_seed(0)
    net = _Factory.from_config({"patch_size": (1, 2, 2), "in_dim": 36, "dim": 256, "ffn_dim": 96, "freq_dim": 32,
                                "text_dim": TEXT_WIDTH, "out_dim": 16, "num_heads": 2, "num_layers": 10,
                                "cross_attn_norm": True, "use_img_emb": True, "image_dim": CLIP_VISION_WIDTH})
    net = _random_transformer(net, seed)
    with torch.no_grad():  # smaller modulation and gate scale keep ten random blocks in a sane range
        for block in net.blocks:
            block.modulation.mul_(0.5)
    return net


def official_layout(sd: dict[str, torch.Tensor], prefix: str = "model.diffusion_model.",
                    wrapped: bool = True) -> dict:
    """The original names (diffusers' converter inverted) for a diffusers-layout state dict, the blocks wrapped
    (``blocks.N.block.``, Wan-AI's release) or not (Comfy-Org's repackaged files)."""
    out = {}
    for key, value in sd.items():
        new = key
        if new.startswith("blocks."):
            head, index, rest = new.split(".", 2)
            new = f"{head}.{index}.block.{rest}" if wrapped else new
            if ".self_attn." in new or ".cross_attn." in new:
                for a, b in _RENAMES:
                    if a in new:
                        new = new.replace(a, b)
                        break
        out[prefix + new] = value.detach().clone().contiguous()
    return out


def write_animate2(models: Path) -> tuple:
    """The base and distilled tiny transformers into ``models/diffusion_models`` (Comfy-Org's layout; the base also
    in Wan-AI's); the two networks."""
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    base, distilled = animate2_transformer(61), animate2_transformer(67)
    folder = models / "diffusion_models"
    save_file(official_layout(base.state_dict(), wrapped=False), str(folder / FILE), metadata=COMFY_METADATA)
    save_file(official_layout(distilled.state_dict(), wrapped=False), str(folder / DISTILLED_FILE),
              metadata=COMFY_METADATA)
    save_file(official_layout(base.state_dict()), str(folder / OFFICIAL_FILE))
    return base, distilled


def write_original_lora(net, path: Path, rank: int = 4, seed: int = 3) -> int:
    """A random LoRA in Wan's original names (``diffusion_model.blocks.N.self_attn.q.lora_down.weight``, as
    lightx2v's files) on the attention and feed-forward layers of the Wan Animate 2 ``net``'s blocks; how many
    layers it holds."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks.") and (
                ".self_attn." in name or ".cross_attn." in name or ".ffn." in name):
            key = next(iter(official_layout({name + ".weight": module.weight}, prefix="diffusion_model.",
                                            wrapped=False)))
            base = key[:-len(".weight")]
            out_f, in_f = module.weight.shape
            sd[base + ".lora_down.weight"] = torch.randn(rank, in_f, generator=gen) * 0.3
            sd[base + ".lora_up.weight"] = torch.randn(out_f, rank, generator=gen) * 0.3
            sd[base + ".alpha"] = torch.tensor(float(rank))
    save_file(sd, str(path))
    return len(sd) // 3
