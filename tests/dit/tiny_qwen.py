"""Tiny random-weight Qwen-Image and Z-Image models built from the real diffusers / transformers classes
and saved in the layouts users download (ComfyUI's repackaged split files) and as diffusers folders.

``build_qwen_image(root)`` writes into ``root/models``: ``diffusion_models/tiny_qwen_image.safetensors``
(diffusers' names, as ComfyUI's repackaged files), ``text_encoders/tiny_qwen_2.5_vl.safetensors``
(Qwen2.5-VL in the older transformers layout ComfyUI's file uses: ``model.layers.…``, ``visual.…``,
``lm_head``), ``text_encoders/qwen25_tokenizer/``, ``vae/tiny_qwen_image_vae.safetensors`` (Wan's
original VAE layout) and ``diffusers/tiny_qwen_image/``.
``build_z_image(root)`` writes ``diffusion_models/tiny_z_image.safetensors`` (ComfyUI's NextDiT layout:
fused qkv, ``x_embedder``, ``final_layer``), ``text_encoders/tiny_qwen_3.safetensors`` (``model.…``),
``text_encoders/qwen3_tokenizer/``, ``vae/tiny_z_image_ae.safetensors`` (Flux's VAE, LDM layout) and
``diffusers/tiny_z_image/``.

Tokenizers: a byte-level BPE trained here on the chat templates and the test prompts (each word one
token, so the Qwen-Image system part is 34 tokens as with the released tokenizer), with Qwen's special
tokens and, for Qwen3, a chat template with Qwen3's generation suffix.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _random_transformer
from tests.helpers.ldm_export import vae_to_ldm
from tests.helpers.tiny_sd import _randomize

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
CORPUS = [
    "system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:",
    "system\nDescribe the key features of the input image (color, shape, size, texture, objects, background), "
    "then explain how the user's text instruction should alter or modify the image. Generate a new image that "
    "meets the user's requirements while maintaining consistency with the original input where appropriate.",
    "user\n", "assistant\n", "a red fox in snow", "blue sky", "a photo of a cat", "a dog under a tree",
    "A vibrant, warm neon-lit street scene", "Picture 1: Picture 2: Picture 3:", "make the sky green",
]
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}")


def write_qwen_tokenizer(folder: Path, chat_template: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, additional_special_tokens=SPECIALS)
    if chat_template:
        fast.chat_template = chat_template
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return load_tokenizer(folder)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


# -- Qwen-Image -------------------------------------------------------------------------------------

TE_WIDTH = 128  # Qwen2.5-VL's head width is 128 (not in the weights), so one head


def vl_token_ids(tokenizer) -> dict:
    """The Qwen-VL configs' special token ids (image / video pad, vision start / end) in ``tokenizer``."""
    return {n: tokenizer.convert_tokens_to_ids(t) for n, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}


def qwen25vl(tokenizer, layers: int = 2):
    """A tiny Qwen2.5-VL (``layers`` text layers, one vision block)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(21)
    ids = vl_token_ids(tokenizer)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TE_WIDTH, intermediate_size=192, num_hidden_layers=layers,
                         num_attention_heads=1, num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=1000000.0,
                         max_position_embeddings=128000, tie_word_embeddings=False,
                         bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=1, hidden_size=80, num_heads=1, intermediate_size=96, out_hidden_size=TE_WIDTH,
                           patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
                           fullatt_block_indexes=[0]), **ids)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    _randomize(model)
    return model


def qwen25vl_comfy_layout(model) -> dict[str, torch.Tensor]:
    """ComfyUI's file layout (the older transformers names) of a Qwen2.5-VL or Qwen3-VL model."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.language_model."):
            out["model." + k[len("model.language_model."):]] = v
        elif k.startswith("model.visual."):
            out[k[len("model."):]] = v
        else:
            out[k] = v
    return {k: v.contiguous() for k, v in out.items()}


def qwen_transformer():
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    net = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                      attention_head_dim=32, num_attention_heads=2, joint_attention_dim=TE_WIDTH,
                                      axes_dims_rope=(4, 14, 14))
    return _random_transformer(net, 31)


def qwen_vae():
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(4)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16).eval()
    _randomize(vae, 0.1)
    return vae


