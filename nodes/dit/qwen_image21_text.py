"""Qwen-Image 2.1's text encoder: Qwen3-VL (``Qwen3VLForConditionalGeneration``; ComfyUI's
``qwen3vl_8b*.safetensors``, CLIPLoader type ``qwen_image``) with diffusers' ``QwenImage21Pipeline`` recipe.

Recipe: the prompt (an empty one becomes ``" "``) goes into
``<|im_start|>system\\nComprehend and analyze the provided prompt.<|im_end|>\\n<|im_start|>user\\n{}<|im_end|>\\n
<|im_start|>assistant\\n``; with reference images the user turn starts with
``<image1><|vision_start|><|image_pad|><|vision_end|>`` (`` <imageN>…`` for the others), each ``<|image_pad|>``
repeated once per merged vision patch. The states are the last decoder layer's output *before* the final RMS
norm (diffusers neutralizes the norm with a hook; so does this), the system turn's tokens dropped. The
conditioning carries ``image_pad_mask`` (which of its tokens are vision slots) for the transformer.

Key layouts: today's transformers names (``model.language_model.…``, ``model.visual.…``) or the older ones
(``model.layers.…``, ``visual.…``); a Qwen3-VL file is told from Qwen3 / Qwen2.5-VL by its vision tower's
``deepstack_merger_list`` / ``merger.linear_fc1``. Config from the shapes: the text head width from ``q_norm``,
M-RoPE sections (24, 20, 20) for head width 128 (interleaved, theta 5e6, the 8B release's), scaled for other
widths; the vision head width 72 (the release's), patch 16, merge 2, deepstack layers found from the merger
count (the release's 8, 16, 24 spacing). Tokenizer (never downloaded): ``<file>.tokenizer/`` or
``models/text_encoders/qwen3vl_tokenizer/`` (the ``processor`` / tokenizer files of Qwen/Qwen-Image-2.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.dit.convert import count_indices
from nodegraph_nodes.dit.llm_text import image_pad_ids

SYSTEM = "Comprehend and analyze the provided prompt."
SYSTEM_TURN = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
T2I = SYSTEM_TURN + "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
TOKENIZER_FOLDER = "qwen3vl_tokenizer"
TEXT_HEAD_128_MROPE = (24, 20, 20)
VISION_HEAD_DIM = 72


def prompt_text(prompt: str, n_images: int) -> str:
    prompt = prompt or " "
    if not n_images:
        return T2I.format(prompt)
    slots = " ".join(f"<image{i}>{SLOT}" for i in range(1, n_images + 1))
    return SYSTEM_TURN + f"<|im_start|>user\n{slots}{prompt}<|im_end|>\n<|im_start|>assistant\n"


def is_qwen3vl(keys) -> bool:
    keyset = set(keys)
    text = any(p + "layers.0.self_attn.q_norm.weight" in keyset for p in ("model.", "model.language_model."))
    vision = any(k.startswith(("visual.merger.linear_fc1", "model.visual.merger.linear_fc1")) for k in keyset)
    return text and vision


def _weights(sd: dict) -> dict:
    """Today's transformers names for either layout."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("model.language_model.", "model.visual.")) or k == "lm_head.weight":
            out[k] = v
        elif k.startswith("visual."):
            out["model." + k] = v
        elif k.startswith("model."):
            out["model.language_model." + k[len("model."):]] = v
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.language_model.embed_tokens.weight"]
    return out


_count = count_indices


def mrope_section(head_dim: int) -> list[int]:
    if head_dim == 128:
        return list(TEXT_HEAD_128_MROPE)
    half = head_dim // 2
    a = half * 3 // 8
    b = (half - a) // 2
    return [a, b, half - a - b]


