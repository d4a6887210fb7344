"""A tiny random-weight Wan 2.1 text-to-video model built from the real diffusers / transformers classes and
saved in ComfyUI's repackaged split layout and as a diffusers folder.

``build_wan(root)`` writes into ``root/models``: ``diffusion_models/tiny_wan2.1_t2v.safetensors`` (Wan's
original names under ``model.diffusion_model.``, as ComfyUI's files), ``text_encoders/tiny_umt5_xxl.safetensors``
(transformers' UMT5 layout) with ``text_encoders/umt5_tokenizer/``, ``vae/tiny_wan_2.1_vae.safetensors`` (Wan's
original VAE layout) and ``diffusers/tiny_wan/`` (``WanPipeline``).

Tokenizer: a word-level tokenizer built here (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, the end token appended),
standing in for UMT5's sentencepiece model — the recipe (end token, padding to 512, mask) is the same.

``official_recording`` reads the official code's outputs (tests/data/*_official) that the Wan variants' tests
compare with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tests.dit.tiny_flow import _random_transformer
from tests.dit.tiny_qwen import wan_vae_layout
from tests.helpers.tiny_sd import _randomize

WORDS = "a red fox in snow blue sky cat running on the beach dog under tree".split()
TEXT_WIDTH = 32


def official_recording(path: Path, inputs: dict, weights: dict) -> dict:
    """The official code's outputs recorded in ``path`` (tests/data/*_official) with ``inputs`` (the tensors they
    were recorded on) added, after checking they were recorded with ``weights`` (the file's ``weights_sum``)."""
    data = {**load_file(str(path)), **inputs}
    assert abs(sum(float(v.double().sum()) for v in weights.values()) - float(data["weights_sum"])) < 1e-6
    return data


def write_umt5_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def umt5():
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(5)
    config = UMT5Config(vocab_size=64, d_model=TEXT_WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                        use_cache=False)
    model = UMT5EncoderModel(config).eval()
    _randomize(model, 0.2)
    return model


def wan_transformer(in_channels: int = 16, seed: int = 41, image_dim: int | None = None,
                    image_positions: int | None = None):
    """Text-to-video (16 input channels) or image-to-video (36) without an image embedder (Wan 2.2 A14B style)
    or with one (``image_dim``: Wan 2.1 I2V, CLIP vision states)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    net = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128,
                                in_channels=in_channels,
                                out_channels=16, text_dim=TEXT_WIDTH, freq_dim=32, ffn_dim=96, num_layers=2,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                                image_dim=image_dim, added_kv_proj_dim=256 if image_dim else None,
                                pos_embed_seq_len=image_positions)
    return _random_transformer(net, seed)


def wan_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(6)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16).eval()
    _randomize(vae, 0.1)
    return vae


ORIGINAL_NAMES = (
    ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3"),
)


def wan_original_layout(sd: dict[str, torch.Tensor], prefix: str = "model.diffusion_model.") -> dict:
    """Wan's original transformer names (ComfyUI's repackaged files) for a diffusers state dict."""
    out = {}
    for k, v in sd.items():
        new = k
        if new == "scale_shift_table":
            new = "head.modulation"
        elif new.startswith("proj_out."):
            new = "head.head." + new[len("proj_out."):]
        else:
            new = new.replace(".scale_shift_table", ".modulation")
            for a, b in ORIGINAL_NAMES:
                new = new.replace(a, b)
        out[prefix + new] = v.contiguous()
    return out


@dataclass
class TinyWan:
    transformer: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any
    root: Path
    i2v_transformer: Any = None
    i2v21_transformer: Any = None
    flf21_transformer: Any = None


def build_wan(root: Path, shift: float = 5.0) -> TinyWan:
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "diffusers"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tokenizer = write_umt5_tokenizer(models / "text_encoders" / "umt5_tokenizer")
    te, net, vae = umt5(), wan_transformer(), wan_vae()
    save_file(wan_original_layout(net.state_dict()), str(models / "diffusion_models" / "tiny_wan2.1_t2v.safetensors"))
    save_file({k: v.clone().contiguous() for k, v in te.state_dict().items()},
              str(models / "text_encoders" / "tiny_umt5_xxl.safetensors"))
    save_file(wan_vae_layout(vae.state_dict()), str(models / "vae" / "tiny_wan_2.1_vae.safetensors"))
    i2v = wan_transformer(36, 43)
    save_file(wan_original_layout(i2v.state_dict()), str(models / "diffusion_models" / "tiny_wan_i2v.safetensors"))
    i2v21 = wan_transformer(36, 47, image_dim=CLIP_VISION_WIDTH)
    save_file(wan_original_layout(i2v21.state_dict()), str(models / "diffusion_models" / "tiny_wan21_i2v.safetensors"))
    flf21 = wan_transformer(36, 53, image_dim=CLIP_VISION_WIDTH, image_positions=2 * CLIP_VISION_TOKENS)
    save_file(wan_original_layout(flf21.state_dict()), str(models / "diffusion_models" / "tiny_wan21_flf2v.safetensors"))
    write_clip_vision(models / "clip_vision" / "tiny_clip_vision")
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=te, transformer=net, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.save_pretrained(str(models / "diffusers" / "tiny_wan"))
    return TinyWan(net, te, tokenizer, vae, root, i2v, i2v21, flf21)


CLIP_VISION_WIDTH = 32
CLIP_VISION_TOKENS = 17  # (32 / 8)² patches + the class token


def write_clip_vision(folder: Path) -> None:
    """A tiny CLIP vision tower (32×32 images, 8×8 patches) with its image processor settings."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(8)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=CLIP_VISION_WIDTH, intermediate_size=48,
                                                           num_hidden_layers=2, num_attention_heads=2, image_size=32,
                                                           patch_size=8, projection_dim=16)).eval()
    _randomize(model, 0.2)
    model.save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))