def wan_vae_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan's original VAE names for a diffusers ``AutoencoderKLQwenImage`` state dict (two resnets per
    level, four levels: the released layout)."""
    res = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
           "conv2": "residual.6", "conv_shortcut": "shortcut"}

    def resnet(rest: str) -> str:
        for a, b in res.items():
            if rest.startswith(a):
                return b + rest[len(a):]
        return rest

    out = {}
    for k, v in sd.items():
        part, _, rest = k.partition(".")
        if k.startswith(("quant_conv.", "post_quant_conv.")):
            new = ("conv1." if k.startswith("quant_conv.") else "conv2.") + k.split(".", 1)[1]
        elif rest.startswith("conv_in."):
            new = f"{part}.conv1.{rest[len('conv_in.'):]}"
        elif rest.startswith("norm_out."):
            new = f"{part}.head.0.{rest[len('norm_out.'):]}"
        elif rest.startswith("conv_out."):
            new = f"{part}.head.2.{rest[len('conv_out.'):]}"
        elif rest.startswith("mid_block.resnets."):
            i, tail = rest[len("mid_block.resnets."):].split(".", 1)
            new = f"{part}.middle.{2 * int(i)}.{resnet(tail)}"
        elif rest.startswith("mid_block.attentions.0."):
            new = f"{part}.middle.1.{rest[len('mid_block.attentions.0.'):]}"
        elif rest.startswith("down_blocks."):
            i, tail = rest[len("down_blocks."):].split(".", 1)
            new = f"encoder.downsamples.{i}.{resnet(tail)}"
        elif rest.startswith("up_blocks."):
            b, kind, tail = rest[len("up_blocks."):].split(".", 2)
            if kind == "resnets":
                r, tail = tail.split(".", 1)
                new = f"decoder.upsamples.{4 * int(b) + int(r)}.{resnet(tail)}"
            else:  # upsamplers.0.…
                new = f"decoder.upsamples.{4 * int(b) + 3}.{tail.split('.', 1)[1]}"
        else:
            raise AssertionError(f"unmapped VAE key {k}")
        out[new] = v.contiguous()
    return out


@dataclass
class TinyQwenImage:
    transformer: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any
    root: Path


def build_qwen_image(root: Path) -> TinyQwenImage:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "diffusers"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tokenizer = write_qwen_tokenizer(models / "text_encoders" / "qwen25_tokenizer")
    te, net, vae = qwen25vl(tokenizer), qwen_transformer(), qwen_vae()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(models / "diffusion_models" / "tiny_qwen_image.safetensors"))
    save_file(qwen25vl_comfy_layout(te), str(models / "text_encoders" / "tiny_qwen_2.5_vl.safetensors"))
    save_file(wan_vae_layout(vae.state_dict()), str(models / "vae" / "tiny_qwen_image_vae.safetensors"))
    folder = models / "diffusers" / "tiny_qwen_image"
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.1), vae=vae, text_encoder=te,
                             tokenizer=tokenizer, transformer=net)
    pipe.save_pretrained(str(folder))
    return TinyQwenImage(net, te, tokenizer, vae, root)


# -- Z-Image ----------------------------------------------------------------------------------------

QWEN3_WIDTH = 64


def qwen3(tokenizer):
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(23)
    cfg = Qwen3Config(vocab_size=len(tokenizer), hidden_size=QWEN3_WIDTH, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, rms_norm_eps=1e-6,
                      rope_theta=1000000.0, max_position_embeddings=40960, tie_word_embeddings=True,
                      bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = Qwen3Model(cfg).eval()
    _randomize(model)
    return model


def z_transformer():
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(0)
    net = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2,
                                   n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=QWEN3_WIDTH,
                                   axes_dims=[8, 12, 12])
    return _random_transformer(net, 41)


def z_comfy_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's repackaged Z-Image names (Lumina's NextDiT: fused qkv, ``out``, ``q_norm``)."""
    out = {}
    for k, v in sd.items():
        if ".attention.to_k." in k or ".attention.to_v." in k:
            continue
        if ".attention.to_q.weight" in k:
            base = k[:-len(".to_q.weight")]
            out[base + ".qkv.weight"] = torch.cat([v, sd[base + ".to_k.weight"], sd[base + ".to_v.weight"]])
            continue
        new = (k.replace("all_final_layer.2-1.", "final_layer.").replace("all_x_embedder.2-1.", "x_embedder.")
               .replace(".attention.to_out.0.", ".attention.out.").replace(".attention.norm_q.", ".attention.q_norm.")
               .replace(".attention.norm_k.", ".attention.k_norm."))
        out[new] = v
    out["norm_final.weight"] = torch.ones(next(iter(sd.values())).shape[-1])
    return {"model.diffusion_model." + k: v.contiguous() for k, v in out.items()}


def flux_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, layers_per_block=1,
                        norm_num_groups=32, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
                        scaling_factor=0.3611, shift_factor=0.1159).eval()
    _randomize(vae)
    return vae


@dataclass
class TinyZImage:
    transformer: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any
    root: Path


def build_z_image(root: Path) -> TinyZImage:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "diffusers"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tokenizer = write_qwen_tokenizer(models / "text_encoders" / "qwen3_tokenizer", QWEN3_CHAT_TEMPLATE)
    te, net, vae = qwen3(tokenizer), z_transformer(), flux_vae()
    save_file(z_comfy_layout(net.state_dict()), str(models / "diffusion_models" / "tiny_z_image.safetensors"))
    save_file({"model." + k: v.contiguous() for k, v in te.state_dict().items()},
              str(models / "text_encoders" / "tiny_qwen_3.safetensors"))
    save_file(vae_to_ldm(vae.state_dict(), vae.config), str(models / "vae" / "tiny_z_image_ae.safetensors"))
    folder = models / "diffusers" / "tiny_z_image"
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=te,
                          tokenizer=tokenizer, transformer=net)
    pipe.save_pretrained(str(folder))
    return TinyZImage(net, te, tokenizer, vae, root)


def copy_as(root: Path, pairs: dict[str, str]) -> None:
    """Copy files/folders of ``root/models`` to other names (a template's file names)."""
    models = root / "models"
    for src, dst in pairs.items():
        (models / dst).parent.mkdir(parents=True, exist_ok=True)
        if (models / src).is_dir():
            shutil.copytree(models / src, models / dst, dirs_exist_ok=True)
        else:
            shutil.copyfile(models / src, models / dst)
