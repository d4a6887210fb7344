"""Qwen 3.5 language models from ComfyUI's ``text_encoders/qwen3.5_*.safetensors`` files, for TextGenerate.

These are the prompt upsamplers / enhancers of FLUX.3 Klein (``qwen3.5_9b_flux3_prompt_upsampler_*``,
CLIPLoader type ``flux3``) and Qwen-Image 2.1 (``qwen3.5_9b_qwen_image_2.1_pe_{t2i,i2i}.*``, types
``stable_diffusion`` / ``qwen_image``). ComfyUI tells a Qwen 3.5 file by its keys whatever the type (its
``detect_te_model``: ``model.language_model.layers.0.linear_attn.A_log``), and so does CLIPLoader here.

Key layout: transformers' ``Qwen3_5ForConditionalGeneration`` names as the release has them
(``model.language_model.…``, ``model.visual.…``, ``lm_head.weight``; also ``model.layers.…`` / ``visual.…``).
A file with its vision tower loads as that class (TextGenerate can show it an image); one without as the
text-only ``Qwen3_5ForCausalLM`` (``model.language_model.`` → ``model.``). A multi-token-prediction head
(``mtp.``) is not loaded. Quantised files (``*_int8_convrot``, ``*_w4a8``) are read dequantised
(:mod:`nodegraph_nodes.diffusion.quantized`).

Vision tower config from the shapes as well: depth, width, MLP width, patch (16) and temporal patch (2) from
``patch_embed.proj``, 2×2 merges (the releases'), output width from ``merger.linear_fc2``, position grid from
``pos_embed``; heads: width / 72 for the 1152-wide tower (9B, 27B), width / 64 otherwise (0.8B: 768 → 12,
2B / 4B: 1024 → 16). Images: transformers' Qwen2-VL image processor with Qwen3-VL's released settings (patch 16,
merge 2, mean / std 0.5, 65536 … 16777216 pixels); ComfyUI resizes with its own code, so pixels may differ.

Config from the shapes: vocabulary and width from ``embed_tokens``, the hybrid layer list from which layers
hold ``linear_attn`` (Gated DeltaNet) or ``self_attn`` (gated attention), head width from ``q_norm``, heads from
``q_proj`` (query and gate: twice the heads) and ``k_proj``, the DeltaNet's value heads from ``A_log``, value
head width from its gated ``norm``, key heads from ``in_proj_qkv`` taking the key head width equal to the value
head width (128 and 128 in every release), conv kernel from ``conv1d``. Not in the weights, the releases'
values: RoPE theta 1e7 on a quarter of each head (``partial_rotary_factor`` 0.25), interleaved M-RoPE sections
(11, 11, 10), RMS eps 1e-6. LM head: the file's ``lm_head.weight`` (9B, 27B); a file without one ties it to the
embeddings, as the releases up to 4B (width ≤ 2560) do; a wider file without a head is refused.

Tokenizer (never downloaded): ``<file stem>.tokenizer/``, or ``qwen35_tokenizer/`` beside the file or in
``models/text_encoders/`` (the tokenizer files of a Qwen/Qwen3.5 release: ``tokenizer.json`` +
``tokenizer_config.json``, or ``vocab.json`` + ``merges.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.files import ModelFileError

TOKENIZER_FOLDER = "qwen35_tokenizer"
DETECT_KEY = "layers.0.linear_attn.A_log"
#: Released models whose LM head is the token embeddings (0.8B, 2B, 4B).
TIED_UP_TO = 2560
ROPE = {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10], "mrope_interleaved": True}


def is_qwen35(keys) -> bool:
    """Whether a file's tensor names are a Qwen 3.5 language model's (ComfyUI's detection key, in any of the
    layouts read here)."""
    return any(k in ("model.language_model." + DETECT_KEY, "model." + DETECT_KEY) for k in keys)


def has_vision(sd_or_keys) -> bool:
    return any(k.startswith(("model.visual.", "visual.")) for k in sd_or_keys)


def full_weights(sd: dict) -> dict:
    """``sd`` in ``Qwen3_5ForConditionalGeneration``'s names (the release's); the MTP head left out."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("mtp.", "model.mtp.")):
            continue
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model.lm_head."):
            k = k[len("model."):]
        elif k.startswith("model.") and not k.startswith(("model.language_model.", "model.visual.")):
            k = "model.language_model." + k[len("model."):]
        out[k] = v
    return out