def template_files(root: Path, unets: dict[str, str], *, vae: bool = True, clip_vision: bool = False) -> None:
    """The tiny files of ``root/models`` under the names ComfyUI's Wan templates load: ``unets[template file] =
    tiny file`` in ``diffusion_models/``, the UMT5 text encoder, the Wan 2.1 VAE (``vae``) and the tiny CLIP vision
    tower as CLIP vision H (``clip_vision``)."""
    import shutil

    from tests.dit.tiny_qwen import copy_as

    for name, tiny in unets.items():  # one tiny file may stand under several names
        copy_as(root, {f"diffusion_models/{tiny}": f"diffusion_models/{name}"})
    copy_as(root, {"text_encoders/tiny_umt5_xxl.safetensors": "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"})
    if vae:
        copy_as(root, {"vae/tiny_wan_2.1_vae.safetensors": "vae/wan_2.1_vae.safetensors"})
    if clip_vision:
        models = root / "models"
        shutil.copyfile(models / "clip_vision" / "tiny_clip_vision" / "model.safetensors",
                        models / "clip_vision" / "clip_vision_h.safetensors")


def flf_reference(tiny, transformer, start, end, latent_shape: tuple, *, prompt: str, height: int, width: int,
                  length: int, steps: int, cfg: float, shift: float, seed: int) -> torch.Tensor:
    """diffusers' first-last-frame reference: WanImageToVideoPipeline with ``last_image`` on ``transformer`` and
    ``tiny``'s text encoder and VAE (the prompt and the empty negative encoded by WanPipeline, 512 tokens), the
    engine's noise of ``latent_shape`` at ``seed``. Its frames ``[F, H, W, 3]``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline

    from tests.helpers.noise import engine_noise

    pipe = WanImageToVideoPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, transformer=transformer,
                                   vae=tiny.vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    text = WanPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, transformer=None, vae=None,
                       scheduler=None)
    noise, _ = engine_noise(latent_shape, seed)
    with torch.no_grad():
        embeds, negative = text.encode_prompt(prompt, negative_prompt="", max_sequence_length=512)
        video = pipe(image=start, last_image=end, prompt_embeds=embeds, negative_prompt_embeds=negative,
                     height=height, width=width, num_frames=length, num_inference_steps=steps, guidance_scale=cfg,
                     latents=noise, output_type="pt").frames
    return video[0].permute(0, 2, 3, 1).float()


def wan_inputs(g, unet: str, vae_name: str, prompt: str, shift: float) -> tuple:
    """A Wan graph's inputs: UNETLoader ``unet`` through ModelSamplingSD3 ``shift``, the tiny UMT5 (CLIPLoader type
    wan) encoding ``prompt`` and an empty negative, VAELoader ``vae_name``: ``(model, vae, positive, negative)``."""
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
    model = g.node("ModelSamplingSD3", model=model, shift=shift).out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name=vae_name).out(0)
    return model, vae, g.node("CLIPTextEncode", text=prompt, clip=clip), g.node("CLIPTextEncode", text="", clip=clip)
