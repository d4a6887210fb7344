"""ComfyUI's ``T5TokenizerOptions`` (used by its Chroma templates): how a CLIP's T5 tokenizer pads.

``min_padding``: pad tokens always appended after ``</s>`` (Chroma's "official" 1: the model sees one pad
token, as diffusers' ChromaPipeline lets one through its mask); ``min_length``: the sequence is padded
to at least this many tokens, replacing the family's own minimum (SD3 77, Flux 256, Chroma 1) — so
``0, 0`` on a Flux CLIP turns its 256-token padding off, as in ComfyUI. Stricter than ComfyUI, which
ignores the options on CLIPs without a T5: a CLIP without a T5 encoder is an error naming the input.
"""

from __future__ import annotations

import dataclasses

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import CLIP

from nodegraph_nodes.dit.text import FlowClip


class T5TokenizerOptions(Node):
    """Sets the T5 tokenizer's minimum padding and minimum length of a CLIP (SD3 / Flux / Chroma)."""

    category = "_for_testing/conditioning"
    experimental = True
    clip = Input(CLIP)
    min_padding = Input(INT, default=0, min=0, max=10000, step=1)
    min_length = Input(INT, default=0, min=0, max=10000, step=1)
    outputs = (Output(CLIP),)

    def execute(self, clip, min_padding: int, min_length: int) -> tuple:
        if not isinstance(clip, FlowClip) or clip.t5 is None:
            what = clip.describe() if hasattr(clip, "describe") else type(clip).__name__
            raise ValueError(f"T5TokenizerOptions.clip: this CLIP ({what}) has no T5 encoder whose tokenizer "
                             "these options set")
        return (dataclasses.replace(clip, t5_min_padding=int(min_padding), t5_min_length=int(min_length)),)
