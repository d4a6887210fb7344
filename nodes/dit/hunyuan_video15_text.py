"""HunyuanVideo 1.5's CLIP (DualCLIPLoader type ``hunyuan_video_15``): Qwen2.5-VL 7B (ComfyUI's
``qwen_2.5_vl_7b_fp8_scaled.safetensors``, the file Qwen-Image uses) and the Glyph-SDXL ByT5 encoder
(``byt5_small_glyphxl_fp16.safetensors``, a T5 encoder in transformers' names), in either order.

Text encoding (ComfyUI's recipe; diffusers' ``HunyuanVideo15Pipeline`` does the same with its own spelling of
the system message): an empty prompt becomes one space; the prompt goes into the chat template
``<|im_start|>system\\nYou are a helpful assistant. Describe the video by detailing …<|im_end|>\\n<|im_start|>
user\\n{}<|im_end|>\\n<|im_start|>assistant\\n``, the hidden states of the third-to-last layer are taken and the
system part dropped (everything before the user's text: :func:`.llm_text.template_end`). Quoted text
(``"…"``, ``‘…’``, ``“…”``) is written as ``Text "…". `` per quote and encoded by ByT5 (bytes + end token, last
hidden states) into the conditioning's ``conditioning_byt5small``; a prompt without quotes has none. No
padding: one sequence, no attention mask. Prompt weights are not parsed.

Tokenizers (the files hold none): Qwen2.5-VL's is looked for as Qwen-Image's (``<file>.tokenizer/``, else
``models/text_encoders/qwen25_tokenizer/``); ByT5's is byte-level and built in (transformers'
``ByT5Tokenizer``; Glyph-SDXL's added colour and font tokens are not known, so ``<color-N>`` / ``<en-font-N>``
tags are read as plain bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.files import ModelFileError

TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant. Describe the video by detailing the following "
            "aspects:\n1. The main content and theme of the video.\n2. The color, shape, size, texture, quantity, "
            "text, and spatial relationships of the objects.\n3. Actions, events, behaviors temporal relationships, "
            "physical movement changes of the objects.\n4. background environment, light, style and atmosphere.\n"
            "5. camera angles, movements, and transitions used in the video.<|im_end|>\n<|im_start|>user\n{}"
            "<|im_end|>\n<|im_start|>assistant\n")
LAYER = -3  # the third-to-last hidden states (diffusers: ``num_hidden_layers_to_skip=2``)
QUOTES = (r"\"(.*?)\"", r"‘(.*?)’", r"“(.*?)”")


def system_message() -> str:
    """The template's system message (for diffusers' pipeline: its ``system_message``)."""
    return TEMPLATE.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]


def glyph_text(prompt: str) -> str | None:
    """The ByT5 text of ``prompt``'s quotes (ComfyUI's order: straight double, then curly single, then curly
    double quotes), ``None`` without any."""
    found = [m for pattern in QUOTES for m in re.findall(pattern, prompt)]
    return "".join(f'Text "{t}". ' for t in found) if found else None


@dataclass(frozen=True, eq=False)
class HunyuanVideo15Clip(ManagerOwned):
    """CLIP for HunyuanVideo 1.5: Qwen2.5-VL (``qwen``) with its tokenizer, ByT5 (``byt5``) with its."""

    qwen: Any
    tokenizer: Any
    byt5: Any
    byt5_tokenizer: Any
    source: str = ""
    family: str = "hunyuan_video15"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def with_layer(self, layer: int) -> "HunyuanVideo15Clip":
        raise ValueError("CLIPSetLastLayer: HunyuanVideo 1.5's encoders use fixed layers")

    def describe(self) -> str:
        return "hunyuan_video_15 text encoders (Qwen2.5-VL + ByT5)"

    def encode_text(self, ctx, text: str) -> list:
        from nodegraph_nodes.dit.llm_text import template_end

        ids = self.tokenizer(TEMPLATE.format(text or " "), add_special_tokens=False)["input_ids"]
        manager = ctx.service("models")
        with manager.use(self.qwen, ctx.device) as module, torch.inference_mode():
            input_ids = torch.tensor([ids], device=ctx.device)
            out = module(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_hidden_states=True)
            hidden = out.hidden_states[LAYER][:, template_end(self.tokenizer, ids):].float().cpu()
        extras = {}
        glyphs = glyph_text(text)
        if glyphs is not None:
            tok = self.byt5_tokenizer(glyphs, add_special_tokens=True, return_tensors="pt")
            with manager.use(self.byt5, ctx.device) as module, torch.inference_mode():
                ids2 = tok["input_ids"].to(ctx.device)
                states = module(input_ids=ids2, attention_mask=torch.ones_like(ids2))[0]
            extras["conditioning_byt5small"] = states.float().cpu()
        return [[hidden, extras]]


def load_clip(paths: list[Path], manager, device: str, models_dir: Path,
              where: str = "DualCLIPLoader") -> HunyuanVideo15Clip:
    """DualCLIPLoader type ``hunyuan_video_15``: one Qwen2.5-VL file and one ByT5 (T5) file, in either order."""
    from transformers import ByT5Tokenizer

    from nodegraph_nodes.dit.file_loading import load_encoder_handle
    from nodegraph_nodes.dit.llm_loading import (build_qwen25vl, encoder_kind, find_llm_tokenizer,
                                                 load_llm_tokenizer)
    from nodegraph_nodes.dit.loading import build_t5, file_keys, flow_dtype

    qwen = byt5 = None
    for path in paths:
        keys = file_keys(path, manager.allow_pickle)
        if encoder_kind(keys) == "qwen25vl":
            qwen = path
        elif "encoder.final_layer_norm.weight" in set(keys):
            byt5 = path
        else:
            raise ModelFileError(f"{where}.type hunyuan_video_15 takes Qwen2.5-VL (qwen_2.5_vl_7b*.safetensors) and "
                                 f"ByT5 (byt5_small_glyphxl*.safetensors); {path.name} is neither")
    if qwen is None or byt5 is None:
        raise ModelFileError(f"{where}.type hunyuan_video_15 needs one Qwen2.5-VL file and one ByT5 file; got "
                             f"{', '.join(p.name for p in paths)}")
    tokenizer = load_llm_tokenizer(find_llm_tokenizer(models_dir, qwen, "qwen25vl"))
    dtype = flow_dtype(device)
    qwen_handle = load_encoder_handle(qwen, "qwen25vl", manager, dtype,
                                      lambda sd, store: build_qwen25vl(sd, tokenizer, store))
    byt5_handle = load_encoder_handle(byt5, "byt5", manager, dtype, build_t5)
    return HunyuanVideo15Clip(qwen_handle, tokenizer, byt5_handle, ByT5Tokenizer(),
                              source=f"{qwen} + {byt5}")
