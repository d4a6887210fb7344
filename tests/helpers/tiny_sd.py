"""Tiny random-weight Stable Diffusion models built from the real classes, saved like real ones.

``build_sd1(root)`` writes into ``root/models``: ``checkpoints/tiny_sd15.safetensors`` (LDM single file),
``diffusers/tiny_sd15/`` (diffusers folder), ``vae/tiny_vae.safetensors``, a CLIP BPE tokenizer in
``text_encoders/tokenizer/`` (built locally with ``tokenizers``), and returns the diffusers modules.
``build_sdxl(root)`` does the same for an SDXL-shaped model (``checkpoints/tiny_sdxl.safetensors``),
``build_sd2(root)`` for an SD 2.x-shaped one (``checkpoints/tiny_sd21.safetensors``: linear transformer
projections, the OpenCLIP text tower under ``cond_stage_model.model.`` whose last layer SD2 leaves out), and
``lotus_unet()`` is a Lotus-D-shaped UNet (SD 2.x with a 4-wide projection class embedding).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.helpers.ldm_export import clip_to_ldm, clip_to_open_clip, unet_to_ldm, vae_to_ldm

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS = ["a", "the", "red", "fox", "cat", "photo", "of", "in", "snow", "blue", "sky", "dog", "tree", "house"]


def write_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer (vocab.json, merges.txt) with a tiny vocabulary; ``!`` is id 0 as in CLIP."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase) + list(string.digits) + list(",.()[]:!-_")
    vocab: list[str] = ["!"]
    for c in chars:
        for tok in (c, c + "</w>"):
            if tok not in vocab:
                vocab.append(tok)
    merges: list[str] = []
    for word in WORDS:
        current = word[0]
        for i, ch in enumerate(word[1:], start=1):
            piece = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{current} {piece}")
            current = current + piece
            if current not in vocab:
                vocab.append(current)
    vocab += [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": BOS, "eos_token": EOS,
        "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}))
    return folder


def load_tokenizer(folder: Path, pad: str | None = None):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder))
    if pad is not None:
        tok.pad_token = pad
    return tok


@dataclass
class TinySD:
    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler: object
    checkpoint: Path
    diffusers_dir: Path
    text_encoder_2: object = None
    tokenizer_2: object = None


def _clip(hidden: int, vocab: int, eos: int, projection: bool, layers: int = 2, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=1, vocab_size=vocab, max_position_embeddings=77,
                         projection_dim=hidden, hidden_act=act, bos_token_id=eos - 1, eos_token_id=eos,
                         pad_token_id=eos)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(cfg).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
                         norm_num_groups=32, sample_size=64).eval()


def _randomize(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Random weights everywhere (diffusers zero-inits some outputs, which would hide bugs)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + torch.randn(p.shape, generator=g) * scale)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale * (3 if p.ndim > 1 else 1))


def _scheduler_config(path: Path, cls: str) -> None:
    from diffusers import PNDMScheduler, EulerDiscreteScheduler

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                  num_train_timesteps=1000)
    sched = (PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **common) if cls == "pndm"
             else EulerDiscreteScheduler(**common))
    sched.save_pretrained(str(path))
    return sched


def _tokenizer(models: Path):
    """The shared tiny tokenizer of ``models/text_encoders/tokenizer`` (written the first time)."""
    tok_dir = models / "text_encoders" / "tokenizer"
    if not tok_dir.exists():
        write_tokenizer(tok_dir)
    return tok_dir


def _save_checkpoint(models: Path, name: str, unet, vae, text: dict[str, torch.Tensor]) -> Path:
    """``models/checkpoints/<name>.safetensors`` in the original single-file layout: the UNet, the VAE (under
    ``first_stage_model.``) and ``text`` (the text encoders' keys, already prefixed); its path."""
    ckpt = models / "checkpoints" / f"{name}.safetensors"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    sd = {}
    sd.update(unet_to_ldm(unet.state_dict(), unet.config))
    sd.update(vae_to_ldm(vae.state_dict(), vae.config))
    sd.update(text)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt))
    return ckpt


def build_sd1(root: Path, name: str = "tiny_sd15", size: int = 32, layers_per_block: int = 1) -> TinySD:
    from diffusers import UNet2DConditionModel

    models = root / "models"
    tok_dir = write_tokenizer(models / "text_encoders" / "tokenizer")
    tokenizer = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(size, size * 2), layers_per_block=layers_per_block, sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32).eval()
    _randomize(unet)
    vae = _vae(1)
    _randomize(vae, 0.03)
    text = _clip(32, len(tokenizer), tokenizer.eos_token_id, projection=False)
    _randomize(text, 0.1)
    ckpt = _save_checkpoint(models, name, unet, vae, clip_to_ldm(text.state_dict(), "cond_stage_model.transformer."))
    (models / "vae").mkdir(parents=True, exist_ok=True)
    vae_sd = vae_to_ldm(vae.state_dict(), vae.config)
    save_file({k[len("first_stage_model."):]: v.contiguous() for k, v in vae_sd.items()},
              str(models / "vae" / "tiny_vae.safetensors"))
    folder = models / "diffusers" / name
    unet.save_pretrained(str(folder / "unet"))
    vae.save_pretrained(str(folder / "vae"))
    text.save_pretrained(str(folder / "text_encoder"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    scheduler = _scheduler_config(folder / "scheduler", "pndm")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}))
    return TinySD(unet, vae, text, tokenizer, scheduler, ckpt, folder)


def build_sdxl(root: Path, name: str = "tiny_sdxl") -> TinySD:
    from diffusers import UNet2DConditionModel

    models = root / "models"
    tok_dir = _tokenizer(models)
    tokenizer = load_tokenizer(tok_dir)
    tokenizer_2 = load_tokenizer(tok_dir, pad="!")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128), layers_per_block=1, sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=[1, 2], transformer_layers_per_block=[1, 2],
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=32).eval()
    _randomize(unet)
    vae = _vae(2)
    _randomize(vae, 0.03)
    text = _clip(32, len(tokenizer), tokenizer.eos_token_id, projection=False)
    _randomize(text, 0.1)
    text_2 = _clip(32, len(tokenizer), tokenizer.eos_token_id, projection=True, act="gelu")
    _randomize(text_2, 0.1)
    ckpt = _save_checkpoint(models, name, unet, vae,
                            {**clip_to_ldm(text.state_dict(), "conditioner.embedders.0.transformer."),
                             **clip_to_open_clip(text_2.state_dict(), "conditioner.embedders.1.model.")})
    return TinySD(unet, vae, text, tokenizer, None, ckpt, None, text_2, tokenizer_2)


def _sd2_unet(**extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=1, use_linear_projection=True, norm_num_groups=32, **extra).eval()
    _randomize(unet)
    return unet


def build_sd2(root: Path, name: str = "tiny_sd21") -> TinySD:
    models = root / "models"
    tokenizer = load_tokenizer(_tokenizer(models))
    unet = _sd2_unet()
    vae = _vae(3)
    _randomize(vae, 0.03)
    text = _clip(32, len(tokenizer), tokenizer.eos_token_id, projection=True, layers=3, act="gelu")
    _randomize(text, 0.1)
    ckpt = _save_checkpoint(models, name, unet, vae, clip_to_open_clip(text.state_dict(), "cond_stage_model.model."))
    return TinySD(unet, vae, text, tokenizer, None, ckpt, None)


def lotus_unet():
    """A Lotus-D-shaped UNet: SD 2.x with a projection class embedding of width 4 (its task embedding)."""
    return _sd2_unet(class_embed_type="projection", projection_class_embeddings_input_dim=4)
