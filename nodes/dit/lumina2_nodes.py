"""ComfyUI's ``CLIPTextEncodeLumina2``: a system prompt (``superior`` / ``alignment``) and the user's
prompt written as ``"{system prompt} <Prompt Start> {user prompt}"`` and encoded with the CLIP (Lumina 2's
Gemma 2, :mod:`.lumina2`). Stricter than ComfyUI: a missing CLIP is an error naming the input."""

from __future__ import annotations

from nodegraph.node import COMBO, STRING, Input, Node, Output
from nodegraph.types import CLIP, CONDITIONING

from nodegraph_nodes.dit.lumina2 import SYSTEM_PROMPTS


class CLIPTextEncodeLumina2(Node):
    """Encodes a system prompt and a user prompt for Lumina 2 (the system prompt's text is Lumina's)."""

    category = "conditioning"
    display_name = "CLIP Text Encode for Lumina2"
    system_prompt = Input(COMBO, choices=list(SYSTEM_PROMPTS))
    user_prompt = Input(STRING, multiline=True, dynamic_prompts=True)
    clip = Input(CLIP)
    outputs = (Output(CONDITIONING),)

    def execute(self, system_prompt: str, user_prompt: str, clip) -> tuple:
        if clip is None:
            raise ValueError("CLIPTextEncodeLumina2.clip: no CLIP (the checkpoint holds no text encoder)")
        return (clip.encode_text(self.ctx, f"{SYSTEM_PROMPTS[system_prompt]} <Prompt Start> {user_prompt}"),)
