"""A tiny random-weight HunyuanVideo 1.5 model built from the real diffusers / transformers classes and saved in
the single-file layouts users have.

``build_hunyuan_video15(root)`` writes into ``root/models``: ``diffusion_models/tiny_hv15_t2v.safetensors`` (the
text-to-video transformer in ComfyUI's names, fused q/k/v: ``double_blocks.N.img_attn.qkv``, ``img_mod.lin``,
``txt_in.t_embedder.in_layer`` …) and ``tiny_hv15_i2v.safetensors`` (another one, in Tencent's names: separate
``img_attn_q`` / ``_k`` / ``_v``, ``img_mod.linear``, ``mlp.fc1``), ``text_encoders/tiny_qwen25vl.safetensors``
(Qwen2.5-VL, three text layers, ComfyUI's layout) with ``text_encoders/qwen25_tokenizer/``,
``clip_vision/tiny_siglip.safetensors`` (SigLIP in transformers' names, as ComfyUI's ``sigclip_vision_patch14_384``),
``text_encoders/tiny_byt5.safetensors`` (a T5 encoder over ByT5's 384 byte tokens) and
``vae/tiny_hv15_vae.safetensors`` (Tencent's VAE names: ``encoder.down.N.block.M``, ``mid.attn_1.q``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _random_transformer
from tests.dit.tiny_qwen import QWEN3_CHAT_TEMPLATE, TE_WIDTH, qwen25vl, qwen25vl_comfy_layout, write_qwen_tokenizer
from tests.helpers.tiny_sd import _randomize

BYT5_WIDTH = 32
IMAGE_WIDTH = 24  # SigLIP's 1152 in the release


def transformer(seed: int, target_size: int = 640):
    """``target_size`` (pixels) only steers diffusers' image-to-video pipeline's choice of the video size."""
    from diffusers import HunyuanVideo15Transformer3DModel

    net = HunyuanVideo15Transformer3DModel(in_channels=65, out_channels=32, num_attention_heads=1,
                                           attention_head_dim=128, num_layers=2, num_refiner_layers=1, mlp_ratio=2.0,
                                           text_embed_dim=TE_WIDTH, text_embed_2_dim=BYT5_WIDTH,
                                           image_embed_dim=IMAGE_WIDTH, rope_axes_dim=(16, 56, 56),
                                           target_size=target_size)
    return _random_transformer(net, seed)


def byt5():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(9)
    model = T5EncoderModel(T5Config(vocab_size=384, d_model=BYT5_WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                    relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                                    is_encoder_decoder=False, use_cache=False)).eval()
    _randomize(model, 0.2)
    return model


def siglip():
    """A tiny SigLIP vision tower (32×32 images, 8×8 patches: 16 states), one head as the loader assumes below 64
    wide."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(11)
    model = SiglipVisionModel(SiglipVisionConfig(hidden_size=IMAGE_WIDTH, intermediate_size=48, num_hidden_layers=2,
                                                 num_attention_heads=1, image_size=32, patch_size=8)).eval()
    _randomize(model, 0.2)
    return model


def vae():
    from diffusers import AutoencoderKLHunyuanVideo15

    torch.manual_seed(7)
    model = AutoencoderKLHunyuanVideo15(block_out_channels=(8, 16, 32, 64, 64), layers_per_block=1).eval()
    _randomize(model, 0.1)
    return model


# -- single-file layouts (diffusers → the files' names) ----------------------------------------------------

#: diffusers block names → (ComfyUI's, Tencent's); ``None``: fused / split q/k/v, handled apart
_BLOCK = (("norm1.linear.", "img_mod.lin.", "img_mod.linear."),
          ("norm1_context.linear.", "txt_mod.lin.", "txt_mod.linear."),
          ("attn.norm_q.", "img_attn.norm.query_norm.", "img_attn_q_norm."),
          ("attn.norm_k.", "img_attn.norm.key_norm.", "img_attn_k_norm."),
          ("attn.norm_added_q.", "txt_attn.norm.query_norm.", "txt_attn_q_norm."),
          ("attn.norm_added_k.", "txt_attn.norm.key_norm.", "txt_attn_k_norm."),
          ("attn.to_out.0.", "img_attn.proj.", "img_attn_proj."),
          ("attn.to_add_out.", "txt_attn.proj.", "txt_attn_proj."),
          ("ff.net.0.proj.", "img_mlp.0.", "img_mlp.fc1."), ("ff.net.2.", "img_mlp.2.", "img_mlp.fc2."),
          ("ff_context.net.0.proj.", "txt_mlp.0.", "txt_mlp.fc1."), ("ff_context.net.2.", "txt_mlp.2.", "txt_mlp.fc2."))
