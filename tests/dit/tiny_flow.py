"""Tiny random-weight SD3.5 and Flux.1 models built from the real diffusers / transformers classes and
saved in the layouts users download (and as diffusers folders).

``build_sd3(root)`` writes into ``root/models``: ``checkpoints/tiny_sd35.safetensors`` (all-in-one like
ComfyUI's SD3.5 files: MMDiT under ``model.diffusion_model.``, VAE under ``first_stage_model.``, CLIP-L/G and
T5 under ``text_encoders.*.transformer.``), ``diffusion_models/tiny_sd35_mmdit.safetensors`` (bare MMDiT),
``text_encoders/tiny_clip_l.safetensors``, ``tiny_clip_g.safetensors``, ``tiny_t5xxl.safetensors``
(transformers layouts), ``vae/tiny_sd3_vae.safetensors`` (LDM layout) and ``diffusers/tiny_sd35/``.
``build_flux(root)`` writes ``diffusion_models/tiny_flux_dev.safetensors`` (BFL layout),
``vae/tiny_flux_ae.safetensors`` and ``diffusers/tiny_flux_dev/``; the text encoders are shared.
Tokenizers: CLIP's BPE in ``text_encoders/tokenizer`` (+ ``tokenizer_2``), T5's in
``text_encoders/t5_tokenizer`` (a Unigram ``tokenizer.json`` built locally).

The MMDiT / BFL exports here are written from the layouts' key names (the inverse of the engine's
import), independently of the engine's code.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.helpers.ldm_export import vae_to_ldm
from tests.helpers.tiny_sd import _randomize, load_tokenizer, write_tokenizer

T5_WORDS = ["a", "the", "red", "fox", "cat", "photo", "of", "in", "snow", "blue", "sky", "dog", "tree", "house"]
CLIP_L, CLIP_G, T5_DIM = 32, 48, 96


# -- tokenizers -------------------------------------------------------------------------------------

def write_t5_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in T5_WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.()!:"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "raw_tokenizer.json"
    tok.save(str(raw))
    T5TokenizerFast(tokenizer_file=str(raw), eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                    extra_ids=0).save_pretrained(str(folder))
    raw.unlink()
    return folder


def load_t5_tokenizer(folder: Path):
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)


# -- modules ----------------------------------------------------------------------------------------

def _clip(width: int, vocab: int, bos: int, eos: int, act: str, identity_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(width)
    cfg = CLIPTextConfig(hidden_size=width, intermediate_size=width * 2, num_hidden_layers=3, num_attention_heads=1,
                         vocab_size=vocab, max_position_embeddings=77, projection_dim=width, hidden_act=act,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    model = CLIPTextModelWithProjection(cfg).eval()
    _randomize(model)
    if identity_projection:  # SD3's released CLIP-L: the projection is the identity (ComfyUI uses the
        with torch.no_grad():  # unprojected pooled output, diffusers' pipeline the projected one)
            model.text_projection.weight.copy_(torch.eye(width))
    return model


def _t5(vocab: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(5)
    cfg = T5Config(vocab_size=vocab, d_model=T5_DIM, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, dropout_rate=0.0)
    model = T5EncoderModel(cfg).eval()
    _randomize(model)
    return model


def _vae(scale: float, shift: float):
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, layers_per_block=1,
                        norm_num_groups=32, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
                        scaling_factor=scale, shift_factor=shift).eval()
    _randomize(vae)
    return vae


def _random_transformer(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # diffusers zero-inits the output layers; random weights make the test meaningful
        for name, p in net.named_parameters():
            if "norm" in name and name.endswith("weight") and p.ndim == 1:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.12 if p.ndim > 1 else 0.05))
    return net.eval()


def sd35_transformer():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    net = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                                num_attention_heads=1, joint_attention_dim=T5_DIM, caption_projection_dim=64,
                                pooled_projection_dim=CLIP_L + CLIP_G, out_channels=16, pos_embed_max_size=8,
                                dual_attention_layers=(0,), qk_norm="rms_norm")
    return _random_transformer(net, 11)


def flux_transformer(guidance: bool = True, in_channels: int = 64):
    """A Flux.1 transformer (``in_channels=384``: Fill, image and mask channels after the latent's)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    net = FluxTransformer2DModel(patch_size=1, in_channels=in_channels, out_channels=64, num_layers=1,
                                 num_single_layers=2,
                                 attention_head_dim=128, num_attention_heads=1, joint_attention_dim=T5_DIM,
                                 pooled_projection_dim=CLIP_L, guidance_embeds=guidance, axes_dims_rope=(16, 56, 56))
    return _random_transformer(net, 12)


