"""Loading Qwen-Image and Z-Image files: transformers (UNETLoader), their language-model text encoders
(CLIPLoader types ``qwen_image`` / ``lumina2``), Qwen-Image's VAE (VAELoader) and diffusers folders
(``QwenImagePipeline`` / ``ZImagePipeline``; CheckpointLoaderSimple). Nothing is downloaded.

Text-encoder files (detected from the keys): ComfyUI's ``qwen_2.5_vl_7b*.safetensors`` (``model.layers.…``,
``model.embed_tokens``, ``visual.…``, ``lm_head``: the older transformers layout of
``Qwen2_5_VLForConditionalGeneration``) or today's transformers layout (``model.language_model.…``,
``model.visual.…``); ``qwen_3_4b.safetensors`` (``model.layers.…`` with ``q_norm``: Qwen3). Configs come
from the shapes (ComfyUI's ``*_fp8_scaled`` files are dequantized on load, as for SD3/Flux); Qwen2.5-VL's head width is not in the weights and is the family's 128 (its vision tower:
80 per head).

Tokenizers (never downloaded; the files hold none): a folder with ``tokenizer.json`` (or ``vocab.json`` +
``merges.txt``) and ``tokenizer_config.json`` holding the chat special tokens — ``<file>.tokenizer/``
next to the encoder file, else ``models/text_encoders/qwen25_tokenizer/`` (Qwen2.5-VL: the ``tokenizer``
folder of Qwen/Qwen-Image's diffusers release) or ``models/text_encoders/qwen3_tokenizer/`` (Qwen3: the
``tokenizer`` folder of Tongyi-MAI/Z-Image-Turbo's release); a diffusers folder's own ``tokenizer/``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nodegraph_nodes.diffusion.components import VaeModel, _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError, is_diffusers_folder, read_json, read_state_dict
from nodegraph_nodes.dit import qwen_image, z_image
from nodegraph_nodes.dit.convert import count_indices
from nodegraph_nodes.dit.file_loading import (diffusers_sub_loader, load_encoder_handle, load_transformer_handle,
                                              require_subfolders)
from nodegraph_nodes.dit.llm_text import LlmClip

QWEN25_HEAD_DIM, QWEN25_VISION_HEAD_DIM = 128, 80
PIPELINES = {"QwenImagePipeline": "qwen_image", "QwenImageEditPipeline": "qwen_image",
             "QwenImageEditPlusPipeline": "qwen_image", "ZImagePipeline": "z_image"}
TOKENIZER_FOLDERS = {"qwen25vl": "qwen25_tokenizer", "qwen3": "qwen3_tokenizer"}


def _dtype(device: str) -> torch.dtype:
    from nodegraph_nodes.dit.loading import flow_dtype

    return flow_dtype(device)


# -- transformers -----------------------------------------------------------------------------------

def detect_transformer(keys) -> tuple[str, str] | None:
    """``(family, prefix)`` of a Qwen-Image / Z-Image transformer file's keys, else ``None``."""
    keys = list(keys)
    prefix = qwen_image.detect_prefix(keys)
    if prefix is not None:
        return "qwen_image", prefix
    prefix = z_image.detect_prefix(keys)
    if prefix is not None:
        return "z_image", prefix
    return None


def load_transformer(path: Path, keys, manager, device: str, weight_dtype: str = "default"):
    """UNETLoader for a Qwen-Image / Z-Image transformer file."""

    family, prefix = detect_transformer(keys)
    build = qwen_image.build_transformer if family == "qwen_image" else z_image.build_transformer
    handle = load_transformer_handle(path, prefix, manager, device, weight_dtype, _dtype(device), build)
    cls = qwen_image.QwenImageModel if family == "qwen_image" else z_image.ZImageModel
    return cls(handle, family, source=str(path))


# -- text encoders ----------------------------------------------------------------------------------

def encoder_kind(keys) -> str | None:
    """``qwen3``, ``qwen25vl`` or ``None`` for a text-encoder file's keys."""
    keyset = set(keys)
    for prefix in ("model.layers.0.", "model.language_model.layers.0."):
        if prefix + "self_attn.q_proj.weight" in keyset:
            if prefix + "self_attn.q_norm.weight" in keyset:
                return "qwen3"
            return "qwen25vl"
    return None


_count = count_indices


def _qwen25vl_weights(sd: dict) -> dict:
    """Today's transformers names for a Qwen2.5-VL state dict in either layout."""
    out = {}
    for k, v in sd.items():
        if k.startswith("model.language_model.") or k.startswith("model.visual.") or k == "lm_head.weight":
            out[k] = v
        elif k.startswith("visual."):
            out["model." + k] = v
        elif k.startswith("model."):
            out["model.language_model." + k[len("model."):]] = v
    if "lm_head.weight" not in out:  # not used for the hidden states; some repackaged files leave it out
        out["lm_head.weight"] = out["model.language_model.embed_tokens.weight"]
    return out