def vision_config_of(sd: dict) -> dict:
    """The vision tower's config from ``sd`` (``Qwen3_5ForConditionalGeneration`` names; module docstring)."""
    v = "model.visual."
    patch = sd[v + "patch_embed.proj.weight"]
    hidden = int(patch.shape[0])
    depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(v + "blocks."))
    heads = hidden // 72 if hidden == 1152 else max(1, hidden // 64)
    return dict(depth=depth, hidden_size=hidden, num_heads=heads,
                intermediate_size=int(sd[v + "blocks.0.mlp.linear_fc1.weight"].shape[0]),
                in_channels=int(patch.shape[1]), patch_size=int(patch.shape[-1]),
                temporal_patch_size=int(patch.shape[2]), spatial_merge_size=2,
                out_hidden_size=int(sd[v + "merger.linear_fc2.weight"].shape[0]),
                num_position_embeddings=int(sd[v + "pos_embed.weight"].shape[0]))


def text_weights(sd: dict) -> dict:
    """``sd`` in ``Qwen3_5ForCausalLM``'s names: the language model under ``model.``, ``lm_head.weight``;
    the vision tower and MTP head left out."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("model.visual.", "visual.", "mtp.", "model.mtp.")):
            continue
        if k.startswith("model.language_model."):
            out["model." + k[len("model.language_model."):]] = v
        elif k.startswith("model.lm_head."):  # ComfyUI's internal name
            out[k[len("model."):]] = v
        else:
            out[k] = v
    return out


@dataclass(frozen=True)
class Qwen35Shape:
    """What the weights say about a Qwen 3.5 language model."""

    vocab: int
    hidden: int
    intermediate: int
    layer_types: tuple[str, ...]
    heads: int
    kv_heads: int
    head_dim: int
    linear_key_heads: int
    linear_value_heads: int
    linear_head_dim: int
    conv_kernel: int
    has_head: bool


def shape_of(sd: dict) -> Qwen35Shape:
    """The model's sizes from ``sd`` (``Qwen3_5ForCausalLM`` names); an error naming the missing key."""
    def get(key: str) -> torch.Tensor:
        if key not in sd:
            raise ModelFileError(f"the Qwen 3.5 file has no {key}; it is incomplete or of another model")
        return sd[key]

    vocab, hidden = get("model.embed_tokens.weight").shape
    count = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("model.layers."))
    types = tuple("linear_attention" if f"model.layers.{i}.linear_attn.A_log" in sd else "full_attention"
                  for i in range(count))
    if "full_attention" not in types or "linear_attention" not in types:
        raise ModelFileError("the Qwen 3.5 file does not hold both layer kinds (linear_attn and self_attn)")
    full = types.index("full_attention")
    linear = types.index("linear_attention")
    head_dim = int(get(f"model.layers.{full}.self_attn.q_norm.weight").shape[0])
    heads = int(get(f"model.layers.{full}.self_attn.q_proj.weight").shape[0]) // (2 * head_dim)
    kv_heads = int(get(f"model.layers.{full}.self_attn.k_proj.weight").shape[0]) // head_dim
    value_heads = int(get(f"model.layers.{linear}.linear_attn.A_log").shape[0])
    linear_dim = int(get(f"model.layers.{linear}.linear_attn.norm.weight").shape[0])
    qkv = int(get(f"model.layers.{linear}.linear_attn.in_proj_qkv.weight").shape[0])
    key_heads = (qkv - value_heads * linear_dim) // (2 * linear_dim)
    kernel = int(get(f"model.layers.{linear}.linear_attn.conv1d.weight").shape[-1])
    intermediate = int(get("model.layers.0.mlp.gate_proj.weight").shape[0])
    return Qwen35Shape(int(vocab), int(hidden), intermediate, types, heads, kv_heads, head_dim, key_heads,
                       value_heads, linear_dim, kernel, "lm_head.weight" in sd)


def config_of(shape: Qwen35Shape, tokenizer=None):
    """transformers' ``Qwen3_5TextConfig`` for ``shape`` (module docstring: the values not in the weights)."""
    from transformers import Qwen3_5TextConfig

    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    return Qwen3_5TextConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=len(shape.layer_types), layer_types=list(shape.layer_types),
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
        linear_num_key_heads=shape.linear_key_heads, linear_num_value_heads=shape.linear_value_heads,
        linear_key_head_dim=shape.linear_head_dim, linear_value_head_dim=shape.linear_head_dim,
        linear_conv_kernel_dim=shape.conv_kernel, rms_norm_eps=1e-6, rope_parameters=dict(ROPE),
        tie_word_embeddings=not shape.has_head, pad_token_id=pad)


