"""ComfyUI's SD3 / Flux.1 nodes: text-encoder loaders for several files, the 16-channel empty latent,
per-encoder prompts and Flux's guidance value.

``DualCLIPLoader`` takes ``sd3`` (two of CLIP-L, CLIP-G, T5) and ``flux`` (CLIP-L + T5); ``sdxl`` and
the other families of ComfyUI's list are refused with a clear error until their loaders exist (stricter
than silently loading something else). ``TripleCLIPLoader`` is SD3's CLIP-L + CLIP-G + T5. Encoders
are recognised from their weights, so the file order does not matter (as in ComfyUI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.node import COMBO, FLOAT, INT, STRING, Input, Node, Output
from nodegraph.types import CLIP, CONDITIONING, LATENT

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.diffusion.files import file_identity, list_model_files, resolve_model, ModelFileError
from nodegraph_nodes.dit.text import FlowClip

MAX_RESOLUTION = 16384
#: ComfyUI's DualCLIPLoader types in its order (nodes.py, Comfy-Org/ComfyUI 02217e3); the ones nodegraph does
#: not load validate and fail at run time with an error naming the type.
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15", "kandinsky5",
                   "kandinsky5_image", "ltxv", "newbie", "ace"]
SUPPORTED_DUAL = ("sd3", "flux")


def _text_encoder_choices(paths: Paths) -> list[str]:
    return list_model_files(paths, "text_encoders")


def _identities(paths: Paths, names: list[str | None]) -> Any:
    out = []
    for name in names:
        if not name:
            return None
        try:
            out.append(file_identity(resolve_model(paths, "text_encoders", name)))
        except ModelFileError:
            return None
    return tuple(out)


def _load(ctx, names: list[str], family: str, device: str, where: str) -> FlowClip:
    from nodegraph_nodes.dit.loading import load_text_encoders

    paths = [resolve_model(ctx.paths, "text_encoders", n) for n in names]
    target = "cpu" if device == "cpu" else ctx.device
    return load_text_encoders(paths, family, ctx.service("models"), target, Path(ctx.paths.models_dir), where)


class DualCLIPLoader(Node):
    """Loads two text encoders into one CLIP: ``sd3`` (CLIP-L / CLIP-G / T5, any two), ``flux`` (CLIP-L and
    T5), ``hidream`` (two of CLIP-L / CLIP-G / T5 / Llama 3.1), ``ace`` (ACE-Step 1.5's two Qwen3 files), ``hunyuan_video_15`` (Qwen2.5-VL and ByT5, HunyuanVideo 1.5's). Other types of ComfyUI's list are refused (their families are not loaded by nodegraph yet)."""

    category = "advanced/loaders"
    clip_name1 = Input(COMBO, choices=_text_encoder_choices)
    clip_name2 = Input(COMBO, choices=_text_encoder_choices)
    type = Input(COMBO, choices=DUAL_CLIP_TYPES)
    device = Input(COMBO, choices=["default", "cpu"], optional=True, default="default")
    outputs = (Output(CLIP),)

    @classmethod
    def fingerprint(cls, paths: Paths, clip_name1: str | None = None, clip_name2: str | None = None,
                    **_: Any) -> Any:
        return _identities(paths, [clip_name1, clip_name2])

    def execute(self, clip_name1: str, clip_name2: str, type: str, device: str = "default") -> tuple:
        if type == "hidream":  # two of HiDream's four encoders, the others' parts zeros (ComfyUI's)
            from nodegraph_nodes.dit.hidream_text import load_clip

            paths = [resolve_model(self.ctx.paths, "text_encoders", n) for n in (clip_name1, clip_name2)]
            return (load_clip(paths, self.ctx.service("models"), "cpu" if device == "cpu" else self.ctx.device,
                              Path(self.ctx.paths.models_dir), "DualCLIPLoader"),)
        if type == "ace":  # ACE-Step 1.5: the Qwen3 embedding model and the 5 Hz LM (nodegraph_nodes.dit.ace_step)
            from nodegraph_nodes.dit.ace_step import load_text_encoders as load_ace

            paths = [resolve_model(self.ctx.paths, "text_encoders", n) for n in (clip_name1, clip_name2)]
            return (load_ace(paths, self.ctx.service("models"), "cpu" if device == "cpu" else self.ctx.device,
                             Path(self.ctx.paths.models_dir)),)
        if type == "hunyuan_video_15":  # Qwen2.5-VL + ByT5 (nodegraph_nodes.dit.hunyuan_video15_text)
            from nodegraph_nodes.dit.hunyuan_video15_text import load_clip as load_hv15

            paths = [resolve_model(self.ctx.paths, "text_encoders", n) for n in (clip_name1, clip_name2)]
            return (load_hv15(paths, self.ctx.service("models"), "cpu" if device == "cpu" else self.ctx.device,
                              Path(self.ctx.paths.models_dir)),)
        if type not in SUPPORTED_DUAL:
            raise ValueError(f"DualCLIPLoader.type: {type!r} is not supported yet; nodegraph loads "
                             f"{', '.join(SUPPORTED_DUAL)} (SDXL's two encoders come with its checkpoint)")
        return (_load(self.ctx, [clip_name1, clip_name2], type, device, "DualCLIPLoader"),)