def vision_token_ids(tokenizer) -> dict:
    """The Qwen-VL configs' special token ids (image / video pad, vision start / end) that ``tokenizer``
    knows."""
    ids = {}
    for name, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids[name] = tid
    return ids


def qwen25vl_config(sd: dict, tokenizer):
    from transformers import Qwen2_5_VLConfig

    p = "model.language_model."
    emb = sd[p + "embed_tokens.weight"]
    hidden = int(emb.shape[1])
    kv = int(sd[p + "layers.0.self_attn.k_proj.weight"].shape[0])
    text = dict(vocab_size=int(emb.shape[0]), hidden_size=hidden,
                intermediate_size=int(sd[p + "layers.0.mlp.gate_proj.weight"].shape[0]),
                num_hidden_layers=_count(sd, r"model\.language_model\.layers\.(\d+)\."),
                num_attention_heads=hidden // QWEN25_HEAD_DIM, num_key_value_heads=kv // QWEN25_HEAD_DIM,
                rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=128000,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=False)
    vision = {}
    if "model.visual.patch_embed.proj.weight" in sd:
        patch = sd["model.visual.patch_embed.proj.weight"]
        vh = int(patch.shape[0])
        depth = _count(sd, r"model\.visual\.blocks\.(\d+)\.")
        vision = dict(depth=depth, hidden_size=vh, num_heads=max(1, vh // QWEN25_VISION_HEAD_DIM),
                      intermediate_size=int(sd["model.visual.blocks.0.mlp.gate_proj.weight"].shape[0]),
                      out_hidden_size=int(sd["model.visual.merger.mlp.2.weight"].shape[0]),
                      patch_size=int(patch.shape[-1]), temporal_patch_size=int(patch.shape[2]),
                      spatial_merge_size=2, window_size=112,
                      fullatt_block_indexes=[i for i in (7, 15, 23, 31) if i < depth] or [depth - 1])
    ids = vision_token_ids(tokenizer)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


def build_qwen25vl(sd: dict, tokenizer, dtype: torch.dtype):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    sd = _qwen25vl_weights(sd)
    if "model.visual.patch_embed.proj.weight" not in sd:
        raise ModelFileError("this Qwen2.5-VL file has no vision tower (visual.*); Qwen-Image's text encoder is "
                             "the full Qwen2.5-VL model (qwen_2.5_vl_7b*.safetensors)")
    return _instantiate(Qwen2_5_VLForConditionalGeneration, qwen25vl_config(sd, tokenizer), sd, dtype,
                        "Qwen2.5-VL text encoder", is_transformers=True)


def build_qwen3(sd: dict, dtype: torch.dtype):
    from transformers import Qwen3Config, Qwen3Model

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    emb = sd["embed_tokens.weight"]
    head = int(sd["layers.0.self_attn.q_norm.weight"].shape[0])
    cfg = Qwen3Config(vocab_size=int(emb.shape[0]), hidden_size=int(emb.shape[1]),
                      intermediate_size=int(sd["layers.0.mlp.gate_proj.weight"].shape[0]),
                      num_hidden_layers=_count(sd, r"layers\.(\d+)\."), head_dim=head,
                      num_attention_heads=int(sd["layers.0.self_attn.q_proj.weight"].shape[0]) // head,
                      num_key_value_heads=int(sd["layers.0.self_attn.k_proj.weight"].shape[0]) // head,
                      rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                      tie_word_embeddings=True)
    return _instantiate(Qwen3Model, cfg, sd, dtype, "Qwen3 text encoder", is_transformers=True)


def find_tokenizer_folder(models_dir: Path, near: Path, folder: str, release: str) -> Path:
    """Where the tokenizer of the LLM encoder file ``near`` is: ``<file stem>.tokenizer/``, or ``folder`` beside the
    file or in ``models/text_encoders/`` (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``); the error names
    ``release`` (whose tokenizer files to copy there)."""
    candidates = [near.with_name(near.stem + ".tokenizer"), near.parent / folder,
                  Path(models_dir) / "text_encoders" / folder]
    for c in candidates:
        if (c / "tokenizer.json").is_file() or ((c / "vocab.json").is_file() and (c / "merges.txt").is_file()):
            return c
    raise ModelFileError(
        f"no tokenizer found for {near.name} (tokenizer.json or vocab.json + merges.txt, with "
        f"tokenizer_config.json). Model files hold no tokenizer and this engine never downloads: copy {release} "
        f"into models/text_encoders/{folder}/ (or {near.stem}.tokenizer/ beside the file)")


def find_llm_tokenizer(models_dir: Path, near: Path, kind: str) -> Path:
    """Where the tokenizer of a ``qwen25vl`` / ``qwen3`` encoder file is (see the module docstring)."""
    release = "Qwen/Qwen-Image" if kind == "qwen25vl" else "Tongyi-MAI/Z-Image-Turbo"
    return find_tokenizer_folder(models_dir, near, TOKENIZER_FOLDERS[kind],
                                 f"the 'tokenizer' folder of {release}'s diffusers release")


def load_llm_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ModelFileError(f"could not read the tokenizer in {folder}: {exc}") from None


def load_text_encoder(path: Path, clip_type: str, manager, device: str, models_dir: Path,
                      where: str = "CLIPLoader") -> LlmClip:
    """CLIPLoader for a Qwen2.5-VL (type ``qwen_image``) or Qwen3 (Z-Image; type ``lumina2`` …) file."""
    from nodegraph_nodes.dit.loading import file_keys

    kind = encoder_kind(file_keys(path, manager.allow_pickle))
    family = {"qwen25vl": "qwen_image", "qwen3": "z_image"}.get(kind)
    if family is None:
        raise ModelFileError(f"{where}: {path.name} is not a Qwen2.5-VL or Qwen3 text encoder")
    if clip_type == "qwen_image" and family != "qwen_image":
        raise ModelFileError(f"{where}.type qwen_image takes Qwen2.5-VL (qwen_2.5_vl_7b*.safetensors); "
                             f"{path.name} is a Qwen3 encoder (Z-Image: type lumina2)")
    if clip_type != "qwen_image" and family == "qwen_image":
        raise ModelFileError(f"{where}: {path.name} is Qwen2.5-VL, Qwen-Image's encoder; use type qwen_image")
    tokenizer = load_llm_tokenizer(find_llm_tokenizer(models_dir, path, kind))
    dtype = _dtype(device)

    def build(sd: dict, store: torch.dtype):
        return build_qwen25vl(sd, tokenizer, store) if kind == "qwen25vl" else build_qwen3(sd, store)

    handle = load_encoder_handle(path, kind, manager, dtype, build)
    return LlmClip(family, handle, tokenizer, source=str(path))


# -- VAE --------------------------------------------------------------------------------------------

def is_vae_file(path: Path, allow_pickle: bool) -> bool:
    from nodegraph_nodes.dit.loading import file_keys

    return path.is_file() and qwen_image.is_qwen_vae(file_keys(path, allow_pickle))


def load_vae(path: Path, manager, device: str) -> VaeModel:
    """VAELoader for Qwen-Image's VAE (Wan layout or diffusers layout, in one file)."""
    dtype = _dtype(device)
    handle = manager.load(_manager_key(path, "vae", dtype),
                          lambda: qwen_image.build_vae(read_state_dict(path, allow_pickle=manager.allow_pickle), dtype))
    return VaeModel(handle, 8, 16)


# -- diffusers folders ------------------------------------------------------------------------------

def diffusers_family(folder: Path) -> str | None:
    if not is_diffusers_folder(folder):
        return None
    return PIPELINES.get(read_json(folder / "model_index.json").get("_class_name", ""))


def load_diffusers_folder(folder: Path, manager, device: str, models_dir: Path):
    """MODEL, CLIP, VAE of a Qwen-Image / Z-Image diffusers folder."""
    from diffusers import (AutoencoderKL, AutoencoderKLQwenImage, QwenImageTransformer2DModel,
                           ZImageTransformer2DModel)
    from transformers import AutoModel, Qwen2_5_VLForConditionalGeneration

    from nodegraph_nodes.dit.loading import vae_model

    family = diffusers_family(folder)
    dtype = _dtype(device)

    sub_loader = diffusers_sub_loader(folder, manager, dtype)
    require_subfolders(folder, ("transformer", "vae", "text_encoder", "tokenizer"))
    shift = None
    if family == "qwen_image":
        net_cls, model_cls, te_cls = QwenImageTransformer2DModel, qwen_image.QwenImageModel, Qwen2_5_VLForConditionalGeneration
        vae_handle = manager.load(_manager_key(folder / "vae", "vae", dtype),
                                  sub_loader(AutoencoderKLQwenImage, "vae", qwen_image.ImageVae))
        vae = VaeModel(vae_handle, 8, 16)
    else:
        net_cls, model_cls, te_cls = ZImageTransformer2DModel, z_image.ZImageModel, AutoModel
        vae = vae_model(manager.load(_manager_key(folder / "vae", "vae", dtype), sub_loader(AutoencoderKL, "vae")))
        sched = folder / "scheduler" / "scheduler_config.json"
        if sched.is_file():
            shift = float(read_json(sched).get("shift", z_image.DEFAULT_SHIFT))
    handle = manager.load(_manager_key(folder / "transformer", "transformer:default", dtype),
                          sub_loader(net_cls, "transformer", placed=True), compute_dtype=dtype)
    model = model_cls(handle, family, source=str(folder), default_shift=shift)
    te_handle = manager.load(_manager_key(folder / "text_encoder", "text_encoder", dtype),
                             sub_loader(te_cls, "text_encoder", placed=True), compute_dtype=dtype)
    clip = LlmClip(family, te_handle, load_llm_tokenizer(folder / "tokenizer"), source=str(folder))
    return model, clip, vae