_QKV = ((("attn.to_q.", "attn.to_k.", "attn.to_v."), "img_attn.qkv.", ("img_attn_q.", "img_attn_k.", "img_attn_v.")),
        (("attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj."), "txt_attn.qkv.",
         ("txt_attn_q.", "txt_attn_k.", "txt_attn_v.")))
_REFINER = (("norm1.", "norm1.", "norm1."), ("norm2.", "norm2.", "norm2."),
            ("attn.to_out.0.", "self_attn.proj.", "self_attn_proj."),
            ("ff.net.0.proj.", "mlp.0.", "mlp.fc1."), ("ff.net.2.", "mlp.2.", "mlp.fc2."),
            ("norm_out.linear.", "adaLN_modulation.1.", "adaLN_modulation.1."))
_TOP = (("x_embedder.proj.", "img_in.proj.", "img_in.proj."),
        ("time_embed.timestep_embedder.linear_1.", "time_in.in_layer.", "time_in.mlp.0."),
        ("time_embed.timestep_embedder.linear_2.", "time_in.out_layer.", "time_in.mlp.2."),
        ("context_embedder.proj_in.", "txt_in.input_embedder.", "txt_in.input_embedder."),
        ("context_embedder.time_text_embed.timestep_embedder.linear_1.", "txt_in.t_embedder.in_layer.",
         "txt_in.t_embedder.mlp.0."),
        ("context_embedder.time_text_embed.timestep_embedder.linear_2.", "txt_in.t_embedder.out_layer.",
         "txt_in.t_embedder.mlp.2."),
        ("context_embedder.time_text_embed.text_embedder.linear_1.", "txt_in.c_embedder.in_layer.",
         "txt_in.c_embedder.linear_1."),
        ("context_embedder.time_text_embed.text_embedder.linear_2.", "txt_in.c_embedder.out_layer.",
         "txt_in.c_embedder.linear_2."),
        ("context_embedder_2.norm.", "byt5_in.layernorm.", "byt5_in.layernorm."),
        ("context_embedder_2.linear_1.", "byt5_in.fc1.", "byt5_in.fc1."),
        ("context_embedder_2.linear_2.", "byt5_in.fc2.", "byt5_in.fc2."),
        ("context_embedder_2.linear_3.", "byt5_in.fc3.", "byt5_in.fc3."),
        ("image_embedder.norm_in.", "vision_in.proj.0.", "vision_in.proj.0."),
        ("image_embedder.linear_1.", "vision_in.proj.1.", "vision_in.proj.1."),
        ("image_embedder.linear_2.", "vision_in.proj.3.", "vision_in.proj.3."),
        ("image_embedder.norm_out.", "vision_in.proj.4.", "vision_in.proj.4."),
        ("cond_type_embed.", "cond_type_embedding.", "cond_type_embedding."),
        ("proj_out.", "final_layer.linear.", "final_layer.linear."))


def _swap(rest: str, table, which: int) -> str:
    for names in table:
        if rest.startswith(names[0]):
            return names[which] + rest[len(names[0]):]
    raise KeyError(rest)


