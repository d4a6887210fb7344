"""HiDream-O1-Image's all-in-one file (CheckpointLoaderSimple): MODEL, a tokenizer-only CLIP and a
pass-through pixel VAE.

Files: Comfy-Org's ``checkpoints/hidream_o1_image{,_dev}_{bf16,fp8_scaled,mxfp8}.safetensors`` and the
official release's weights. The key names are the official ``Qwen3VLForConditionalGeneration``'s:
``model.language_model.…`` (Qwen3-VL text decoder), ``model.visual.…`` (vision tower with its
``deepstack_merger_list``), ``model.t_embedder1.mlp.{0,2}``, ``model.x_embedder.proj{1,2}``,
``model.final_layer2.linear`` and an unused ``lm_head``. That ComfyUI's repack keeps these names is
inferred, not read from ComfyUI: the MLX port ``mdream`` loads the Comfy-Org file with prefix ``model.``
and these module names, stable-diffusion.cpp skips ``lm_head.`` and ``model.visual.deepstack_merger_list.``
for it; a ``model.diffusion_model.`` prefix or none is accepted too. ComfyUI's quantized files (``fp8_scaled``,
the ``comfy_quant`` layouts such as the mxfp8 file) are dequantized as they are read
(:mod:`nodegraph_nodes.diffusion.quantized`).

Config from the shapes: text width, layers, heads (from ``q_norm``'s head width), KV heads, MLP width,
vocabulary; vision depth, width, MLP width, patch, merge, output width, position table; RoPE as
Qwen3-VL-8B's (text θ 5e6, interleaved M-RoPE; vision heads of width 72). The vision layers feeding the
DeepStack mergers are not in the weights: Qwen3-VL-8B's ``[8, 16, 24]`` for its 27 layers, else spread
evenly (:func:`deepstack_layers`).

CLIP: the prompt's Qwen2 BPE ids only (the checkpoint's transformer reads the text itself); the tokenizer
is ``models/text_encoders/qwen25_tokenizer/`` (the ``tokenizer`` folder of Qwen/Qwen-Image's diffusers
release, as for Qwen-Image; ComfyUI ships the same files) or ``<file>.tokenizer/`` next to the file.
VAE: the identity between the pixel-space LATENT ``[B, 3, H, W]`` in [-1, 1] and the IMAGE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.components import VaeModel, _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.convert import count_indices

PREFIXES = ("model.diffusion_model.model.", "model.diffusion_model.", "model.", "")
MARKERS = ("t_embedder1.mlp.0.weight", "x_embedder.proj1.weight", "final_layer2.linear.weight",
           "language_model.embed_tokens.weight")
VISION_HEAD_DIM = 72
QWEN3VL_8B_DEEPSTACK = {27: [8, 16, 24]}


def detect_prefix(keys) -> str | None:
    """The prefix before ``t_embedder1.…`` / ``language_model.…`` of a HiDream-O1 file, else ``None``."""
    keys = set(keys)
    for prefix in PREFIXES:
        if all(prefix + m in keys for m in MARKERS):
            return prefix
    return None


def is_checkpoint(keys) -> bool:
    return detect_prefix(keys) is not None


def deepstack_layers(depth: int, count: int) -> list[int]:
    """The vision layers whose outputs feed the ``count`` DeepStack mergers."""
    if depth in QWEN3VL_8B_DEEPSTACK and len(QWEN3VL_8B_DEEPSTACK[depth]) == count:
        return list(QWEN3VL_8B_DEEPSTACK[depth])
    return [depth * (i + 1) // (count + 1) for i in range(count)]


def config_from_weights(sd: dict[str, Any]):
    """The ``Qwen3VLConfig`` of a HiDream-O1 state dict (keys without the ``model.`` prefix)."""
    from transformers import Qwen3VLConfig

    from nodegraph_nodes.dit.hidream_o1_sequence import IMAGE_PAD, VISION_END, VISION_START
    from nodegraph_nodes.dit.qwen_image21_text import mrope_section

    emb = sd["language_model.embed_tokens.weight"]
    head = int(sd["language_model.layers.0.self_attn.q_norm.weight"].shape[0])
    vis_hidden = int(sd["visual.blocks.0.norm1.weight"].shape[0])
    patch = sd["visual.patch_embed.proj.weight"]
    depth = count_indices(sd, r"visual\.blocks\.(\d+)\.")
    merged_in = int(sd["visual.merger.linear_fc1.weight"].shape[1])
    merge = int(round((merged_in / vis_hidden) ** 0.5))
    deep = count_indices(sd, r"visual\.deepstack_merger_list\.(\d+)\.")
    text = dict(vocab_size=int(emb.shape[0]), hidden_size=int(emb.shape[1]),
                intermediate_size=int(sd["language_model.layers.0.mlp.gate_proj.weight"].shape[0]),
                num_hidden_layers=count_indices(sd, r"language_model\.layers\.(\d+)\."), head_dim=head,
                num_attention_heads=int(sd["language_model.layers.0.self_attn.q_proj.weight"].shape[0]) // head,
                num_key_value_heads=int(sd["language_model.layers.0.self_attn.k_proj.weight"].shape[0]) // head,
                rms_norm_eps=1e-6, max_position_embeddings=262144, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                 "mrope_section": mrope_section(head), "mrope_interleaved": True})
    vision = dict(depth=depth, hidden_size=vis_hidden,
                  num_heads=max(1, vis_hidden // VISION_HEAD_DIM) if vis_hidden % VISION_HEAD_DIM == 0 else 1,
                  intermediate_size=int(sd["visual.blocks.0.mlp.linear_fc1.weight"].shape[0]),
                  patch_size=int(patch.shape[-1]), temporal_patch_size=int(patch.shape[2]), spatial_merge_size=merge,
                  out_hidden_size=int(sd["visual.merger.linear_fc2.weight"].shape[0]),
                  num_position_embeddings=int(sd["visual.pos_embed.weight"].shape[0]),
                  deepstack_visual_indexes=deepstack_layers(depth, deep))
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_PAD,
                        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    cfg.text_config._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    return cfg


def build_network(sd: dict[str, Any], dtype: torch.dtype):
    """The :class:`~.hidream_o1.HiDreamO1Net` of a state dict with ``model.``-relative keys."""
    from nodegraph_nodes.diffusion.checkpoint import _instantiate
    from nodegraph_nodes.dit.hidream_o1 import HiDreamO1Net

    cfg = config_from_weights(sd)
    return _instantiate(HiDreamO1Net, cfg, {"model." + k: v for k, v in sd.items()}, dtype, "HiDream-O1",
                        is_transformers=True)


# -- CLIP and VAE -----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class HiDreamO1Clip(ManagerOwned):
    """CLIP of a HiDream-O1 checkpoint: the tokenizer only. The CONDITIONING carries the prompt's ids in
    ``extras["text_input_ids"]`` and, as ComfyUI's, the chat-templated ids as a ``[1, tokens, 1]`` float
    tensor in the tensor's place (never empty, even for an empty prompt)."""

    tokenizer: Any
    source: str = ""
    family: str = "hidream_o1"

    @property
    def encoders(self) -> tuple:
        return ()

    def describe(self) -> str:
        return "HiDream-O1 prompt tokenizer (the model reads the text itself)"

    def encode_text(self, ctx, text: str) -> list:
        from nodegraph_nodes.dit.hidream_o1_sequence import wrap_prompt

        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        surrogate = torch.tensor([wrap_prompt(ids)], dtype=torch.float32).unsqueeze(-1)  # never empty
        return [[surrogate, {"text_input_ids": torch.tensor([ids], dtype=torch.long)}]]


