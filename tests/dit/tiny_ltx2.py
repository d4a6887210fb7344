"""A tiny random-weight LTX-2 (video + audio) model built from the real diffusers / transformers classes and
saved in the layouts users have: ComfyUI's / Lightricks' all-in-one ``ltx-2-19b-*.safetensors`` (the transformer
with its text connectors under ``model.diffusion_model.``, ``text_embedding_projection.``, ``vae.``,
``audio_vae.``, ``vocoder.``, all in the original LTX names) and a separate Gemma 3 text encoder file
(``model.…``, transformers' Gemma 3 text layout) with a tokenizer folder next to it.

The widths are tiny, the structure is LTX-2 19B's (4 encoder / 3 decoder VAE blocks: 32× spatial and 8×
temporal compression; 128 latent channels), so the ComfyUI nodes' fixed shapes apply.

Tokenizer: a word-level tokenizer built here (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, the start token
prepended), standing in for Gemma's SentencePiece model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.helpers.tiny_sd import _randomize

WORDS = "a red fox in snow blue sky cat running on the beach dog under tree robot dancing".split()
GEMMA_WIDTH = 32
GEMMA_LAYERS = 2


def write_gemma_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>", padding_side="left")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def gemma3():
    from nodegraph_nodes.dit.ltx2 import gemma3_config

    from transformers import Gemma3TextModel

    torch.manual_seed(5)
    cfg = gemma3_config(vocab=64, hidden=GEMMA_WIDTH, layers=GEMMA_LAYERS, heads=2, kv_heads=1, head_dim=16,
                        intermediate=48)
    model = Gemma3TextModel(cfg).eval()
    _randomize(model, 0.2)
    return model


def transformer(seed: int = 41):
    from diffusers import LTX2VideoTransformer3DModel

    torch.manual_seed(0)
    net = LTX2VideoTransformer3DModel(
        in_channels=128, out_channels=128, num_attention_heads=1, attention_head_dim=128, cross_attention_dim=128,
        audio_in_channels=16, audio_out_channels=16, audio_num_attention_heads=1, audio_attention_head_dim=64,
        audio_cross_attention_dim=64, num_layers=2, caption_channels=GEMMA_WIDTH, rope_type="split",
        rope_double_precision=True, cross_attn_timestep_scale_multiplier=1000).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if re.search(r"norm_[qk]\.weight$", name):  # q/k RMS norms near 1: attention sharp enough that
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)  # the positions (RoPE) matter
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.ndim > 1 else 0.02))
    return net


def connectors():
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    torch.manual_seed(7)
    net = LTX2TextConnectors(
        caption_channels=GEMMA_WIDTH, text_proj_in_factor=GEMMA_LAYERS + 1, video_connector_num_attention_heads=1,
        video_connector_attention_head_dim=GEMMA_WIDTH, video_connector_num_layers=1,
        video_connector_num_learnable_registers=8, audio_connector_num_attention_heads=1,
        audio_connector_attention_head_dim=GEMMA_WIDTH, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=8, connector_rope_base_seq_len=4096, rope_theta=10000.0,
        rope_double_precision=True, causal_temporal_positioning=False, rope_type="split").eval()
    _randomize(net, 0.1)
    return net


def video_vae():
    from diffusers import AutoencoderKLLTX2Video

    torch.manual_seed(6)
    vae = AutoencoderKLLTX2Video(
        latent_channels=128, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False, False, False, False),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=False,
        patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False, spatial_compression_ratio=32,
        temporal_compression_ratio=8).eval()
    _randomize(vae, 0.1)
    g = torch.Generator().manual_seed(9)
    vae.latents_mean.copy_(torch.randn(128, generator=g) * 0.1)
    vae.latents_std.copy_(0.5 + torch.rand(128, generator=g))
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return vae


def audio_vae():
    from diffusers import AutoencoderKLLTX2Audio

    torch.manual_seed(8)
    vae = AutoencoderKLLTX2Audio(base_channels=16, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=1,
                                 in_channels=2, resolution=256, latent_channels=4, mel_bins=16).eval()
    _randomize(vae, 0.1)
    g = torch.Generator().manual_seed(10)
    vae.latents_mean.copy_(torch.randn(16, generator=g) * 0.1)
    vae.latents_std.copy_(0.5 + torch.rand(16, generator=g))
    return vae


def vocoder():
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    torch.manual_seed(11)
    voc = LTX2Vocoder(in_channels=32, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[20, 16],
                      upsample_factors=[10, 8], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                      output_sampling_rate=8000).eval()  # 100 mel frames a second × 80
    _randomize(voc, 0.03)
    return voc


def upsampler():
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    torch.manual_seed(12)
    net = LTX2LatentUpsamplerModel(in_channels=128, mid_channels=32, num_blocks_per_stage=1).eval()
    _randomize(net, 0.05)
    return net


# -- the original (LTX / ComfyUI) key names -----------------------------------------------------------------

TRANSFORMER_NAMES = (  # diffusers → original, applied in this order
    ("av_cross_attn_video_scale_shift", "av_ca_video_scale_shift_adaln_single"),
    ("av_cross_attn_video_a2v_gate", "av_ca_a2v_gate_adaln_single"),
    ("av_cross_attn_audio_scale_shift", "av_ca_audio_scale_shift_adaln_single"),
    ("av_cross_attn_audio_v2a_gate", "av_ca_v2a_gate_adaln_single"),
    ("video_a2v_cross_attn_scale_shift_table", "scale_shift_table_a2v_ca_video"),
    ("audio_a2v_cross_attn_scale_shift_table", "scale_shift_table_a2v_ca_audio"),
    ("norm_q", "q_norm"), ("norm_k", "k_norm"),
)


def transformer_original(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        new = k
        if new.startswith("proj_in."):
            new = "patchify_proj." + new[len("proj_in."):]
        elif new.startswith("audio_proj_in."):
            new = "audio_patchify_proj." + new[len("audio_proj_in."):]
        elif new.startswith("time_embed."):
            new = "adaln_single." + new[len("time_embed."):]
        elif new.startswith("audio_time_embed."):
            new = "audio_adaln_single." + new[len("audio_time_embed."):]
        for a, b in TRANSFORMER_NAMES:
            new = new.replace(a, b)
        out["model.diffusion_model." + new] = v.contiguous()
    return out


def connectors_original(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith("text_proj_in."):
            out["text_embedding_projection.aggregate_embed." + k[len("text_proj_in."):]] = v.contiguous()
            continue
        new = k.replace("video_connector", "video_embeddings_connector").replace(
            "audio_connector", "audio_embeddings_connector").replace("transformer_blocks", "transformer_1d_blocks")
        new = new.replace("norm_q", "q_norm").replace("norm_k", "k_norm")
        out["model.diffusion_model." + new] = v.contiguous()
    return out


def _vae_block(m: re.Match) -> str:
    part, i, up = m.group(1), int(m.group(3)), m.group(4)
    if part == "encoder":
        return f"encoder.down_blocks.{2 * i + 1 if up else 2 * i}"
    return f"decoder.up_blocks.{2 * i + 1 if up else 2 * i + 2}"


def video_vae_original(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        new = re.sub(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)(\.downsamplers\.0|\.upsamplers\.0)?",
                     _vae_block, k)
        new = new.replace("encoder.mid_block", "encoder.down_blocks.8").replace("decoder.mid_block",
                                                                                "decoder.up_blocks.0")
        new = new.replace("resnets", "res_blocks").replace("latents_mean", "per_channel_statistics.mean-of-means")
        new = new.replace("latents_std", "per_channel_statistics.std-of-means")
        out["vae." + new] = v.contiguous()
    return out


def audio_vae_original(sd: dict) -> dict:
    return {"audio_vae." + k.replace("latents_mean", "per_channel_statistics.mean-of-means").replace(
        "latents_std", "per_channel_statistics.std-of-means"): v.contiguous() for k, v in sd.items()}


def vocoder_original(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        new = k.replace("upsamplers", "ups").replace("resnets", "resblocks").replace("conv_in", "conv_pre")
        out["vocoder." + new.replace("conv_out", "conv_post")] = v.contiguous()
    return out


@dataclass
class TinyLtx2:
    transformer: Any
    connectors: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any
    audio_vae: Any
    vocoder: Any
    root: Path
    upsampler: Any = None

    def pipeline(self, scheduler=None):
        from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline

        pipe = LTX2Pipeline(scheduler=scheduler or FlowMatchEulerDiscreteScheduler(), vae=self.vae,
                            audio_vae=self.audio_vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                            connectors=self.connectors, transformer=self.transformer, vocoder=self.vocoder)
        pipe.set_progress_bar_config(disable=True)
        return pipe


CHECKPOINT = "tiny-ltx-2-19b-dev.safetensors"
UPSAMPLER = "tiny-ltx-2-spatial-upscaler-x2.safetensors"
GEMMA_FILE = "tiny_gemma_3_12B_it.safetensors"


def build_ltx2(root: Path) -> TinyLtx2:
    models = root / "models"
    for sub in ("checkpoints", "text_encoders", "latent_upscale_models"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tokenizer = write_gemma_tokenizer(models / "text_encoders" / "gemma3_tokenizer")
    te, net, conn = gemma3(), transformer(), connectors()
    vae, avae, voc = video_vae(), audio_vae(), vocoder()
    sd = {}
    sd.update(transformer_original(net.state_dict()))
    sd.update(connectors_original(conn.state_dict()))
    sd.update(video_vae_original(vae.state_dict()))
    sd.update(audio_vae_original(avae.state_dict()))
    sd.update(vocoder_original(voc.state_dict()))
    save_file(sd, str(models / "checkpoints" / CHECKPOINT))
    save_file({"model." + k: v.clone().contiguous() for k, v in te.state_dict().items()},
              str(models / "text_encoders" / GEMMA_FILE))
    up = upsampler()
    save_file({k: v.clone().contiguous() for k, v in up.state_dict().items()},
              str(models / "latent_upscale_models" / UPSAMPLER))
    return TinyLtx2(net, conn, te, tokenizer, vae, avae, voc, root, up)


def save_lora(root: Path, name: str, metadata: dict | None = None) -> None:
    """A small LoRA in LTX's names (``diffusion_model.…lora_A/B``) on two of the tiny transformer's layers, saved
    as ``models/loras/<name>`` with safetensors ``metadata``."""
    g = torch.Generator().manual_seed(3)
    sd = {}
    for layer, (out, inp) in {"transformer_blocks.0.attn1.to_k": (128, 128),
                              "transformer_blocks.1.audio_attn1.to_v": (64, 64)}.items():
        sd[f"diffusion_model.{layer}.lora_A.weight"] = torch.randn(2, inp, generator=g) * 0.05
        sd[f"diffusion_model.{layer}.lora_B.weight"] = torch.randn(out, 2, generator=g) * 0.05
    (root / "models" / "loras").mkdir(exist_ok=True)
    save_file(sd, str(root / "models" / "loras" / name), metadata=metadata)