def transformer_file_layout(sd: dict[str, torch.Tensor], tencent: bool = False, prefix: str = "") -> dict:
    """A diffusers ``HunyuanVideo15Transformer3DModel`` state dict in ComfyUI's names (fused q/k/v), or Tencent's
    (``tencent``: separate q/k/v), each key under ``prefix``."""
    which = 2 if tencent else 1
    out: dict = {}
    sd = dict(sd)
    for m in sorted({re.match(r"(transformer_blocks\.\d+\.)", k).group(1) for k in sd
                     if k.startswith("transformer_blocks.")}):
        index = m.split(".")[1]
        for names, fused, split in _QKV:
            for kind in ("weight", "bias"):
                parts = [sd.pop(f"{m}{n}{kind}") for n in names]
                if tencent:
                    for name, part in zip(split, parts):
                        out[f"double_blocks.{index}.{name}{kind}"] = part
                else:
                    out[f"double_blocks.{index}.{fused}{kind}"] = torch.cat(parts)
    for m in sorted({re.match(r"(context_embedder\.token_refiner\.refiner_blocks\.\d+\.)", k).group(1) for k in sd
                     if k.startswith("context_embedder.token_refiner.")}):
        index = m.split(".")[3]
        base = f"txt_in.individual_token_refiner.blocks.{index}."
        for kind in ("weight", "bias"):
            qkv = torch.cat([sd.pop(f"{m}attn.to_{n}.{kind}") for n in "qkv"])
            out[f"{base}{'self_attn_qkv' if tencent else 'self_attn.qkv'}.{kind}"] = qkv
    for key, value in sd.items():
        if key.startswith("transformer_blocks."):
            block, rest = re.match(r"transformer_blocks\.(\d+)\.(.*)", key).groups()
            out[f"double_blocks.{block}.{_swap(rest, _BLOCK, which)}"] = value
        elif key.startswith("context_embedder.token_refiner.refiner_blocks."):
            block, rest = re.match(r"context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.(.*)", key).groups()
            out[f"txt_in.individual_token_refiner.blocks.{block}.{_swap(rest, _REFINER, which)}"] = value
        elif key.startswith("norm_out.linear."):  # diffusers: scale then shift; the files: shift then scale
            scale, shift = value.chunk(2)
            out["final_layer.adaLN_modulation.1." + key[len("norm_out.linear."):]] = torch.cat([shift, scale])
        else:
            out[_swap(key, _TOP, which)] = value
    return {prefix + k: v.contiguous() for k, v in out.items()}


def vae_file_layout(sd: dict[str, torch.Tensor]) -> dict:
    """A diffusers ``AutoencoderKLHunyuanVideo15`` state dict in Tencent's names (ComfyUI's VAE file)."""
    out = {}
    for key, value in sd.items():
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", key)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.up.\1.block.\2.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", r"decoder.up.\1.upsample.", new)
        new = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", new)
        new = re.sub(r"\.mid_block\.attentions\.0\.to_([qkv])\.", r".mid.attn_1.\1.", new)
        new = new.replace(".mid_block.attentions.0.", ".mid.attn_1.")
        out[new] = value.contiguous()
    return out


@dataclass
class TinyHunyuanVideo15:
    transformer: Any
    i2v_transformer: Any
    text_encoder: Any
    tokenizer: Any
    byt5: Any
    vae: Any
    siglip: Any
    root: Path


def build_hunyuan_video15(root: Path) -> TinyHunyuanVideo15:
    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "clip_vision"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tokenizer = write_qwen_tokenizer(models / "text_encoders" / "qwen25_tokenizer", QWEN3_CHAT_TEMPLATE)
    te, glyph, vision, autoencoder = qwen25vl(tokenizer, layers=3), byt5(), siglip(), vae()
    net, i2v = transformer(61), transformer(63, target_size=32)
    save_file(transformer_file_layout(net.state_dict()), str(models / "diffusion_models" / "tiny_hv15_t2v.safetensors"))
    save_file(transformer_file_layout(i2v.state_dict(), tencent=True, prefix="model.diffusion_model."),
              str(models / "diffusion_models" / "tiny_hv15_i2v.safetensors"))
    save_file(qwen25vl_comfy_layout(te), str(models / "text_encoders" / "tiny_qwen25vl.safetensors"))
    save_file({k: v.clone().contiguous() for k, v in glyph.state_dict().items()},
              str(models / "text_encoders" / "tiny_byt5.safetensors"))
    save_file(vae_file_layout(autoencoder.state_dict()), str(models / "vae" / "tiny_hv15_vae.safetensors"))
    save_file({k if k.startswith("vision_model.") else "vision_model." + k: v.contiguous()  # the files' names
               for k, v in vision.state_dict().items() if "position_ids" not in k},
              str(models / "clip_vision" / "tiny_siglip.safetensors"))
    return TinyHunyuanVideo15(net, i2v, te, tokenizer, glyph, autoencoder, vision, root)
