"""Stable Diffusion checkpoints → diffusers modules, offline.

Single files in the original (LDM / SGM) key layout are recognised by their keys (:func:`detect_family`:
``sd1``, ``sd2``, ``sdxl``, ``sdxl_refiner``). Each family ships its configs in ``nodes/configs/<family>/``
(unet, vae, text encoder(s), scheduler, plus ``family.json`` with the text-encoder recipe and preview
factors); the shape-dependent fields (channels, depths, context size, vocabulary …) are read from the
state dict, so the same code loads real and tiny models. The weights are converted with diffusers'
own single-file conversion functions and assigned into modules built from those configs — nothing is
fetched from a hub. Diffusers folders (``model_index.json``) are read with their own configs.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from nodegraph_nodes.diffusion.files import ModelFileError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."
FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")


@lru_cache(maxsize=None)
def _family_file(family: str, name: str) -> str:
    path = CONFIG_DIR / family / name
    return path.read_text(encoding="utf-8") if path.exists() else ""


def family_config(family: str, name: str) -> dict:
    """A shipped config (``unet.json``, ``vae.json``, ``text_encoder.json`` …) of a family; a copy."""
    text = _family_file(family, name)
    if not text:
        raise KeyError(f"no {name} for family {family}")
    return json.loads(text)


# -- detection ------------------------------------------------------------------------------------

def detect_family(sd: dict[str, Any]) -> str | None:
    """The model family of a full single-file checkpoint, or ``None`` if it is not one we know."""
    if SDXL_CLIP_G_PREFIX + "ln_final.weight" in sd or SDXL_CLIP_G_PREFIX + "positional_embedding" in sd:
        return "sdxl"
    if REFINER_CLIP_G_PREFIX + "positional_embedding" in sd:
        return "sdxl_refiner"
    if SD2_CLIP_PREFIX + "positional_embedding" in sd:
        return "sd2"
    if any(k.startswith(SD1_CLIP_PREFIX) for k in sd):
        return "sd1"
    if any(k.startswith(UNET_PREFIX) for k in sd):
        return detect_unet_family({k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)})
    return None


def detect_unet_family(unet_sd: dict[str, Any]) -> str | None:
    """Family of a bare LDM UNet state dict (keys ``input_blocks.…``)."""
    if "input_blocks.0.0.weight" not in unet_sd:
        return None
    if "label_emb.0.0.weight" in unet_sd and not is_lotus_unet(unet_sd):
        levels = _unet_levels(unet_sd)
        return "sdxl_refiner" if len(levels) == 4 else "sdxl"
    proj = next((v for k, v in unet_sd.items() if k.endswith("proj_in.weight")), None)
    if proj is not None and proj.ndim == 2:
        return "sd2"
    return "sd1"


#: Lotus-D's class-embedding input: its task embedding (sin and cos of the task label (1, 0), depth)
LOTUS_TASK_WIDTH = 4


def is_lotus_unet(unet_sd: dict[str, Any]) -> bool:
    """A Lotus-D UNet (an SD 2.x UNet with a 4-wide class embedding, ComfyUI's ``LotusD``), LDM or diffusers
    key names."""
    for key in ("label_emb.0.0.weight", "class_embedding.linear_1.weight"):
        weight = unet_sd.get(key)
        if weight is not None and len(weight.shape) == 2 and int(weight.shape[1]) == LOTUS_TASK_WIDTH:
            return True
    return False


def describe_contents(sd: dict[str, Any]) -> str:
    """A short guess of what a state dict is, for error messages."""
    keys = list(sd)
    if any(k.startswith(("encoder.down.", "encoder.conv_in.", "decoder.up.", "first_stage_model.")) for k in keys):
        return "a VAE (use VAELoader)"
    if any("lora_" in k or ".lora." in k or "lora_A" in k for k in keys):
        return "a LoRA (use LoraLoader)"
    if any(k.startswith(("input_blocks.", "model.diffusion_model.")) for k in keys):
        return "a diffusion model without text encoder and VAE (use UNETLoader)"
    if any("text_model." in k or "transformer.resblocks" in k for k in keys):
        return "a text encoder (use CLIPLoader)"
    if any(k.startswith(("double_blocks.", "transformer_blocks.", "joint_blocks.")) for k in keys):
        return "a transformer diffusion model of a family this engine does not support yet"
    if any(k.startswith(("model.layers.", "layers.")) for k in keys):
        return "a language model"
    return "not a model this engine recognises"


# -- UNet -----------------------------------------------------------------------------------------

def _block_ids(sd: dict[str, Any], prefix: str) -> list[int]:
    ids = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(ids)


def _unet_levels(sd: dict[str, Any]) -> list[dict[str, Any]]:
    """Per resolution level: channels, resnet count, transformer depth (0 = no attention)."""
    levels: list[dict[str, Any]] = [{"channels": None, "resnets": 0, "depth": 0}]
    for i in _block_ids(sd, "input_blocks."):
        if i == 0:
            continue
        if f"input_blocks.{i}.0.op.weight" in sd or f"input_blocks.{i}.0.op.bias" in sd:
            levels.append({"channels": None, "resnets": 0, "depth": 0})
            continue
        level = levels[-1]
        level["resnets"] += 1
        level["channels"] = int(sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0])
        depth = len(_block_ids(sd, f"input_blocks.{i}.1.transformer_blocks."))
        level["depth"] = max(level["depth"], depth)
    return levels


def infer_unet_config(unet_sd: dict[str, Any], family: str, pooled_dim: int | None = None) -> dict:
    """The diffusers UNet2DConditionModel config for a bare LDM UNet state dict of ``family``."""
    cfg = family_config(family, "unet.json")
    spec = family_config(family, "family.json")
    levels = _unet_levels(unet_sd)
    if not levels or any(lv["channels"] is None for lv in levels):
        raise ModelFileError("the UNet weights are incomplete (a resolution level has no blocks)")
    channels = [lv["channels"] for lv in levels]
    attn = [lv["depth"] > 0 for lv in levels]
    cfg["in_channels"] = int(unet_sd["input_blocks.0.0.weight"].shape[1])
    cfg["out_channels"] = int(unet_sd["out.2.weight"].shape[0])
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = levels[0]["resnets"]
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]
    depths = [max(lv["depth"], 1) for lv in levels]
    cfg["transformer_layers_per_block"] = depths[0] if len(set(depths)) == 1 else depths
    to_k = next((v for k, v in unet_sd.items() if k.endswith("attn2.to_k.weight")), None)
    if to_k is not None:
        cfg["cross_attention_dim"] = int(to_k.shape[1])
    proj = next((v for k, v in unet_sd.items() if k.endswith("proj_in.weight")), None)
    cfg["use_linear_projection"] = bool(proj is not None and proj.ndim == 2)
    heads = spec["unet_heads"]
    if "num_heads" in heads:
        cfg["attention_head_dim"] = heads["num_heads"]
    else:
        cfg["attention_head_dim"] = [max(1, c // heads["head_channels"]) for c in channels]
    if "label_emb.0.0.weight" in unet_sd:
        adm = int(unet_sd["label_emb.0.0.weight"].shape[1])
        cfg["projection_class_embeddings_input_dim"] = adm
        if family not in ("sdxl", "sdxl_refiner"):  # Lotus: a class embedding, not SDXL's text-time one
            cfg["class_embed_type"] = "projection"
        if pooled_dim is not None:  # adm = pooled + n_time_ids * time_embed_dim
            n_ids = 5 if family == "sdxl_refiner" else 6
            if (adm - pooled_dim) > 0 and (adm - pooled_dim) % n_ids == 0:
                cfg["addition_time_embed_dim"] = (adm - pooled_dim) // n_ids
    norm = unet_sd.get("input_blocks.1.0.in_layers.0.weight")
    if norm is not None and channels[0] % cfg.get("norm_num_groups", 32):
        raise ModelFileError(f"UNet channel count {channels[0]} is not divisible by the group-norm size")
    return cfg


def is_diffusers_unet(sd: dict[str, Any]) -> bool:
    """A bare UNet in diffusers' names (``conv_in``, ``down_blocks.N``, ``time_embedding``)."""
    return "conv_in.weight" in sd and "down_blocks.0.resnets.0.conv1.weight" in sd and "time_embedding.linear_1.weight" in sd


def diffusers_unet_family(sd: dict[str, Any]) -> str:
    """The family of a diffusers-named UNet state dict (as :func:`detect_unet_family` for LDM names)."""
    if "add_embedding.linear_1.weight" in sd:
        return "sdxl_refiner" if len(_block_ids(sd, "down_blocks.")) == 4 else "sdxl"
    proj = next((v for k, v in sd.items() if k.endswith("proj_in.weight")), None)
    return "sd2" if proj is not None and proj.ndim == 2 else "sd1"


def infer_diffusers_unet_config(sd: dict[str, Any], family: str) -> dict:
    """The UNet2DConditionModel config of a diffusers-named UNet state dict of ``family``."""
    cfg = family_config(family, "unet.json")
    spec = family_config(family, "family.json")
    levels = _block_ids(sd, "down_blocks.")
    channels = [int(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels]
    attn = [bool(_block_ids(sd, f"down_blocks.{i}.attentions.")) for i in levels]
    depths = [max(1, len(_block_ids(sd, f"down_blocks.{i}.attentions.0.transformer_blocks."))) for i in levels]
    cfg.update(in_channels=int(sd["conv_in.weight"].shape[1]), out_channels=int(sd["conv_out.weight"].shape[0]),
               block_out_channels=channels, layers_per_block=len(_block_ids(sd, "down_blocks.0.resnets.")),
               down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
               up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
               transformer_layers_per_block=depths[0] if len(set(depths)) == 1 else depths)
    to_k = next((v for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    if to_k is not None:
        cfg["cross_attention_dim"] = int(to_k.shape[1])
    proj = next((v for k, v in sd.items() if k.endswith("proj_in.weight")), None)
    cfg["use_linear_projection"] = bool(proj is not None and proj.ndim == 2)
    heads = spec["unet_heads"]
    cfg["attention_head_dim"] = (heads["num_heads"] if "num_heads" in heads
                                 else [max(1, c // heads["head_channels"]) for c in channels])
    if "class_embedding.linear_1.weight" in sd:  # Lotus-D's task embedding
        cfg.update(class_embed_type="projection",
                   projection_class_embeddings_input_dim=int(sd["class_embedding.linear_1.weight"].shape[1]))
    if "add_embedding.linear_1.weight" in sd:  # SDXL: the time-id width has no weights; the template's (256)
        cfg["projection_class_embeddings_input_dim"] = int(sd["add_embedding.linear_1.weight"].shape[1])
    return cfg


def build_diffusers_unet(sd: dict[str, Any], family: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    return _instantiate(UNet2DConditionModel, infer_diffusers_unet_config(sd, family), sd, dtype, "UNet")


def sd2_prediction_type(unet_sd: dict[str, Any]) -> str:
    """ComfyUI's test for SD2 v-prediction models: the spread of one norm bias."""
    bias = unet_sd.get("output_blocks.11.1.transformer_blocks.0.norm1.bias")
    if bias is not None and torch.std(bias.float(), unbiased=False) > 0.09:
        return "v_prediction"
    return "epsilon"


def pooled_dim_of(sd: dict[str, Any]) -> int | None:
    """Width of the pooled text embedding of an SDXL checkpoint (its OpenCLIP projection)."""
    for prefix in (SDXL_CLIP_G_PREFIX, REFINER_CLIP_G_PREFIX):
        proj = sd.get(prefix + "text_projection")
        if proj is not None:
            return int(proj.shape[1])
    return None


def build_unet(unet_sd_ldm: dict[str, Any], family: str, dtype: torch.dtype, pooled_dim: int | None = None):
    """A diffusers UNet2DConditionModel from a bare LDM UNet state dict."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    cfg = infer_unet_config(unet_sd_ldm, family, pooled_dim)
    full = {UNET_PREFIX + k: v for k, v in unet_sd_ldm.items()}
    converted = convert_ldm_unet_checkpoint(full, cfg)
    return _instantiate(UNet2DConditionModel, cfg, converted, dtype, "UNet"), cfg


# -- VAE ------------------------------------------------------------------------------------------

def infer_vae_config(vae_sd: dict[str, Any], family: str = "sd1") -> dict:
    cfg = family_config(family, "vae.json")
    levels = _block_ids(vae_sd, "encoder.down.")
    if "encoder.conv_in.weight" not in vae_sd or not levels:
        raise ModelFileError("the file has no VAE weights (encoder.conv_in …)")
    cfg["block_out_channels"] = [int(vae_sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
    cfg["layers_per_block"] = len(_block_ids(vae_sd, "encoder.down.0.block."))
    cfg["in_channels"] = int(vae_sd["encoder.conv_in.weight"].shape[1])
    cfg["out_channels"] = int(vae_sd["decoder.conv_out.weight"].shape[0])
    cfg["latent_channels"] = int(vae_sd["decoder.conv_in.weight"].shape[1])
    # SD3's and Flux's 16-channel VAEs have no quant convs
    cfg["use_quant_conv"] = "quant_conv.weight" in vae_sd
    cfg["use_post_quant_conv"] = "post_quant_conv.weight" in vae_sd
    return cfg


def build_vae(vae_sd_ldm: dict[str, Any], family: str, dtype: torch.dtype):
    """A diffusers AutoencoderKL from LDM VAE weights (keys ``encoder.…``/``decoder.…``)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = infer_vae_config(vae_sd_ldm, family)
    converted = convert_ldm_vae_checkpoint(vae_sd_ldm, cfg)
    return _instantiate(AutoencoderKL, cfg, converted, dtype, "VAE"), cfg


def vae_weights(sd: dict[str, Any]) -> dict[str, Any]:
    """LDM VAE weights of a checkpoint or a bare VAE file (prefix removed)."""
    if any(k.startswith(VAE_PREFIX) for k in sd):
        return {k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    return sd


# -- text encoders ------------------------------------------------------------------------------------

def _layer_count(sd: dict[str, Any], prefix: str) -> int:
    return len(_block_ids(sd, prefix))


def infer_clip_config(hf_sd: dict[str, Any], template: dict, drop_last_layer: bool = False) -> dict:
    """A CLIPTextConfig dict for HF-layout CLIP text weights (keys ``text_model.…`` or bare)."""
    cfg = copy.deepcopy(template)
    strip = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in hf_sd.items()}
    tok = strip.get("embeddings.token_embedding.weight")
    if tok is None:
        raise ModelFileError("the text encoder weights have no token embedding")
    cfg["vocab_size"], cfg["hidden_size"] = int(tok.shape[0]), int(tok.shape[1])
    cfg["max_position_embeddings"] = int(strip["embeddings.position_embedding.weight"].shape[0])
    cfg["intermediate_size"] = int(strip["encoder.layers.0.mlp.fc1.weight"].shape[0])
    layers = _layer_count(strip, "encoder.layers.")
    cfg["num_hidden_layers"] = layers - 1 if drop_last_layer else layers
    heads_ratio = template["hidden_size"] // template["num_attention_heads"]
    cfg["num_attention_heads"] = max(1, cfg["hidden_size"] // heads_ratio)
    if "text_projection.weight" in hf_sd:
        cfg["projection_dim"] = int(hf_sd["text_projection.weight"].shape[0])
    return cfg


#: OpenCLIP ViT-H's text tower (SD 2.x) has 24 layers; SD2 uses the output of the 23rd (ComfyUI's "penultimate")
VIT_H_LAYERS = 24


def sd2_drops_last_layer(open_clip_names: bool, hf_sd: dict[str, Any]) -> bool:
    """Whether an SD2 text encoder file holds the full ViT-H tower whose last layer SD2 leaves out: always for
    OpenCLIP names; for transformers names when it has 24 layers (diffusers' SD2 ``text_encoder`` has 23,
    already without it — ComfyUI's penultimate layer of a 24-layer model is then the file's last)."""
    strip = {k[len("text_model."):] if k.startswith("text_model.") else k for k in hf_sd}
    return open_clip_names or _layer_count({k: None for k in strip}, "encoder.layers.") == VIT_H_LAYERS


def build_clip(hf_sd: dict[str, Any], cfg: dict, dtype: torch.dtype, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    config = CLIPTextConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    return _instantiate(cls, config, hf_sd, dtype, "text encoder", is_transformers=True)


def clip_from_checkpoint(sd: dict[str, Any], family: str, tokenizer_ids: list[dict] | None = None) -> list[tuple[dict, dict]]:
    """``[(HF state dict, config dict)]`` for each text encoder of a checkpoint of ``family``."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    spec = family_config(family, "family.json")
    out = []
    for i, enc in enumerate(spec["clip"]):
        template = family_config(family, "text_encoder.json" if enc["key"] == "clip_l" or family == "sd2"
                                 else "text_encoder_2.json")
        if enc["kind"] == "clip":
            prefix = SD1_CLIP_PREFIX if family == "sd1" else SDXL_CLIP_L_PREFIX
            sub = {k: v for k, v in sd.items() if k.startswith(prefix)}
            hf = convert_ldm_clip_checkpoint(sub)
        else:
            prefix = {"sd2": SD2_CLIP_PREFIX, "sdxl": SDXL_CLIP_G_PREFIX, "sdxl_refiner": REFINER_CLIP_G_PREFIX}[family]
            hf = convert_open_clip(sd, prefix)
        if not hf:
            raise ModelFileError(f"the checkpoint has no weights for its text encoder {enc['key']}")
        cfg = infer_clip_config(hf, template, drop_last_layer=enc.get("drop_last_layer", False))
        out.append((hf, cfg))
    return out


def convert_open_clip(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    """OpenCLIP text weights (``…model.transformer.resblocks.N…``) → HF CLIP layout (``text_model.…``)."""
    out: dict[str, Any] = {}
    mapping = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
               "attn.out_proj": "self_attn.out_proj"}
    top = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
           "positional_embedding": "text_model.embeddings.position_embedding.weight",
           "ln_final.weight": "text_model.final_layer_norm.weight",
           "ln_final.bias": "text_model.final_layer_norm.bias"}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest in top:
            out[top[rest]] = value
        elif rest == "text_projection":
            out["text_projection.weight"] = value.T.contiguous()
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", rest):
            layer, name = m.groups()
            base = f"text_model.encoder.layers.{layer}."
            if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = name.rsplit("_", 1)[1]
                q, k, v = value.chunk(3, dim=0)
                for part, tensor in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                    out[f"{base}self_attn.{part}.{kind}"] = tensor.contiguous()
                continue
            for old, new in mapping.items():
                if name.startswith(old + "."):
                    name = new + name[len(old):]
                    break
            out[base + name] = value
    return out


# -- instantiation ----------------------------------------------------------------------------------

def _fit_prefix(module: torch.nn.Module, sd: dict[str, Any]) -> dict[str, Any]:
    """Add or strip a ``text_model.`` prefix so keys match the module (transformers 4 vs 5 layouts)."""
    own = module.state_dict()
    wants_prefix = any(k.startswith("text_model.") for k in own)
    fixed = {}
    for k, v in sd.items():
        has = k.startswith("text_model.")
        if k in own:
            fixed[k] = v
        elif wants_prefix and not has and "text_model." + k in own:
            fixed["text_model." + k] = v
        elif not wants_prefix and has and k[len("text_model."):] in own:
            fixed[k[len("text_model."):]] = v
        else:
            fixed[k] = v
    return fixed


def _instantiate(cls, config, sd: dict[str, Any], dtype: torch.dtype, what: str, is_transformers: bool = False):
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = cls(config) if is_transformers else cls.from_config(config)
    if is_transformers:
        sd = _fit_prefix(module, sd)
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("position_ids")]
    if missing:
        raise ModelFileError(f"the {what} weights do not fit the model: {len(missing)} missing "
                             f"(e.g. {missing[0]}); the file is incomplete or of another model family")
    bad = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if bad:
        raise ModelFileError(f"the {what} weights do not fit the model: {bad[0]} has shape "
                             f"{tuple(sd[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}")
    cast = {k: sd[k].to(dtype) if sd[k].is_floating_point() else sd[k] for k in own if k in sd}
    module.load_state_dict(cast, strict=False, assign=True)
    for name, buf in module.named_buffers():
        if buf.device.type == "meta":  # pragma: no cover - non-persistent buffers are created for real
            raise ModelFileError(f"the {what} could not be built ({name} left uninitialised)")
    return module.eval().requires_grad_(False)