class PixelCodec(nn.Module):
    """The pixel-space "VAE": decode is the identity on [-1, 1] images (VAEDecode maps them to 0..1)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # VAEDecode reads the dtype from it

    def decode(self, z: torch.Tensor, return_dict: bool = False):
        return (z.float(),)

    def encode(self, x: torch.Tensor):
        class _Dist:
            def __init__(self, v):
                self.latent_dist = self
                self.v = v

            def mode(self):
                return self.v

        return _Dist(x.float())


def pixel_vae(manager, path: Path) -> VaeModel:
    handle = manager.load(_manager_key(path, "pixel_vae", torch.float32), lambda: PixelCodec().eval())
    return VaeModel(handle, scale_factor=1, latent_channels=3)


# -- the checkpoint ---------------------------------------------------------------------------------

def load_checkpoint(path: Path, manager, device: str, models_dir: Path):
    """CheckpointLoaderSimple for a HiDream-O1 file: MODEL, CLIP (tokenizer), VAE (pixels)."""
    from nodegraph_nodes.dit.file_loading import load_transformer_handle
    from nodegraph_nodes.dit.hidream_o1 import HiDreamO1Model
    from nodegraph_nodes.dit.llm_loading import find_llm_tokenizer, load_llm_tokenizer
    from nodegraph_nodes.dit.loading import file_keys, flow_dtype

    keys = file_keys(path, manager.allow_pickle)
    prefix = detect_prefix(keys)
    if prefix is None:
        raise ModelFileError(f"{path.name} is not a HiDream-O1 checkpoint")
    handle = load_transformer_handle(path, prefix, manager, device, "default", flow_dtype(device),
                                     build_network)
    model = HiDreamO1Model(handle, "hidream_o1", source=str(path))
    clip = HiDreamO1Clip(load_llm_tokenizer(find_llm_tokenizer(models_dir, path, "qwen25vl")), source=str(path))
    return model, clip, pixel_vae(manager, path)