def config_from_weights(sd: dict, tokenizer):
    from transformers import Qwen3VLConfig

    from nodegraph_nodes.dit.llm_loading import vision_token_ids

    p = "model.language_model."
    emb = sd[p + "embed_tokens.weight"]
    head = int(sd[p + "layers.0.self_attn.q_norm.weight"].shape[0])
    text = dict(vocab_size=int(emb.shape[0]), hidden_size=int(emb.shape[1]),
                intermediate_size=int(sd[p + "layers.0.mlp.gate_proj.weight"].shape[0]),
                num_hidden_layers=_count(sd, r"model\.language_model\.layers\.(\d+)\."), head_dim=head,
                num_attention_heads=int(sd[p + "layers.0.self_attn.q_proj.weight"].shape[0]) // head,
                num_key_value_heads=int(sd[p + "layers.0.self_attn.k_proj.weight"].shape[0]) // head,
                rms_norm_eps=1e-6, max_position_embeddings=262144,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                 "mrope_section": mrope_section(head), "mrope_interleaved": True})
    v = "model.visual."
    patch = sd[v + "patch_embed.proj.weight"]
    hidden = int(patch.shape[0])
    depth = _count(sd, r"model\.visual\.blocks\.(\d+)\.")
    stacks = _count(sd, r"model\.visual\.deepstack_merger_list\.(\d+)\.")
    vision = dict(depth=depth, hidden_size=hidden, num_heads=max(1, hidden // VISION_HEAD_DIM),
                  intermediate_size=int(sd[v + "blocks.0.mlp.linear_fc1.weight"].shape[0]),
                  in_channels=int(patch.shape[1]), patch_size=int(patch.shape[-1]),
                  temporal_patch_size=int(patch.shape[2]), spatial_merge_size=2,
                  out_hidden_size=int(sd[v + "merger.linear_fc2.weight"].shape[0]),
                  num_position_embeddings=int(sd[v + "pos_embed.weight"].shape[0]),
                  deepstack_visual_indexes=[depth * (i + 1) // (stacks + 1) for i in range(stacks)]
                  if depth != 27 else [8, 16, 24][:stacks])
    ids = vision_token_ids(tokenizer)
    return Qwen3VLConfig(text_config=text, vision_config=vision, **ids)


def build_encoder(sd: dict, tokenizer, dtype: torch.dtype):
    from transformers import Qwen3VLForConditionalGeneration

    from nodegraph_nodes.diffusion.checkpoint import _instantiate
    from nodegraph_nodes.dit.qwen_image import refuse_integer_weights

    refuse_integer_weights(sd, "Qwen3-VL text encoder")
    sd = _weights(sd)
    return _instantiate(Qwen3VLForConditionalGeneration, config_from_weights(sd, tokenizer), sd, dtype,
                        "Qwen3-VL text encoder", is_transformers=True)


def find_tokenizer(models_dir: Path, near: Path) -> Path:
    from nodegraph_nodes.dit.llm_loading import find_tokenizer_folder

    return find_tokenizer_folder(models_dir, near, TOKENIZER_FOLDER,
                                 "the tokenizer files of Qwen/Qwen-Image-2.1's diffusers release (processor/)")


def load_text_encoder(path: Path, manager, device: str, models_dir: Path) -> "Qwen21Clip":
    """CLIPLoader (type ``qwen_image``) for a Qwen3-VL file."""
    from nodegraph_nodes.dit.file_loading import load_encoder_handle
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import flow_dtype

    tokenizer = load_llm_tokenizer(find_tokenizer(models_dir, path))
    dtype = flow_dtype(device)

    handle = load_encoder_handle(path, "qwen3vl", manager, dtype,
                                 lambda sd, store: build_encoder(sd, tokenizer, store))
    return Qwen21Clip(handle, tokenizer, source=str(path))


@dataclass(frozen=True, eq=False)
class Qwen21Clip(ManagerOwned):
    """CLIP for Qwen-Image 2.1: a Qwen3-VL model (``handle``) and its tokenizer."""

    handle: Any
    tokenizer: Any
    source: str = ""
    family: str = "qwen_image21"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def describe(self) -> str:
        return "qwen_image21 text encoder (Qwen3-VL)"

    def encode_text(self, ctx, text: str) -> list:
        return self.encode(ctx, text, [])

    def encode(self, ctx, prompt: str, images: list[torch.Tensor]) -> list:
        """CONDITIONING of ``prompt`` with reference ``images`` (``[H, W, 3]`` in 0..1, shown to the vision tower
        at their size, which must be a multiple of 32 px)."""
        full = prompt_text(prompt, len(images))
        drop = len(self.tokenizer(SYSTEM_TURN, add_special_tokens=False)["input_ids"])
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as module, torch.inference_mode():
            kwargs: dict = {}
            if images:
                inputs = vision_inputs(self.tokenizer, module.config.vision_config, full, images)
                ids = inputs["input_ids"]
                pad = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)  # M-RoPE's token types: 1 at image slots
                kwargs = dict(mm_token_type_ids=(ids == pad).long().to(ctx.device),
                              pixel_values=inputs["pixel_values"].to(ctx.device, next(module.parameters()).dtype),
                              image_grid_thw=inputs["image_grid_thw"].to(ctx.device))
            else:
                ids = torch.tensor([self.tokenizer(full, add_special_tokens=False)["input_ids"]])
            ids = ids.to(ctx.device)
            text_model = getattr(module.model, "language_model", module.model)
            hook = text_model.norm.register_forward_hook(lambda mod, args, out: args[0])
            try:
                out = module(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True, **kwargs)
            finally:
                hook.remove()
            hidden = out.hidden_states[-1].float().cpu()[:, drop:]
        pad_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        pads = (ids[:, drop:] == pad_id).cpu()
        return [[hidden, {"image_pad_mask": pads}]]


def vision_inputs(tokenizer, vision_config, text: str, images: list[torch.Tensor]) -> dict:
    """Token ids and pixel patches for ``text`` with ``images`` as Qwen3-VL's processor makes them (patches of
    ``patch_size``, temporal pairs, 2×2 merges, mean/std 0.5), the images kept at their size."""
    patch, temporal, merge = (int(vision_config.patch_size), int(vision_config.temporal_patch_size),
                              int(vision_config.spatial_merge_size))
    unit = patch * merge
    pixels, grids = [], []
    for img in images:
        h, w = img.shape[0], img.shape[1]
        if h % unit or w % unit:
            raise ValueError(f"a Qwen-Image 2.1 reference image must be a multiple of {unit} px, got {w}x{h}")
        x = (img[..., :3].float().permute(2, 0, 1) - 0.5) / 0.5  # [3, H, W]
        x = x.unsqueeze(0).repeat(temporal, 1, 1, 1)  # one frame, repeated to the temporal patch
        gh, gw = h // patch, w // patch
        x = x.reshape(1, temporal, 3, gh // merge, merge, patch, gw // merge, merge, patch)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        pixels.append(x.reshape(gh * gw, 3 * temporal * patch * patch))
        grids.append([1, gh, gw])
    ids = image_pad_ids(tokenizer, text, [g[1] * g[2] // merge ** 2 for g in grids])
    return {"input_ids": ids, "pixel_values": torch.cat(pixels), "image_grid_thw": torch.tensor(grids)}
