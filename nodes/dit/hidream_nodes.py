"""ComfyUI's HiDream nodes: ``QuadrupleCLIPLoader`` (CLIP-L, CLIP-G, T5-XXL and Llama 3.1 into one CLIP, files
in any order) and ``CLIPTextEncodeHiDream`` (a prompt per encoder). The recipe is :mod:`.hidream_text`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodegraph.context import Paths
from nodegraph.node import COMBO, STRING, Input, Node, Output
from nodegraph.types import CLIP, CONDITIONING

from nodegraph_nodes.diffusion.files import resolve_model
from nodegraph_nodes.dit.nodes_flow import _identities, _text_encoder_choices


class QuadrupleCLIPLoader(Node):
    """Loads HiDream's four text encoders (long CLIP-L, long CLIP-G, T5-XXL, Llama 3.1 8B Instruct) into one
    CLIP, recognised from their weights (any order). Stricter than ComfyUI: a CLIP without a text
    projection, two encoders of one kind or a file of another kind is an error naming the file."""

    category = "advanced/loaders"
    clip_name1 = Input(COMBO, choices=_text_encoder_choices)
    clip_name2 = Input(COMBO, choices=_text_encoder_choices)
    clip_name3 = Input(COMBO, choices=_text_encoder_choices)
    clip_name4 = Input(COMBO, choices=_text_encoder_choices)
    outputs = (Output(CLIP),)

    @classmethod
    def fingerprint(cls, paths: Paths, clip_name1: str | None = None, clip_name2: str | None = None,
                    clip_name3: str | None = None, clip_name4: str | None = None, **_: Any) -> Any:
        return _identities(paths, [clip_name1, clip_name2, clip_name3, clip_name4])

    def execute(self, clip_name1: str, clip_name2: str, clip_name3: str, clip_name4: str) -> tuple:
        from nodegraph_nodes.dit.hidream_text import load_clip

        names = [clip_name1, clip_name2, clip_name3, clip_name4]
        paths = [resolve_model(self.ctx.paths, "text_encoders", n) for n in names]
        return (load_clip(paths, self.ctx.service("models"), self.ctx.device, Path(self.ctx.paths.models_dir),
                          "QuadrupleCLIPLoader"),)


class CLIPTextEncodeHiDream(Node):
    """Encodes a prompt per HiDream encoder (CLIP-L and CLIP-G give the pooled output, T5 the states, Llama
    the per-layer states). Needs QuadrupleCLIPLoader's CLIP."""

    category = "advanced/conditioning"
    clip = Input(CLIP)
    clip_l = Input(STRING, multiline=True, dynamic_prompts=True)
    clip_g = Input(STRING, multiline=True, dynamic_prompts=True)
    t5xxl = Input(STRING, multiline=True, dynamic_prompts=True)
    llama = Input(STRING, multiline=True, dynamic_prompts=True)
    outputs = (Output(CONDITIONING),)

    def execute(self, clip, clip_l: str, clip_g: str, t5xxl: str, llama: str) -> tuple:
        from nodegraph_nodes.dit.hidream_text import HiDreamClip

        if not isinstance(clip, HiDreamClip):
            raise ValueError(f"CLIPTextEncodeHiDream.clip: needs HiDream's CLIP (QuadrupleCLIPLoader); got "
                             f"{getattr(clip, 'describe', lambda: type(clip).__name__)()}")
        return (clip.encode_parts(self.ctx, clip_l, clip_g, t5xxl, llama),)
