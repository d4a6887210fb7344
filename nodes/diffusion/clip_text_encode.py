"""CLIPTextEncode: prompt → CONDITIONING, with emphasis, long prompts, embeddings and SDXL pairs.

See :mod:`nodegraph_nodes.diffusion.text_encode` for the algorithm (ComfyUI's). CONDITIONING is a list of
``[tensor [1, tokens, dim], extras]``; SDXL adds ``extras["pooled_output"]``.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from nodegraph.node import STRING, Input, Node, Output
from nodegraph.types import CLIP, CONDITIONING

from nodegraph_nodes.diffusion.bert_encode import encode_bert
from nodegraph_nodes.diffusion.lora import patched
from nodegraph_nodes.diffusion.text_encode import encode_with_encoder


def encode_prompt(ctx, clip, text: str) -> list:
    own = getattr(clip, "encode_text", None)
    if own is not None:  # a family with its own recipe (SD3 / Flux: nodegraph_nodes.dit.text)
        return own(ctx, text)
    manager = ctx.service("models")
    hidden, pooled = [], None
    for index, enc in enumerate(clip.encoders):
        layer = clip.layer_override if clip.layer_override is not None else enc.layer
        with ExitStack() as stack:
            module = stack.enter_context(manager.use(enc.handle, ctx.device))
            stack.enter_context(patched(module, [p for i, p in clip.patches if i == index]))
            if enc.kind == "bert":
                z, p = encode_bert(enc, module, text, ctx.device)
            else:
                z, p = encode_with_encoder(enc, module, text, layer, ctx.device, clip.embeddings_dir,
                                           manager.allow_pickle)
        hidden.append(z.cpu())
        if enc.projection or len(clip.encoders) == 1:
            pooled = p.cpu() if p is not None else None
    if len(hidden) > 1:
        tokens = min(h.shape[1] for h in hidden)
        cond = torch.cat([h[:, :tokens] for h in hidden], dim=-1)
    else:
        cond = hidden[0]
    extras = {}
    if pooled is not None:
        extras["pooled_output"] = pooled
    return [[cond, extras]]


class CLIPTextEncode(Node):
    """Encodes a text prompt with a CLIP model into an embedding that guides the diffusion model."""

    category = "conditioning"
    display_name = "CLIP Text Encode (Prompt)"
    text = Input(STRING, multiline=True, dynamic_prompts=True, tooltip="The text to be encoded.")
    clip = Input(CLIP, tooltip="The CLIP model used for encoding the text.")
    outputs = (Output(CONDITIONING),)

    def execute(self, text: str, clip) -> tuple:
        if clip is None:
            raise ValueError("clip input is invalid: None. If the clip comes from a checkpoint loader node, "
                             "the checkpoint has no text encoder")
        return (encode_prompt(self.ctx, clip, text),)
