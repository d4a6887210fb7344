"""SigLIP vision towers as CLIP_VISION (ComfyUI's ``sigclip_vision_patch14_384.safetensors``, Flux Redux's image
encoder): single files in transformers' ``SiglipVisionModel`` key layout (``vision_model.embeddings.patch_embedding``
with a bias, no class embedding, no pre-layernorm, ``vision_model.post_layernorm``; ``vision_model.head.*`` may be
present and is not used), detected from the keys; the model is transformers' ``SiglipVisionModel``.

CLIPVisionEncode on it gives what ComfyUI gives for SigLIP: ``last_hidden_state`` = the post-layernormed output
of every patch token, ``image_embeds`` = the same tensor (ComfyUI has no projection or pooling head for SigLIP),
``penultimate_hidden_states`` = the second-to-last layer's output, ``all_hidden_states`` = every layer's output
``[B, layers, tokens, width]``. Preprocessing: mean and std 0.5, the size from the position embeddings
(384 for the released file). Config from the shapes: width, layers, MLP width, patch size; heads 16 at width 1152
(the released so400m), otherwise width / 64; GELU (tanh), layer norm eps 1e-6 (transformers'; ComfyUI's
layer norms use 1e-5, a difference far below bf16 rounding).
"""

from __future__ import annotations

import math
from typing import Any

import torch

PREFIX = "vision_model."
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def is_siglip(keys) -> bool:
    keys = set(keys)
    return (PREFIX + "embeddings.patch_embedding.bias" in keys and PREFIX + "embeddings.class_embedding" not in keys
            and PREFIX + "pre_layrnorm.weight" not in keys and PREFIX + "post_layernorm.weight" in keys)


def siglip_config(sd: dict[str, torch.Tensor]) -> dict:
    hidden, channels, patch, _ = sd[PREFIX + "embeddings.patch_embedding.weight"].shape
    positions = sd[PREFIX + "embeddings.position_embedding.weight"].shape[0]
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"{positions} position embeddings are not a square grid of patches")
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(PREFIX + "encoder.layers."))
    intermediate = sd[PREFIX + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    heads = 16 if hidden == 1152 else max(1, hidden // 64)
    return dict(hidden_size=int(hidden), intermediate_size=int(intermediate), num_hidden_layers=layers,
                num_attention_heads=heads, num_channels=int(channels), image_size=int(patch * side),
                patch_size=int(patch), hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)


def settings(cfg: dict) -> dict:
    return {"size": cfg["image_size"], "mean": SIGLIP_MEAN, "std": SIGLIP_STD}


def build_siglip(state: dict[str, torch.Tensor], cfg: dict, dtype: torch.dtype, name: str, lock) -> Any:
    """A ``SiglipVisionModel`` with the file's weights (the pooling head only when the file has one)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from nodegraph_nodes.langvision.common import ModelFolderError

    with_head = any(k.startswith(PREFIX + "head.") for k in state)
    with lock:
        model = SiglipVisionModel(SiglipVisionConfig(**cfg, vision_use_head=with_head))
    own = next(iter(model.state_dict()))
    if not own.startswith(PREFIX):  # newer transformers name the tower's weights without the file's prefix
        state = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing:
        raise ModelFolderError(f"input 'clip_name': {name!r} lacks SigLIP weights {missing[:5]}")
    return model.to(dtype).eval()


def encode(model, pixel_values: torch.Tensor):
    """CLIP_VISION_OUTPUT of a ``SiglipVisionModel`` for normalised pixels (see the module docstring)."""
    from nodegraph_nodes.langvision.vision import ClipVisionOutput

    out = model(pixel_values=pixel_values, output_hidden_states=True)
    last = out.last_hidden_state.float().cpu()
    layers = torch.stack([h.float().cpu() for h in out.hidden_states[1:]], dim=1)
    return ClipVisionOutput(image_embeds=last, last_hidden_state=last, penultimate_hidden_states=layers[:, -2],
                            all_hidden_states=layers)


def is_siglip_model(model) -> bool:
    return type(model).__name__ == "SiglipVisionModel"
