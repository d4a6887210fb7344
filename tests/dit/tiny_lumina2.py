"""A tiny random-weight Lumina Image 2.0 built from the real classes (diffusers
``Lumina2Transformer2DModel``, transformers ``Gemma2Model``) and saved as users have it:
``diffusion_models/tiny_lumina_2.safetensors`` (ComfyUI's repackaged NextDiT names under
``model.diffusion_model.``), ``text_encoders/tiny_gemma_2_2b.safetensors`` (``model.layers.…``, as
``gemma_2_2b_fp16.safetensors``), the tokenizer in ``text_encoders/gemma2_tokenizer/`` (a Unigram
``tokenizer.json`` built here, ``<bos>`` added like Gemma's), Flux's VAE (``vae/tiny_flux_ae.safetensors``)
``checkpoints/tiny_lumina_2_all_in_one.safetensors`` (ComfyUI's all-in-one layout: ``model.diffusion_model.``,
``vae.``, ``text_encoders.gemma2_2b.transformer.``) and ``diffusers/tiny_lumina_2/`` (a ``Lumina2Pipeline``
folder, scheduler shift 6).

The single-file export is written from the layout's key names, independently of the engine's import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _contig, _random_transformer, _save_folder, _vae, _vae_file

GEMMA_WIDTH = 32
WORDS = ("You are an assistant designed to generate superior images with the superior degree of image-text "
         "alignment based on textual prompts or user prompts high-quality highest <Prompt Start> a photo of "
         "red fox in snow blue sky cat").split()


def write_gemma_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = [("<pad>", 0.0), ("<eos>", 0.0), ("<bos>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in dict.fromkeys(WORDS)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.()!:<>-"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="right")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def gemma2(vocab: int):
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(7)
    cfg = Gemma2Config(vocab_size=vocab, hidden_size=GEMMA_WIDTH, intermediate_size=64, num_hidden_layers=3,
                       num_attention_heads=1, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                       hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0,
                       attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096,
                       max_position_embeddings=8192, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    return Gemma2Model(cfg).eval()


def lumina2_transformer():
    from diffusers import Lumina2Transformer2DModel

    torch.manual_seed(0)
    net = Lumina2Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, hidden_size=64, num_layers=2,
                                    num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
                                    norm_eps=1e-5, axes_dim_rope=(10, 10, 12), axes_lens=(300, 512, 512),
                                    cap_feat_dim=GEMMA_WIDTH)
    return _random_transformer(net, 31)


_BLOCK = {"attn.to_out.0": "attention.out", "attn.norm_q": "attention.q_norm", "attn.norm_k": "attention.k_norm",
          "feed_forward.linear_1": "feed_forward.w1", "feed_forward.linear_2": "feed_forward.w2",
          "feed_forward.linear_3": "feed_forward.w3", "norm1.linear": "adaLN_modulation.1",
          "norm1.norm": "attention_norm1", "norm2": "attention_norm2", "ffn_norm1": "ffn_norm1",
          "ffn_norm2": "ffn_norm2"}


def lumina2_to_comfy(net) -> dict[str, torch.Tensor]:
    """diffusers Lumina2Transformer2DModel → ComfyUI's NextDiT names (lumina_2_model_bf16.safetensors)."""
    sd = net.state_dict()
    top = {"time_caption_embed.caption_embedder.": "cap_embedder.",
           "time_caption_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
           "time_caption_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
           "norm_out.linear_1.": "final_layer.adaLN_modulation.1.", "norm_out.linear_2.": "final_layer.linear.",
           "x_embedder.": "x_embedder."}
    out = {}
    for key, value in sd.items():
        for old, new in top.items():
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            group, i, rest = key.split(".", 2)
            name, kind = rest.rsplit(".", 1)
            if name in ("attn.to_q", "attn.to_k", "attn.to_v"):
                if name == "attn.to_q":
                    out[f"{group}.{i}.attention.qkv.{kind}"] = torch.cat(
                        [sd[f"{group}.{i}.attn.to_{x}.{kind}"] for x in "qkv"])
            elif group == "context_refiner" and name == "norm1":
                out[f"{group}.{i}.attention_norm1.{kind}"] = value
            else:
                out[f"{group}.{i}.{_BLOCK[name]}.{kind}"] = value
    out["norm_final.weight"] = torch.ones(net.config.hidden_size)  # in the released files, unused
    return out


@dataclass
class TinyLumina2:
    transformer: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any
    diffusers_dir: Path


def build_lumina2(root: Path) -> TinyLumina2:
    from diffusers import FlowMatchEulerDiscreteScheduler

    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "diffusers"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tokenizer = write_gemma_tokenizer(models / "text_encoders" / "gemma2_tokenizer")
    te, net, vae = gemma2(len(tokenizer)), lumina2_transformer(), _vae(0.3611, 0.1159)
    comfy = {"model.diffusion_model." + k: v for k, v in lumina2_to_comfy(net).items()}
    save_file(_contig(comfy), str(models / "diffusion_models" / "tiny_lumina_2.safetensors"))
    save_file(_contig({"model." + k: v for k, v in te.state_dict().items()}),
              str(models / "text_encoders" / "tiny_gemma_2_2b.safetensors"))
    save_file(_contig(_vae_file(vae)), str(models / "vae" / "tiny_flux_ae.safetensors"))
    allinone = dict(comfy)  # ComfyUI's lumina_2.safetensors: + VAE under vae., Gemma 2 under text_encoders.
    allinone.update({"vae." + k: v for k, v in _vae_file(vae).items()})
    allinone.update({"text_encoders.gemma2_2b.transformer.model." + k: v for k, v in te.state_dict().items()})
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file(_contig(allinone), str(models / "checkpoints" / "tiny_lumina_2_all_in_one.safetensors"))
    folder = models / "diffusers" / "tiny_lumina_2"
    _save_folder(folder, "Lumina2Pipeline", {"transformer": net, "vae": vae, "text_encoder": te},
                 {"tokenizer": tokenizer}, FlowMatchEulerDiscreteScheduler(shift=6.0))
    return TinyLumina2(net, te, tokenizer, vae, folder)
