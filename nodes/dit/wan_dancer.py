"""Wan-Dancer behind UNETLoader: detection of the file, its weights converted for
:class:`~nodegraph_nodes.dit.wan_dancer_model.WanDancerTransformer`, the MODEL value and its runner.

Files: ComfyUI's ``wan2.2_dancer_14b_{global,local}_*.safetensors`` and the official ``Wan-AI/Wan-Dancer-14B``
``{global,local}_model.safetensors`` keep Wan's original names (bare or under ``model.diffusion_model.``) plus the
Dancer parts (marker: ``patch_embedding_global.weight`` with ``music_projection.weight``): ``head_global.…``,
``img_emb_refimage.proj.N``, ``music_projection``, ``music_encoder.N`` (``self_attn.in_proj_weight`` as
``nn.MultiheadAttention`` saves it, or split into ``q_proj`` / ``k_proj`` / ``v_proj``; the rope's ``rotary.freqs``
buffer is dropped), ``music_injector.injector.N`` (only ``v`` and ``o`` are kept: with one music token per query
group the attention is the value). Parts the official inference does not use are dropped when present
(``ref_conv``, ``patch_embedding_refimagevae``, ``img_emb_refface``: ComfyUI notes the released file holds a
``ref_conv`` the original pipeline never calls). The Wan part goes through diffusers' Wan converter. The config comes from the
shapes (heads of 128 as other Wan files, 4 music heads as the official model); injector ``i`` follows block
``(0, 4, 8, 12, 16, 20, 24, 27)[i]``.

Runner (ComfyUI's ``WanDancer`` conditions, set by WanDancerVideo): ``audio_embed`` (the music features
``[1, frames, 35]``), ``fps``, ``audio_inject_scale``, ``clip_vision_output`` (the start frame) and
``clip_vision_output_ref`` (the reference image), and the start latent / mask channels as WanImageToVideo's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.model import _rows
from nodegraph_nodes.dit.qwen_image import open_runner
from nodegraph_nodes.dit.wan import WanModel, WanRunner
from nodegraph_nodes.dit.wan_variant import build_variant, load_variant, original_prefix, wan_base_config
from nodegraph_nodes.sampling.model import CondPart

MARKERS = ("patch_embedding_global.weight", "music_projection.weight")
DANCER_PREFIXES = ("patch_embedding_global.", "head_global.", "img_emb_refimage.", "music_projection.",
                   "music_encoder.", "music_injector.")
#: official modules the Dancer inference never calls (reference-latent and face branches of the training code)
UNUSED_PREFIXES = ("ref_conv.", "patch_embedding_refimagevae.", "img_emb_refface.")
MUSIC_HEADS = 4


def detect_prefix(keys) -> str | None:
    """The key prefix of a Wan-Dancer file (original layout), else ``None``."""
    return original_prefix(keys, MARKERS)


def convert(sd: dict) -> dict:
    """Original-layout Dancer weights → :class:`WanDancerTransformer`'s names."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    sd = {k: v for k, v in sd.items() if not k.startswith(UNUSED_PREFIXES)}
    out = convert_wan_transformer_to_diffusers({k: v for k, v in sd.items() if not k.startswith(DANCER_PREFIXES)})
    split: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if not k.startswith(DANCER_PREFIXES) or re.match(r"music_encoder\.\d+\.rotary\.", k):
            continue
        if k.startswith("music_injector.") and not re.match(r"music_injector\.injector\.\d+\.(v|o)\.", k):
            continue
        m = re.match(r"(music_encoder\.\d+\.self_attn)\.(q|k|v)_proj\.(weight|bias)$", k)
        if m:
            split.setdefault(f"{m.group(1)}.in_proj_{m.group(3)}", {})[m.group(2)] = v
            continue
        out[k] = v
    for name, qkv in split.items():
        if set(qkv) != {"q", "k", "v"}:
            raise ModelFileError(f"the Wan-Dancer music encoder weights lack {name}'s "
                                 f"{sorted({'q', 'k', 'v'} - set(qkv))} projections")
        out[name] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def transformer_config(sd: dict) -> dict:
    """The :class:`WanDancerTransformer` config from converted weights' shapes."""
    from nodegraph_nodes.dit.wan import transformer_config as wan_config

    base = wan_config(sd)
    try:
        music = sd["music_projection.weight"]
        ffn = sd["music_encoder.0.linear1.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Wan-Dancer weights lack {exc.args[0]}") from None
    if "image_dim" not in base:
        raise ModelFileError("the Wan-Dancer weights lack the CLIP image embedder (img_emb.…)")
    count = lambda pattern: len({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})  # noqa: E731
    return wan_base_config(base, ("image_dim",)) | {
        "music_features": int(music.shape[1]), "music_dim": int(music.shape[0]), "music_heads": MUSIC_HEADS,
        "music_ffn": int(ffn.shape[0]), "music_layers": count(r"music_encoder\.(\d+)\."),
        "injectors": count(r"music_injector\.injector\.(\d+)\.")}


def build_transformer(sd: dict, dtype: torch.dtype):
    from nodegraph_nodes.dit.wan_dancer_model import WanDancerTransformer

    return build_variant(sd, dtype, "Wan-Dancer transformer", convert, transformer_config, WanDancerTransformer)


def load_transformer(path: Path, prefix: str, manager, device: str, weight_dtype: str = "default") -> "WanDancerModel":
    """UNETLoader for a Wan-Dancer file."""
    return load_variant(path, prefix, manager, device, weight_dtype, build_transformer, WanDancerModel)


@dataclass(frozen=True, eq=False)
class WanDancerModel(WanModel):
    """MODEL: a Wan-Dancer transformer (Wan 2.1 latents, music conditioning)."""

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, WanDancerRunner)


def _clip_states(part: CondPart, key: str, device, dtype):
    output = part.extras.get(key)
    return None if output is None else _rows(output.penultimate_hidden_states.to(device, dtype), part.rows)


class WanDancerRunner(WanRunner):
    """One run's calls of a :class:`WanDancerTransformer`: one call per conditioning part."""

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        if x_in.ndim != 5:
            raise ValueError(f"Wan-Dancer samples video latents [B, 16, frames, h, w]; this latent is "
                             f"{list(x_in.shape)} (make it with WanDancerVideo)")
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, torch.float32).reshape(-1).expand(x.shape[0])
        outs, row = [], 0
        for part in parts:
            n = part.rows
            xs = x[row:row + n]
            xs = torch.cat([xs, self._concat(xs, part)], dim=1)
            clip = _clip_states(part, "clip_vision_output", self.device, self.dtype)
            if clip is None:
                raise ValueError("Wan-Dancer needs the start frame's CLIP vision output: connect CLIPVisionEncode "
                                 "to WanDancerVideo.clip_vision_output")
            music = part.extras.get("audio_embed")
            music = _rows(music.to(self.device, self.dtype), n) if music is not None else None
            outs.append(self.net(xs, t[row:row + n], _rows(part.cond.to(self.device, self.dtype), n), clip,
                                 _clip_states(part, "clip_vision_output_ref", self.device, self.dtype), music,
                                 fps=float(part.extras.get("fps", 30.0)),
                                 music_scale=float(part.extras.get("audio_inject_scale", 1.0))))
            row += n
        return torch.cat(outs)
