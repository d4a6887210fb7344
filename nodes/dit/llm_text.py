"""The CLIP value of the families whose text encoder is a language model: Qwen-Image (Qwen2.5-VL 7B)
and Z-Image (Qwen3 4B), with ComfyUI's prompt recipes.

* **Qwen-Image** (CLIPLoader type ``qwen_image``): the prompt goes into the chat template
  ``<|im_start|>system\\nDescribe the image by detailing …<|im_end|>\\n<|im_start|>user\\n{}<|im_end|>\\n
  <|im_start|>assistant\\n`` (a prompt that already starts with ``<|im_start|>`` is used as is), the
  model's last hidden states are taken and the system part is dropped: everything before the second
  ``<|im_start|>`` and, when it is followed by ``user`` and a newline, those two tokens too (34 tokens
  with the released tokenizer, diffusers' ``prompt_template_encode_start_idx``).
* **Z-Image** (CLIPLoader type ``lumina2``, or any other non-Flux type, with a Qwen3 file): template
  ``<|im_start|>user\\n{}<|im_end|>\\n<|im_start|>assistant\\n``, the second-to-last hidden states, all
  tokens kept (diffusers' ``apply_chat_template(…, enable_thinking=True)`` gives the same text).

Prompt weights ``(word:1.2)`` are not parsed for these encoders (ComfyUI disables them: the text goes to
the model as written). No padding: one sequence, the attention mask is all ones and not stored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from nodegraph.models import ManagerOwned

QWEN_IMAGE_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
                       "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
                       "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
QWEN_IMAGE_EDIT_TEMPLATE = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, "
                            "texture, objects, background), then explain how the user's text instruction should "
                            "alter or modify the image. Generate a new image that meets the user's requirements "
                            "while maintaining consistency with the original input where appropriate.<|im_end|>\n"
                            "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
                            "<|im_start|>assistant\n")
Z_IMAGE_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"

#: family → (template, hidden layer counted from the end (−1 last), whether the system part is dropped)
RECIPES = {"qwen_image": (QWEN_IMAGE_TEMPLATE, -1, True), "z_image": (Z_IMAGE_TEMPLATE, -2, False)}
ENCODER_NAMES = {"qwen_image": "Qwen2.5-VL", "z_image": "Qwen3"}


@dataclass(frozen=True, eq=False)
class LlmClip(ManagerOwned):
    """CLIP for Qwen-Image / Z-Image: one language model (``handle``, a transformers model) and its
    tokenizer."""

    family: str
    handle: Any
    tokenizer: Any
    source: str = ""
    layer_override: int | None = None

    @property
    def encoders(self) -> tuple:
        return ()

    patches: tuple = ()

    def with_layer(self, layer: int) -> "LlmClip":
        return dataclasses.replace(self, layer_override=layer)

    def describe(self) -> str:
        return f"{self.family} text encoder ({ENCODER_NAMES[self.family]})"

    def encode_text(self, ctx, text: str) -> list:
        template, layer, drop = RECIPES[self.family]
        if self.layer_override is not None:
            layer = self.layer_override
        full = text if text.startswith("<|im_start|>") else template.format(text)
        ids = self.tokenizer(full, add_special_tokens=False)["input_ids"]
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as module, torch.inference_mode():
            input_ids = torch.tensor([ids], device=ctx.device)
            out = module(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_hidden_states=True)
            hidden = out.hidden_states[layer].float().cpu()
        if drop:
            hidden = hidden[:, template_end(self.tokenizer, ids):]
        return [[hidden, {}]]

    def encode_with_images(self, ctx, full_text: str, images: list[torch.Tensor]) -> list:
        """Qwen-Image-Edit: ``full_text`` (templated, one ``<|image_pad|>`` per image) with ``images``
        (``[H, W, C]`` in 0..1) through the Qwen2.5-VL model's vision tower; system part dropped."""
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as module, torch.inference_mode():
            vision = getattr(module.config, "vision_config", None)
            if vision is None:
                raise ValueError(f"{self.describe()} has no vision tower; image inputs need Qwen2.5-VL")
            inputs = vision_inputs(self.tokenizer, vision, full_text, [to_pil(i) for i in images])
            dtype = next(module.parameters()).dtype
            input_ids = inputs["input_ids"].to(ctx.device)
            out = module(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                         pixel_values=inputs["pixel_values"].to(ctx.device, dtype),
                         image_grid_thw=inputs["image_grid_thw"].to(ctx.device), output_hidden_states=True)
            hidden = out.hidden_states[-1].float().cpu()
        ids = inputs["input_ids"][0].tolist()
        return [[hidden[:, template_end(self.tokenizer, ids):], {}]]


IMAGE_PAD = "<|image_pad|>"


QWEN2VL_SIZE = {"shortest_edge": 3136, "longest_edge": 12845056}  # the released processor's pixel range


def vision_inputs(tokenizer, vision_config, text: str, images: list, **settings) -> dict:
    """Token ids and pixel inputs for ``text`` (one ``<|image_pad|>`` per image) and PIL ``images``, as
    transformers' Qwen2-VL processor makes them: the image processor's patches (the released settings:
    3136 … 12845056 pixels, sides in multiples of patch × merge; ``settings`` override them, e.g. ``size``,
    ``image_mean``) and each ``<|image_pad|>`` repeated once per merged patch."""
    from transformers import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(patch_size=vision_config.patch_size,
                                         temporal_patch_size=vision_config.temporal_patch_size,
                                         merge_size=vision_config.spatial_merge_size,
                                         **{"size": QWEN2VL_SIZE, **settings})
    feats = processor(images=images, return_tensors="pt")
    grid = feats["image_grid_thw"]
    merge = int(vision_config.spatial_merge_size) ** 2
    ids = image_pad_ids(tokenizer, text, [int(g.prod()) // merge for g in grid])
    return {"input_ids": ids, "pixel_values": feats["pixel_values"], "image_grid_thw": grid}


def image_pad_ids(tokenizer, text: str, counts: list[int]) -> torch.Tensor:
    """Token ids ``[1, L]`` of ``text`` with its i-th ``<|image_pad|>`` repeated ``counts[i]`` times (the image's
    merged patches); an error when the prompt's image places and the images differ in number."""
    pieces = text.split(IMAGE_PAD)
    if len(pieces) != len(counts) + 1:
        raise ValueError(f"the prompt holds {len(pieces) - 1} image places for {len(counts)} images")
    expanded = pieces[0] + "".join(IMAGE_PAD * n + piece for n, piece in zip(counts, pieces[1:]))
    return torch.tensor([tokenizer(expanded, add_special_tokens=False)["input_ids"]])


def to_pil(image: torch.Tensor):
    """An IMAGE ``[H, W, C]`` in 0..1 as an 8-bit RGB PIL image."""
    from PIL import Image

    return Image.fromarray((image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy(), "RGB")


def template_end(tokenizer, ids: list[int]) -> int:
    """Where the user's part starts: the second ``<|im_start|>``, past ``user`` + newline if they follow
    (ComfyUI's rule, from the token identities rather than the released tokenizer's ids)."""
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    seen = [i for i, t in enumerate(ids) if t == start][:2]
    if not seen:
        return 0
    end = seen[-1]
    user = tokenizer("user", add_special_tokens=False)["input_ids"]
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(user) == 1 and len(newline) == 1 and len(ids) > end + 3 and ids[end + 1] == user[0] \
            and ids[end + 2] == newline[0]:
        end += 3
    return end