def build_model(sd: dict, tokenizer, dtype: torch.dtype, name: str = "the file"):
    """``Qwen3_5ForConditionalGeneration`` (a file with its vision tower) or ``Qwen3_5ForCausalLM`` from a
    Qwen 3.5 file's state dict (any layout of the module docstring)."""
    from transformers import Qwen3_5Config, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration

    from nodegraph_nodes.diffusion.checkpoint import _instantiate
    from nodegraph_nodes.dit.llm_loading import vision_token_ids
    from nodegraph_nodes.dit.qwen_image import refuse_integer_weights

    refuse_integer_weights(sd, "Qwen 3.5")
    vision = has_vision(sd)
    full = full_weights(sd) if vision else None
    sd = text_weights(sd)
    shape = shape_of(sd)
    if not shape.has_head and shape.hidden > TIED_UP_TO:
        raise ModelFileError(
            f"{name} holds no LM head (lm_head.weight) and this Qwen 3.5 model (width {shape.hidden}) does not tie "
            "it to the token embeddings, so it cannot generate text; use a file that includes lm_head")
    text_config = config_of(shape, tokenizer)
    if vision:
        embed = full["model.language_model.embed_tokens.weight"]
        if not shape.has_head:
            full["lm_head.weight"] = embed
        config = Qwen3_5Config(text_config=text_config.to_dict(), vision_config=vision_config_of(full),
                               tie_word_embeddings=not shape.has_head, **vision_token_ids(tokenizer))
        model = _instantiate(Qwen3_5ForConditionalGeneration, config, full, dtype, "Qwen 3.5", is_transformers=True)
    else:
        if not shape.has_head:
            sd = {**sd, "lm_head.weight": sd["model.embed_tokens.weight"]}
        model = _instantiate(Qwen3_5ForCausalLM, text_config, sd, dtype, "Qwen 3.5", is_transformers=True)
    if not shape.has_head:
        model.lm_head.weight = model.get_input_embeddings().weight
    return model


def vision_inputs(tokenizer, vision_config, text: str, images: list) -> dict:
    """Token ids and pixel inputs for ``text`` (one ``<|image_pad|>`` per image) and PIL ``images`` (module
    docstring: transformers' image processor with Qwen3-VL's released settings), each ``<|image_pad|>``
    repeated once per merged patch."""
    from nodegraph_nodes.dit import llm_text

    return llm_text.vision_inputs(tokenizer, vision_config, text, images, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                  size={"shortest_edge": 65536, "longest_edge": 16777216})


def find_tokenizer(models_dir: Path, near: Path) -> Path:
    from nodegraph_nodes.dit.llm_loading import find_tokenizer_folder

    return find_tokenizer_folder(models_dir, near, TOKENIZER_FOLDER, "the tokenizer files of a Qwen/Qwen3.5 release")


@dataclass(frozen=True, eq=False)
class Qwen35Clip(ManagerOwned):
    """CLIP holding a Qwen 3.5 model (``handle``: ``Qwen3_5ForConditionalGeneration`` or ``Qwen3_5ForCausalLM``)
    for TextGenerate; it conditions no image model (ComfyUI's templates use it for prompt upsampling only)."""

    handle: Any
    tokenizer: Any
    source: str = ""
    family: str = "qwen35"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def describe(self) -> str:
        return "Qwen 3.5 language model (TextGenerate's prompt upsampler)"

    def encode_text(self, ctx, text: str) -> list:
        raise ValueError(f"{Path(self.source).name or 'this CLIP'} is a Qwen 3.5 language model: nodegraph uses it "
                         "for TextGenerate only, not as an image model's text encoder")


def load_text_encoder(path: Path, manager, device: str, models_dir: Path) -> Qwen35Clip:
    """CLIPLoader (any type) for a Qwen 3.5 file."""
    from nodegraph_nodes.dit.file_loading import load_encoder_handle
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import flow_dtype

    path = Path(path)
    tokenizer = load_llm_tokenizer(find_tokenizer(Path(models_dir), path))
    handle = load_encoder_handle(path, "qwen35", manager, flow_dtype(device),
                                 lambda sd, store: build_model(sd, tokenizer, store, path.name))
    return Qwen35Clip(handle, tokenizer, source=str(path))