class TripleCLIPLoader(Node):
    """Loads SD3's three text encoders (CLIP-L, CLIP-G, T5-XXL) into one CLIP, in any order."""

    category = "advanced/loaders"
    clip_name1 = Input(COMBO, choices=_text_encoder_choices)
    clip_name2 = Input(COMBO, choices=_text_encoder_choices)
    clip_name3 = Input(COMBO, choices=_text_encoder_choices)
    outputs = (Output(CLIP),)

    @classmethod
    def fingerprint(cls, paths: Paths, clip_name1: str | None = None, clip_name2: str | None = None,
                    clip_name3: str | None = None, **_: Any) -> Any:
        return _identities(paths, [clip_name1, clip_name2, clip_name3])

    def execute(self, clip_name1: str, clip_name2: str, clip_name3: str) -> tuple:
        return (_load(self.ctx, [clip_name1, clip_name2, clip_name3], "sd3", "default", "TripleCLIPLoader"),)


class EmptySD3LatentImage(Node):
    """A batch of empty 16-channel latents (SD3, SD3.5, Flux.1: 1/8 of the image size)."""

    category = "latent/sd3"
    width = Input(INT, default=1024, min=16, max=MAX_RESOLUTION, step=16)
    height = Input(INT, default=1024, min=16, max=MAX_RESOLUTION, step=16)
    batch_size = Input(INT, default=1, min=1, max=4096)
    outputs = (Output(LATENT),)

    def execute(self, width: int, height: int, batch_size: int = 1) -> tuple:
        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


def _flow_clip(clip, where: str, family: str | None = None) -> FlowClip:
    if not isinstance(clip, FlowClip):
        raise ValueError(f"{where}: this CLIP ({getattr(clip, 'family', type(clip).__name__)}) is not an SD3/Flux "
                         "text encoder set; load one with TripleCLIPLoader / DualCLIPLoader or an SD3/Flux checkpoint")
    if family is not None and clip.family != family:
        raise ValueError(f"{where}: this CLIP holds {clip.describe()}, not {family}'s")
    return clip


class CLIPTextEncodeSD3(Node):
    """SD3 prompts per encoder. ``empty_padding``: ``none`` leaves out T5 when its prompt is empty and the
    CLIPs when both of theirs are (one empty CLIP prompt beside a non-empty one is encoded as the empty
    prompt, as in ComfyUI); ``empty_prompt`` encodes empty prompts."""

    category = "advanced/conditioning"
    clip = Input(CLIP)
    clip_l = Input(STRING, multiline=True, dynamic_prompts=True)
    clip_g = Input(STRING, multiline=True, dynamic_prompts=True)
    t5xxl = Input(STRING, multiline=True, dynamic_prompts=True)
    empty_padding = Input(COMBO, choices=["none", "empty_prompt"])
    outputs = (Output(CONDITIONING),)

    def execute(self, clip, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str) -> tuple:
        flow = _flow_clip(clip, "CLIPTextEncodeSD3.clip", "sd3")
        drop = empty_padding == "none"
        text_l, text_g, text_t5 = [None if (drop and len(t) == 0) else t for t in (clip_l, clip_g, t5xxl)]
        if (text_l is None) != (text_g is None):  # ComfyUI pads the dropped one with the empty prompt
            text_l, text_g = text_l or "", text_g or ""
        return (flow.encode_parts(self.ctx, text_l, text_g, text_t5),)


class CLIPTextEncodeFlux(Node):
    """Flux prompts: ``clip_l`` for the pooled vector, ``t5xxl`` for the token states, and the distilled
    ``guidance`` value."""

    category = "advanced/conditioning/flux"
    clip = Input(CLIP)
    clip_l = Input(STRING, multiline=True, dynamic_prompts=True)
    t5xxl = Input(STRING, multiline=True, dynamic_prompts=True)
    guidance = Input(FLOAT, default=3.5, min=0.0, max=100.0, step=0.1)
    outputs = (Output(CONDITIONING),)

    def execute(self, clip, clip_l: str, t5xxl: str, guidance: float) -> tuple:
        flow = _flow_clip(clip, "CLIPTextEncodeFlux.clip", "flux")
        return (flow.encode_parts(self.ctx, clip_l, None, t5xxl, extras={"guidance": guidance}),)


class FluxGuidance(Node):
    """Sets the guidance value a guidance-distilled Flux model (dev) is given."""

    category = "advanced/conditioning/flux"
    conditioning = Input(CONDITIONING)
    guidance = Input(FLOAT, default=3.5, min=0.0, max=100.0, step=0.1)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning: list, guidance: float) -> tuple:
        return (set_values(conditioning, {"guidance": guidance}),)
