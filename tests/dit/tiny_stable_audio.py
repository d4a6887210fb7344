"""A tiny random-weight Stable Audio Open model built from the real diffusers / transformers classes and saved in
the layouts users have: the all-in-one checkpoint ComfyUI's template loads (``stable-audio-open-1.0.safetensors``:
stable-audio-tools' names, ``model.model.`` / ``conditioner.conditioners.`` / ``pretransform.model.``) and the
T5-base text encoder (``t5-base.safetensors``, transformers' layout), with a T5-style tokenizer in
``text_encoders/t5_tokenizer/``.

``build_stable_audio(root)`` writes into ``root/models``: ``checkpoints/tiny_stable_audio.safetensors``,
``text_encoders/tiny_t5_base.safetensors`` and the tokenizer, and returns the diffusers modules for the
reference pipeline. The head width is 64 (Stable Audio Open's), so the rotary width is ComfyUI's too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.dit.tiny_wan import write_umt5_tokenizer
from tests.helpers.tiny_sd import _randomize

TEXT_WIDTH = 32


def t5_base():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(3)
    config = T5Config(vocab_size=64, d_model=TEXT_WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=32, feed_forward_proj="relu", is_encoder_decoder=False,
                      use_cache=False, dropout_rate=0.0)
    model = T5EncoderModel(config).eval()
    _randomize(model, 0.2)
    return model


def dit():
    from diffusers import StableAudioDiTModel

    torch.manual_seed(0)
    net = StableAudioDiTModel(sample_size=64, in_channels=64, num_layers=2, attention_head_dim=64,
                              num_attention_heads=2, num_key_value_attention_heads=1, out_channels=64,
                              cross_attention_dim=64, time_proj_dim=32, global_states_input_dim=2 * TEXT_WIDTH,
                              cross_attention_input_dim=TEXT_WIDTH).eval()
    _randomize(net, 0.05)
    return net


def projection():
    from diffusers import StableAudioProjectionModel

    torch.manual_seed(1)
    net = StableAudioProjectionModel(text_encoder_dim=TEXT_WIDTH, conditioning_dim=TEXT_WIDTH, min_value=0,
                                     max_value=512).eval()
    _randomize(net, 0.2)
    return net


def oobleck(sampling_rate: int = 44100):
    from diffusers import AutoencoderOobleck

    torch.manual_seed(2)
    vae = AutoencoderOobleck(encoder_hidden_size=128, downsampling_ratios=[2, 2], channel_multiples=[1, 1],
                             decoder_channels=4, decoder_input_channels=64, audio_channels=2,
                             sampling_rate=sampling_rate).eval()
    _randomize(vae, 0.1)
    return vae


# -- diffusers → stable-audio-tools names (what the released files hold) -----------------------------

def dit_tools_layout(sd: dict) -> dict:
    out = {}
    blocks = {}
    for key, value in sd.items():
        if key == "time_proj.weight":
            out["timestep_features.weight"] = value[:, None]
            continue
        if key.startswith("transformer_blocks."):
            new = "transformer.layers." + key[len("transformer_blocks."):]
            for old, repl in (("attn1", "self_attn"), ("attn2", "cross_attn"), ("norm1", "pre_norm"),
                              ("norm2", "cross_attend_norm"), ("norm3", "ff_norm"), ("ff.net.", "ff.ff."),
                              ("to_out.0", "to_out")):
                new = new.replace(old, repl)
            if "_norm." in new or "pre_norm." in new:
                new = new.replace(".weight", ".gamma").replace(".bias", ".beta")
            if ".self_attn.to_" in new and new.split(".")[-2] in ("to_q", "to_k", "to_v"):
                blocks.setdefault(new.rsplit(".", 2)[0] + ".to_qkv.weight", {})[new.split(".")[-2]] = value
                continue
            if ".cross_attn.to_" in new and new.split(".")[-2] in ("to_k", "to_v"):
                blocks.setdefault(new.rsplit(".", 2)[0] + ".to_kv.weight", {})[new.split(".")[-2]] = value
                continue
            out[new] = value
            continue
        for old, repl in (("timestep_proj", "to_timestep_embed"), ("global_proj", "to_global_embed"),
                          ("cross_attention_proj", "to_cond_embed"), ("proj_in", "transformer.project_in"),
                          ("proj_out", "transformer.project_out")):
            if key.startswith(old):
                key = repl + key[len(old):]
                break
        out[key] = value
    for key, parts in blocks.items():
        names = ("to_q", "to_k", "to_v") if key.endswith("to_qkv.weight") else ("to_k", "to_v")
        out[key] = torch.cat([parts[n] for n in names])
    out["transformer.rotary_pos_emb.inv_freq"] = torch.zeros(16)  # present in the released file, unused
    return out


def oobleck_tools_layout(sd: dict, blocks: int) -> dict:
    out = {}
    for key, value in sd.items():
        part, rest = key.split(".", 1)
        if rest.startswith("conv1."):
            new = f"{part}.layers.0.{rest[len('conv1.'):]}"
        elif rest.startswith("snake1."):
            new = f"{part}.layers.{blocks + 1}.{rest[len('snake1.'):]}"
        elif rest.startswith("conv2."):
            new = f"{part}.layers.{blocks + 2}.{rest[len('conv2.'):]}"
        else:
            _, b, name, tail = rest.split(".", 3)
            idx = int(b) + 1
            if name.startswith("res_unit"):
                unit = int(name[-1])
                layer = unit - 1 if part == "encoder" else unit + 1
                inner_name, leaf = tail.split(".", 1)
                inner = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}[inner_name]
                new = f"{part}.layers.{idx}.layers.{layer}.layers.{inner}.{leaf}"
            else:
                layer = ({"snake1": 3, "conv1": 4} if part == "encoder" else {"snake1": 0, "conv_t1": 1})[name]
                new = f"{part}.layers.{idx}.layers.{layer}.{tail}"
        if new.endswith((".alpha", ".beta")):
            value = value.reshape(-1)
        out[new] = value
    return out


def conditioners_tools_layout(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        for old, new in (("start_number_conditioner.", "seconds_start."),
                         ("end_number_conditioner.", "seconds_total.")):
            if key.startswith(old):
                out[new + key[len(old):].replace("time_positional_embedding", "embedder.embedding")] = value
    return out


@dataclass
class TinyStableAudio:
    root: Path
    transformer: Any
    projection: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any


def build_stable_audio(root: Path) -> TinyStableAudio:
    models = root / "models"
    for sub in ("checkpoints", "text_encoders"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    net, proj, vae, te = dit(), projection(), oobleck(), t5_base()
    sd = {}
    sd.update({"model.model." + k: v for k, v in dit_tools_layout(net.state_dict()).items()})
    sd.update({"conditioner.conditioners." + k: v for k, v in conditioners_tools_layout(proj.state_dict()).items()})
    sd.update({"pretransform.model." + k: v for k, v in oobleck_tools_layout(vae.state_dict(), 2).items()})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(models / "checkpoints" / "tiny_stable_audio.safetensors"))
    te_sd = {k: v.contiguous() for k, v in te.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(te_sd, str(models / "text_encoders" / "tiny_t5_base.safetensors"))
    tokenizer = write_umt5_tokenizer(models / "text_encoders" / "t5_tokenizer")
    tokenizer.model_max_length = 128
    return TinyStableAudio(root, net, proj, vae, te, tokenizer)
