"""Qwen-Image 2.1 diffusers folders (``model_index.json`` class ``QwenImage21Pipeline``) for
CheckpointLoaderSimple: ``transformer/``, ``vae/``, ``text_encoder/`` (Qwen3-VL) and the tokenizer from
``processor/`` (the release's) or ``tokenizer/``. The scheduler's ``shift`` is the default sampling shift when
the folder's scheduler does not shift dynamically (else the family's default, see :mod:`.qwen_image21`)."""

from __future__ import annotations

from pathlib import Path

from nodegraph_nodes.diffusion.files import ModelFileError, is_diffusers_folder, read_json


def is_folder(path: Path) -> bool:
    return (path.is_dir() and is_diffusers_folder(path)
            and read_json(path / "model_index.json").get("_class_name") == "QwenImage21Pipeline")


def load_diffusers_folder(folder: Path, manager, device: str):
    """MODEL, CLIP, VAE of a ``QwenImage21Pipeline`` folder."""
    from diffusers import AutoencoderKLQwenImage21, QwenImage21Transformer2DModel
    from transformers import Qwen3VLForConditionalGeneration

    from nodegraph_nodes.diffusion.components import VaeModel, _manager_key
    from nodegraph_nodes.dit.file_loading import diffusers_sub_loader, require_subfolders
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import flow_dtype
    from nodegraph_nodes.dit.qwen_image21 import QwenImage21Model, RgbaVae
    from nodegraph_nodes.dit.qwen_image21_text import Qwen21Clip

    require_subfolders(folder, ("transformer", "vae", "text_encoder"))
    tok_dir = next((folder / s for s in ("processor", "tokenizer") if (folder / s).is_dir()), None)
    if tok_dir is None:
        raise ModelFileError(f"diffusers folder {folder.name} has no 'processor' or 'tokenizer' subfolder")
    dtype = flow_dtype(device)
    sub = diffusers_sub_loader(folder, manager, dtype)
    shift = None
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        cfg = read_json(sched)
        if not cfg.get("use_dynamic_shifting", False) and "shift" in cfg:
            shift = float(cfg["shift"])
    handle = manager.load(_manager_key(folder / "transformer", "transformer:default", dtype),
                          sub(QwenImage21Transformer2DModel, "transformer", placed=True), compute_dtype=dtype)
    model = QwenImage21Model(handle, "qwen_image21", source=str(folder), default_shift=shift)
    vae = VaeModel(manager.load(_manager_key(folder / "vae", "vae", dtype),
                                sub(AutoencoderKLQwenImage21, "vae", RgbaVae)), 16, 64)
    te = manager.load(_manager_key(folder / "text_encoder", "text_encoder", dtype),
                      sub(Qwen3VLForConditionalGeneration, "text_encoder", placed=True), compute_dtype=dtype)
    return model, Qwen21Clip(te, load_llm_tokenizer(tok_dir), source=str(folder)), vae
