"""Wan 2.2 S2V behind UNETLoader: detection of the file, its weights converted for
:class:`~nodegraph_nodes.dit.wan_s2v_model.WanS2VTransformer`, the MODEL value and its runner.

Files: ComfyUI's ``wan2.2_s2v_14B_*.safetensors`` (and the official ``Wan2.2-S2V-14B`` weights) keep Wan's original
names (bare or under ``model.diffusion_model.``) plus the S2V parts: ``casual_audio_encoder.…`` (ComfyUI's marker:
``casual_audio_encoder.encoder.final_linear.weight``), ``audio_injector.injector.N`` / ``injector_adain_layers.N``,
``frame_packer.proj*``, ``cond_encoder``, ``trainable_cond_mask``. The Wan part goes through diffusers' Wan
converter; the injectors' ``q/k/v/o`` become ``to_q/to_k/to_v/to_out.0``; everything else keeps its name
(``injector_adain_output_layers``, unused by ComfyUI and the official forward, are dropped). The config comes
from the shapes (heads of 128 as other Wan files); the injection layers are ComfyUI's fixed list (0, 4, … 39)
for every file, as ComfyUI builds them.

Runner (ComfyUI's ``WAN22_S2V`` conditions): ``audio_embed`` ``[1, layers, width, frames]`` (WanSoundImageToVideo;
zeros on the negative; without it no audio is injected, as in ComfyUI), ``reference_latents`` (the last one, in the model's space), ``reference_motion`` (the
previous chunk's latents, WanSoundImageToVideoExtend), ``control_video`` (a latent, in the model's space). ComfyUI
puts no audio in front of the chunk (the official pipeline's ``motion_frames`` padding is not applied).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.model import _rows
from nodegraph_nodes.dit.qwen_image import open_runner
from nodegraph_nodes.dit.runner_common import NetRunner
from nodegraph_nodes.dit.wan import WanModel
from nodegraph_nodes.dit.wan_variant import build_variant, latent_in, load_variant, original_prefix, wan_base_config
from nodegraph_nodes.sampling.model import CondPart

MARKER = "casual_audio_encoder.encoder.final_linear.weight"
S2V_PREFIXES = ("casual_audio_encoder.", "audio_injector.", "frame_packer.", "cond_encoder.", "trainable_cond_mask.")
INJECTOR_NAMES = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}


def detect_prefix(keys) -> str | None:
    """The key prefix of a Wan S2V file (original layout), else ``None``."""
    return original_prefix(keys, (MARKER,))


def convert(sd: dict) -> dict:
    """Original-layout S2V weights → :class:`WanS2VTransformer`'s names."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    wan = {k: v for k, v in sd.items() if not k.startswith(S2V_PREFIXES)}
    out = convert_wan_transformer_to_diffusers(wan)
    for k, v in sd.items():
        if not k.startswith(S2V_PREFIXES) or k.startswith("audio_injector.injector_adain_output_layers."):
            continue
        m = re.match(r"audio_injector\.injector\.(\d+)\.(q|k|v|o|norm_q|norm_k)\.(.+)$", k)
        if m:
            k = f"audio_injector.injector.{m.group(1)}.{INJECTOR_NAMES[m.group(2)]}.{m.group(3)}"
        out[k] = v
    return out


def transformer_config(sd: dict) -> dict:
    """The :class:`WanS2VTransformer` config from converted weights' shapes."""
    from nodegraph_nodes.dit.wan import transformer_config as wan_config

    base = wan_config(sd)
    try:
        local = sd["casual_audio_encoder.encoder.conv1_local.conv.weight"]
        weights = sd["casual_audio_encoder.weights"]
    except KeyError as exc:
        raise ModelFileError(f"the Wan S2V weights lack {exc.args[0]}") from None
    dim = base["num_attention_heads"] * base["attention_head_dim"]
    injectors = len({int(m.group(1)) for k in sd if (m := re.match(r"audio_injector\.injector\.(\d+)\.", k))})
    cond = sd.get("cond_encoder.weight")
    return wan_base_config(base) | {
        "cond_dim": int(cond.shape[1]) if cond is not None else 0, "audio_dim": int(local.shape[1]),
        "audio_layers": int(weights.shape[1]), "num_audio_token": int(local.shape[0]) // (dim // 4),
        "enable_adain": "casual_audio_encoder.encoder.final_linear.weight" in sd, "injectors": injectors}


def build_transformer(sd: dict, dtype: torch.dtype):
    from nodegraph_nodes.dit.wan_s2v_model import WanS2VTransformer

    return build_variant(sd, dtype, "Wan S2V transformer", convert, transformer_config, WanS2VTransformer)


def load_transformer(path: Path, prefix: str, manager, device: str, weight_dtype: str = "default") -> "WanS2VModel":
    """UNETLoader for a Wan 2.2 S2V file."""
    return load_variant(path, prefix, manager, device, weight_dtype, build_transformer, WanS2VModel)


@dataclass(frozen=True, eq=False)
class WanS2VModel(WanModel):
    """MODEL: a Wan 2.2 S2V transformer (Wan 2.1 latents, audio conditioning)."""

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, WanS2VRunner)


class WanS2VRunner(NetRunner):
    """One run's calls of a :class:`WanS2VTransformer`: one call per conditioning part."""

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        if x_in.ndim != 5:
            raise ValueError(f"Wan S2V samples video latents [B, 16, frames, h, w]; this latent is {list(x_in.shape)} "
                             "(make it with WanSoundImageToVideo)")
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, torch.float32).reshape(-1).expand(x.shape[0])
        outs, row = [], 0
        for part in parts:
            n = part.rows
            xs = x[row:row + n]
            audio = part.extras.get("audio_embed")  # None: no audio injected (ComfyUI's forward skips it)
            if audio is not None and audio.shape[-1] < xs.shape[2] * 4:
                raise ValueError(f"WanSoundImageToVideo's audio covers {audio.shape[-1]} frames; the sampled latent "
                                 f"needs {xs.shape[2] * 4}: sample the latent that node gives")
            refs = part.extras.get("reference_latents")
            reference = latent_in(refs[-1], n, self.device, self.dtype) if refs else None
            motion = part.extras.get("reference_motion")
            motion = latent_in(motion, n, self.device, self.dtype) if motion is not None else None
            control = part.extras.get("control_video")
            control = latent_in(control, n, self.device, self.dtype) if control is not None else None
            outs.append(self.net(xs, t[row:row + n], _rows(part.cond.to(self.device, self.dtype), n),
                                 _rows(audio.to(self.device, self.dtype), n) if audio is not None else None,
                                 reference=reference, control=control,
                                 motion=motion))
            row += n
        return torch.cat(outs)
