"""The audio VAE of Stable Audio Open and ACE-Step 1.5: diffusers' ``AutoencoderOobleck`` (stereo waveform ↔
``[B, 64, T / 1920..2048]`` latents), the VAE value VAEDecodeAudio / VAEEncodeAudio take, and the reading of
its files. Nothing is downloaded.

Key layouts (detected from the names):

* stable-audio-tools' names (Stable Audio's checkpoint under ``pretransform.model.``, ComfyUI's
  ``ace_1.5_vae.safetensors`` bare): ``encoder.layers.0`` (the input conv), ``encoder.layers.N`` (blocks:
  ``layers.0..2`` residual units, ``layers.3`` snake, ``layers.4`` strided conv), then the last snake and
  conv; the decoder mirrors it (``layers.0`` snake, ``layers.1`` transposed conv, ``layers.2..4`` residual
  units). Residual units: ``layers.0`` snake, ``layers.1`` conv, ``layers.2`` snake, ``layers.3`` conv. Snake
  ``alpha``/``beta`` are ``[C]`` there and ``[1, C, 1]`` in diffusers; weight-normed convs keep
  ``weight_g``/``weight_v`` (``parametrizations.weight.original0/1`` are read as these).
* diffusers' names (``encoder.block.N.res_unit1…``) load as is.

The config comes from the shapes (channels, strides from the strided convs' kernels: ``2 · stride``); the
sample rate is not in the weights: 44.1 kHz for Stable Audio, 48 kHz for ACE-Step 1.5 (the caller says).

Decoding follows ComfyUI's VAEDecodeAudio: the waveform is divided by ``5 · std`` (over channels and time,
per batch item) where that is above 1. Encoding takes the latent distribution's mean (ComfyUI samples it
with an unseeded draw; the mean is reproducible).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.files import ModelFileError

SNAKE = re.compile(r"\.(alpha|beta)$")


def is_tools_layout(keys, prefix: str = "") -> bool:
    keyset = set(keys)
    return any(k.startswith(prefix + "decoder.layers.") for k in keyset) and any(
        k.startswith(prefix + "encoder.layers.") for k in keyset)


def is_diffusers_layout(keys, prefix: str = "") -> bool:
    keyset = set(keys)
    return prefix + "decoder.conv1.bias" in keyset and any(k.startswith(prefix + "decoder.block.0.") for k in keyset)


def _weight_norm_names(key: str) -> str:
    return key.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v")


def convert_tools_layout(sd: dict) -> dict:
    """stable-audio-tools' Oobleck names → diffusers' ``AutoencoderOobleck`` names."""
    out: dict = {}
    for part in ("encoder", "decoder"):
        keys = [k for k in sd if k.startswith(part + ".layers.")]
        indices = sorted({int(k.split(".")[2]) for k in keys})
        if not indices:
            raise ModelFileError(f"the Oobleck VAE weights have no {part}")
        last = indices[-1]
        for key in keys:
            idx = int(key.split(".")[2])
            rest = _weight_norm_names(".".join(key.split(".")[3:]))
            if idx == 0:
                new = f"{part}.conv1.{rest}"
            elif idx == last:
                new = f"{part}.conv2.{rest}"
            elif idx == last - 1:
                new = f"{part}.snake1.{rest}"
            else:
                sub = rest.split(".")
                layer, tail = int(sub[1]), ".".join(sub[2:])
                block = f"{part}.block.{idx - 1}"
                if part == "encoder":
                    name = {3: "snake1", 4: "conv1"}.get(layer, f"res_unit{layer + 1}")
                else:
                    name = {0: "snake1", 1: "conv_t1"}.get(layer, f"res_unit{layer - 1}")
                if name.startswith("res_unit"):
                    unit = tail.split(".")
                    inner = {0: "snake1", 1: "conv1", 2: "snake2", 3: "conv2"}[int(unit[1])]
                    tail = inner + "." + ".".join(unit[2:])
                    new = f"{block}.{name}.{tail}"
                else:
                    new = f"{block}.{name}.{tail}"
            value = sd[key]
            if SNAKE.search(new) and value.ndim == 1:
                value = value[None, :, None]
            out[new] = value
    return out


def vae_config(sd: dict) -> dict:
    """``AutoencoderOobleck`` config from diffusers-layout weights' shapes."""
    try:
        enc_in = sd["encoder.conv1.weight_v"]
        dec_in = sd["decoder.conv1.weight_v"]
        dec_out = sd["decoder.conv2.weight_v"]
    except KeyError as exc:
        raise ModelFileError(f"the Oobleck VAE weights lack {exc.args[0]}") from None
    hidden = int(enc_in.shape[0])
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    strides, mults = [], [1]
    for b in blocks:
        conv = sd[f"encoder.block.{b}.conv1.weight_v"]
        strides.append(int(conv.shape[-1]) // 2)
        mults.append(int(conv.shape[0]) // hidden)
    dec_channels = int(dec_in.shape[0]) // mults[-1]
    return {"encoder_hidden_size": hidden, "downsampling_ratios": strides, "channel_multiples": mults[1:],
            "decoder_channels": dec_channels, "decoder_input_channels": int(dec_in.shape[1]),
            "audio_channels": int(dec_out.shape[0])}


def build_vae(sd: dict, dtype: torch.dtype, sample_rate: int):
    """An ``AutoencoderOobleck`` from weights in either layout."""
    from diffusers import AutoencoderOobleck

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    if is_tools_layout(sd):
        sd = convert_tools_layout(sd)
    else:
        sd = {_weight_norm_names(k): v for k, v in sd.items()}
    config = dict(vae_config(sd), sampling_rate=int(sample_rate))
    return _instantiate(AutoencoderOobleck, config, sd, dtype, "Oobleck audio VAE")


@dataclass(frozen=True, eq=False)
class AudioVae(ManagerOwned):
    """VAE: an ``AutoencoderOobleck`` (``handle``) of ``sample_rate`` audio; ``family`` names the model it
    belongs to (``stable_audio`` / ``ace_step_1.5``)."""

    handle: Any
    sample_rate: int
    family: str = "stable_audio"
    source: str = ""
    latent_channels: int = 64
    #: image nodes' size arithmetic stays defined; VAEDecode / VAEEncode refuse this VAE by its sample_rate
    scale_factor: int = 1

    def decode_audio(self, ctx, latent: torch.Tensor) -> torch.Tensor:
        """Waveforms ``[B, C, T · hop]`` of latents ``[B, 64, T]`` (ComfyUI's loudness limit applied)."""
        if latent.ndim != 3:
            raise ValueError(f"VAEDecodeAudio.samples: this {self.family} VAE decodes audio latents [B, C, T]; "
                             f"this latent is {list(latent.shape)}")
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as vae, torch.inference_mode():
            dtype = next(vae.parameters()).dtype
            if latent.shape[1] != vae.config.decoder_input_channels:
                raise ValueError(f"VAEDecodeAudio.samples: the latent has {latent.shape[1]} channels; this VAE "
                                 f"decodes {vae.config.decoder_input_channels}")
            audio = vae.decode(latent.to(ctx.device, dtype)).sample.float().cpu()
        std = torch.std(audio, dim=[1, 2], keepdim=True) * 5.0
        std[std < 1.0] = 1.0
        return audio / std

    def encode_audio(self, ctx, waveform: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, 64, T / hop]`` of waveforms ``[B, C, T]`` at this VAE's sample rate (mono is
        doubled to stereo, more channels than the VAE takes are an error)."""
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as vae, torch.inference_mode():
            channels = int(vae.config.audio_channels)
            if waveform.shape[1] == 1 and channels == 2:
                waveform = waveform.repeat(1, 2, 1)
            if waveform.shape[1] != channels:
                raise ValueError(f"VAEEncodeAudio.audio: {waveform.shape[1]} channels; this VAE takes {channels}")
            dtype = next(vae.parameters()).dtype
            return vae.encode(waveform.to(ctx.device, dtype)).latent_dist.mean.float().cpu()


def load_vae_sd(path: Path, key: str, sd_fn, manager, device: str, sample_rate: int, family: str) -> AudioVae:
    """The manager's ``AudioVae`` built from ``sd_fn()`` (weights in either layout, no prefix)."""
    from nodegraph_nodes.diffusion.components import _manager_key
    from nodegraph_nodes.dit.loading import _stored

    dtype = torch.float32  # the Oobleck's snake activations are sensitive; it is small enough for fp32

    def loader():
        sd = sd_fn()
        return build_vae(sd, _stored(manager, sd, dtype), sample_rate)

    handle = manager.load(_manager_key(path, key, dtype), loader, compute_dtype=dtype)
    return AudioVae(handle, int(sample_rate), family, source=str(path))