# -- exports to the original layouts ----------------------------------------------------------------

def _scale_shift(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def sd3_to_mmdit(net) -> dict[str, torch.Tensor]:
    """diffusers SD3Transformer2DModel → Stability's MMDiT keys."""
    sd = net.state_dict()
    n = net.config.num_layers
    out = {"pos_embed": sd["pos_embed.pos_embed"], "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
           "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
           "context_embedder.weight": sd["context_embedder.weight"], "context_embedder.bias": sd["context_embedder.bias"],
           "final_layer.linear.weight": sd["proj_out.weight"], "final_layer.linear.bias": sd["proj_out.bias"],
           "final_layer.adaLN_modulation.1.weight": _scale_shift(sd["norm_out.linear.weight"]),
           "final_layer.adaLN_modulation.1.bias": _scale_shift(sd["norm_out.linear.bias"])}
    for ours, theirs in (("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
                         ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
                         ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
                         ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")):
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = sd[f"{theirs}.{kind}"]
    for i in range(n):
        b, t = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        last = i == n - 1
        for kind in ("weight", "bias"):
            out[f"{b}x_block.attn.qkv.{kind}"] = torch.cat([sd[f"{t}attn.to_{x}.{kind}"] for x in "qkv"])
            out[f"{b}context_block.attn.qkv.{kind}"] = torch.cat([sd[f"{t}attn.add_{x}_proj.{kind}"] for x in "qkv"])
            out[f"{b}x_block.attn.proj.{kind}"] = sd[f"{t}attn.to_out.0.{kind}"]
            out[f"{b}x_block.adaLN_modulation.1.{kind}"] = sd[f"{t}norm1.linear.{kind}"]
            ctx_mod = sd[f"{t}norm1_context.linear.{kind}"]
            out[f"{b}context_block.adaLN_modulation.1.{kind}"] = _scale_shift(ctx_mod) if last else ctx_mod
            out[f"{b}x_block.mlp.fc1.{kind}"] = sd[f"{t}ff.net.0.proj.{kind}"]
            out[f"{b}x_block.mlp.fc2.{kind}"] = sd[f"{t}ff.net.2.{kind}"]
            if not last:
                out[f"{b}context_block.attn.proj.{kind}"] = sd[f"{t}attn.to_add_out.{kind}"]
                out[f"{b}context_block.mlp.fc1.{kind}"] = sd[f"{t}ff_context.net.0.proj.{kind}"]
                out[f"{b}context_block.mlp.fc2.{kind}"] = sd[f"{t}ff_context.net.2.{kind}"]
            if f"{t}attn2.to_q.{kind}" in sd:
                out[f"{b}x_block.attn2.qkv.{kind}"] = torch.cat([sd[f"{t}attn2.to_{x}.{kind}"] for x in "qkv"])
                out[f"{b}x_block.attn2.proj.{kind}"] = sd[f"{t}attn2.to_out.0.{kind}"]
        for ours, theirs in (("x_block.attn.ln_q", "attn.norm_q"), ("x_block.attn.ln_k", "attn.norm_k"),
                             ("context_block.attn.ln_q", "attn.norm_added_q"),
                             ("context_block.attn.ln_k", "attn.norm_added_k"),
                             ("x_block.attn2.ln_q", "attn2.norm_q"), ("x_block.attn2.ln_k", "attn2.norm_k")):
            if f"{t}{theirs}.weight" in sd:
                out[f"{b}{ours}.weight"] = sd[f"{t}{theirs}.weight"]
    return out


def flux_to_bfl(net) -> dict[str, torch.Tensor]:
    """diffusers FluxTransformer2DModel → Black Forest Labs' keys (flux1-dev.safetensors)."""
    sd = net.state_dict()
    out = {"img_in.weight": sd["x_embedder.weight"], "img_in.bias": sd["x_embedder.bias"],
           "txt_in.weight": sd["context_embedder.weight"], "txt_in.bias": sd["context_embedder.bias"],
           "final_layer.linear.weight": sd["proj_out.weight"], "final_layer.linear.bias": sd["proj_out.bias"],
           "final_layer.adaLN_modulation.1.weight": _scale_shift(sd["norm_out.linear.weight"]),
           "final_layer.adaLN_modulation.1.bias": _scale_shift(sd["norm_out.linear.bias"])}
    emb = {"time_in": "timestep_embedder", "vector_in": "text_embedder", "guidance_in": "guidance_embedder"}
    for ours, theirs in emb.items():
        for layer, lin in (("in_layer", "linear_1"), ("out_layer", "linear_2")):
            for kind in ("weight", "bias"):
                key = f"time_text_embed.{theirs}.{lin}.{kind}"
                if key in sd:
                    out[f"{ours}.{layer}.{kind}"] = sd[key]
    out.update(flux_blocks_to_bfl(net, modulation=True))
    return out


def flux_blocks_to_bfl(net, modulation: bool) -> dict[str, torch.Tensor]:
    """The double and single blocks of a diffusers Flux-layout transformer under BFL's names; with
    ``modulation`` also the blocks' own modulation layers (Flux has them, Chroma does not)."""
    sd = net.state_dict()
    out: dict[str, torch.Tensor] = {}
    mods = (("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear")) if modulation else ()
    for i in range(net.config.num_layers):
        b, t = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{b}img_attn.qkv.{kind}"] = torch.cat([sd[f"{t}attn.to_{x}.{kind}"] for x in "qkv"])
            out[f"{b}txt_attn.qkv.{kind}"] = torch.cat([sd[f"{t}attn.add_{x}_proj.{kind}"] for x in "qkv"])
            for ours, theirs in mods + (("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"),
                                        ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
                                        ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2")):
                out[f"{b}{ours}.{kind}"] = sd[f"{t}{theirs}.{kind}"]
        for ours, theirs in (("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
                             ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
                             ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
                             ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight")):
            out[b + ours] = sd[t + theirs]
    for i in range(net.config.num_single_layers):
        b, t = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{b}linear1.{kind}"] = torch.cat([sd[f"{t}attn.to_{x}.{kind}"] for x in "qkv"]
                                                  + [sd[f"{t}proj_mlp.{kind}"]])
            out[f"{b}linear2.{kind}"] = sd[f"{t}proj_out.{kind}"]
            if modulation:
                out[f"{b}modulation.lin.{kind}"] = sd[f"{t}norm.linear.{kind}"]
        out[f"{b}norm.query_norm.scale"] = sd[f"{t}attn.norm_q.weight"]
        out[f"{b}norm.key_norm.scale"] = sd[f"{t}attn.norm_k.weight"]
    return out


def _contig(sd: dict) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def _vae_file(vae) -> dict:
    return {k[len("first_stage_model."):]: v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()}


# -- building ---------------------------------------------------------------------------------------

@dataclass
class TextEncoders:
    clip_l: object
    clip_g: object
    t5: object
    tokenizer: object
    tokenizer_2: object
    tokenizer_t5: object


@dataclass
class TinyFlow:
    transformer: object
    vae: object
    text: TextEncoders
    diffusers_dir: Path
    files: dict = field(default_factory=dict)

    def flux_pipeline(self, pipeline_class, transformer=None, scheduler=None):
        """A diffusers Flux-family pipeline (``FluxPipeline``, ``FluxFillPipeline``, ...) on these models' CLIP-L
        and T5: ``transformer`` (this one unless given), the folder's scheduler unless given, no progress bar."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if scheduler is None:
            scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(self.diffusers_dir / "scheduler"))
        pipe = pipeline_class(transformer=self.transformer if transformer is None else transformer, vae=self.vae,
                              text_encoder=self.text.clip_l, tokenizer=self.text.tokenizer,
                              text_encoder_2=self.text.t5, tokenizer_2=self.text.tokenizer_t5, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def build_text_encoders(root: Path) -> TextEncoders:
    models = root / "models"
    te = models / "text_encoders"
    if not (te / "tokenizer" / "vocab.json").is_file():
        write_tokenizer(te / "tokenizer")
        shutil.copytree(te / "tokenizer", te / "tokenizer_2", dirs_exist_ok=True)
        write_t5_tokenizer(te / "t5_tokenizer")
    tokenizer = load_tokenizer(te / "tokenizer")
    tokenizer_2 = load_tokenizer(te / "tokenizer_2", pad="!")
    tokenizer_t5 = load_t5_tokenizer(te / "t5_tokenizer")
    vocab = len(tokenizer)
    clip_l = _clip(CLIP_L, vocab, tokenizer.bos_token_id, tokenizer.eos_token_id, "quick_gelu", True)
    clip_g = _clip(CLIP_G, vocab, tokenizer.bos_token_id, tokenizer.eos_token_id, "gelu", False)
    t5 = _t5(len(tokenizer_t5))
    if not (te / "tiny_t5xxl.safetensors").is_file():
        save_file(_contig(clip_l.state_dict()), str(te / "tiny_clip_l.safetensors"))
        save_file(_contig(clip_g.state_dict()), str(te / "tiny_clip_g.safetensors"))
        t5_sd = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}  # as t5xxl files
        save_file(_contig(t5_sd), str(te / "tiny_t5xxl.safetensors"))
    return TextEncoders(clip_l, clip_g, t5, tokenizer, tokenizer_2, tokenizer_t5)


def _save_folder(folder: Path, pipeline_cls: str, parts: dict, tokenizers: dict, scheduler) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": pipeline_cls, "_diffusers_version": "0.30.0"}
    for name, module in parts.items():
        module.save_pretrained(str(folder / name), safe_serialization=True)
        lib = "transformers" if module.__class__.__module__.startswith("transformers") else "diffusers"
        index[name] = [lib, type(module).__name__]
    for name, tok in tokenizers.items():
        tok.save_pretrained(str(folder / name))
        index[name] = ["transformers", type(tok).__name__]
    scheduler.save_pretrained(str(folder / "scheduler"))
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))


def build_sd3(root: Path) -> TinyFlow:
    from diffusers import FlowMatchEulerDiscreteScheduler

    models = root / "models"
    text = build_text_encoders(root)
    net = sd35_transformer()
    vae = _vae(1.5305, 0.0609)
    mmdit = sd3_to_mmdit(net)
    for sub in ("checkpoints", "diffusion_models", "vae", "diffusers"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    save_file(_contig(mmdit), str(models / "diffusion_models" / "tiny_sd35_mmdit.safetensors"))
    save_file(_contig(_vae_file(vae)), str(models / "vae" / "tiny_sd3_vae.safetensors"))
    allinone = {"model.diffusion_model." + k: v for k, v in mmdit.items()}
    allinone.update({"first_stage_model." + k: v for k, v in _vae_file(vae).items()})
    for name, module in (("clip_l", text.clip_l), ("clip_g", text.clip_g), ("t5xxl", text.t5)):
        for k, v in module.state_dict().items():
            if k != "encoder.embed_tokens.weight":
                allinone[f"text_encoders.{name}.transformer.{k}"] = v
    save_file(_contig(allinone), str(models / "checkpoints" / "tiny_sd35.safetensors"))
    folder = models / "diffusers" / "tiny_sd35"
    _save_folder(folder, "StableDiffusion3Pipeline",
                 {"transformer": net, "vae": vae, "text_encoder": text.clip_l, "text_encoder_2": text.clip_g,
                  "text_encoder_3": text.t5},
                 {"tokenizer": text.tokenizer, "tokenizer_2": text.tokenizer_2, "tokenizer_3": text.tokenizer_t5},
                 FlowMatchEulerDiscreteScheduler(shift=3.0))
    return TinyFlow(net, vae, text, folder)


def build_flux(root: Path) -> TinyFlow:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextModel

    models = root / "models"
    text = build_text_encoders(root)
    net = flux_transformer()
    vae = _vae(0.3611, 0.1159)
    for sub in ("diffusion_models", "vae", "diffusers"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    save_file(_contig(flux_to_bfl(net)), str(models / "diffusion_models" / "tiny_flux_dev.safetensors"))
    save_file(_contig(_vae_file(vae)), str(models / "vae" / "tiny_flux_ae.safetensors"))
    clip_l = CLIPTextModel(text.clip_l.config).eval()  # Flux's CLIP-L has no projection
    own = clip_l.state_dict()
    clip_l.load_state_dict({k if k in own else k[len("text_model."):]: v for k, v in text.clip_l.state_dict().items()
                            if k != "text_projection.weight"})
    folder = models / "diffusers" / "tiny_flux_dev"
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    _save_folder(folder, "FluxPipeline", {"transformer": net, "vae": vae, "text_encoder": clip_l,
                                          "text_encoder_2": text.t5},
                 {"tokenizer": text.tokenizer, "tokenizer_2": text.tokenizer_t5}, sched)
    return TinyFlow(net, vae, TextEncoders(clip_l, None, text.t5, text.tokenizer, None, text.tokenizer_t5), folder)
