"""FLUX.3 diffusers folders for CheckpointLoaderSimple: what diffusers' FLUX.3 modular pipelines save
(``save_pretrained``: ``modular_model_index.json`` with ``_class_name`` ``Flux3ModularPipeline`` or
``Flux3DistilledModularPipeline``; a ``model_index.json`` naming them is read too), with ``transformer/``
(``Flux3Transformer2DModel``, base or flow-map), ``text_encoder/`` (Qwen3-VL), ``vae/`` (Flux.2's
``AutoencoderKLFlux2``) and the tokenizer in ``tokenizer/`` (the processor component's folder) or ``processor/``.
MODEL, CLIP and VAE are the values UNETLoader, CLIPLoader type ``flux3`` and VAELoader give for the single files
(:mod:`.flux3`); the pipelines carry no scheduler, so the default sampling is the family's."""

from __future__ import annotations

from pathlib import Path

from nodegraph_nodes.diffusion.files import ModelFileError, read_json

INDEX_FILES = ("modular_model_index.json", "model_index.json")
PIPELINES = ("Flux3ModularPipeline", "Flux3DistilledModularPipeline")
TOKENIZER_FOLDERS = ("tokenizer", "processor")


def is_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of a FLUX.3 pipeline (its index names one of :data:`PIPELINES`)."""
    if not path.is_dir():
        return False
    index = next((path / f for f in INDEX_FILES if (path / f).is_file()), None)
    return index is not None and read_json(index).get("_class_name") in PIPELINES


def load_diffusers_folder(folder: Path, manager, device: str):
    """MODEL, CLIP, VAE of a FLUX.3 pipeline folder."""
    from diffusers import AutoencoderKLFlux2, Flux3Transformer2DModel
    from transformers import Qwen3VLForConditionalGeneration

    from nodegraph_nodes.diffusion.components import VaeModel, _manager_key
    from nodegraph_nodes.dit import flux2
    from nodegraph_nodes.dit.file_loading import diffusers_sub_loader, require_subfolders
    from nodegraph_nodes.dit.flux3 import Flux3Clip, Flux3Model
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import flow_dtype

    require_subfolders(folder, ("transformer", "vae", "text_encoder"))
    tok_dir = next((folder / s for s in TOKENIZER_FOLDERS if (folder / s).is_dir()), None)
    if tok_dir is None:
        raise ModelFileError(f"FLUX.3 diffusers folder {folder.name} has no 'tokenizer' or 'processor' subfolder")
    dtype = flow_dtype(device)
    sub = diffusers_sub_loader(folder, manager, dtype)
    handle = manager.load(_manager_key(folder / "transformer", "transformer:default", dtype),
                          sub(Flux3Transformer2DModel, "transformer", placed=True), compute_dtype=dtype)
    vae = VaeModel(manager.load(_manager_key(folder / "vae", "vae", dtype),
                                sub(AutoencoderKLFlux2, "vae", flux2.Flux2Vae)), 16, 128)
    te = manager.load(_manager_key(folder / "text_encoder", "text_encoder", dtype),
                      sub(Qwen3VLForConditionalGeneration, "text_encoder", placed=True), compute_dtype=dtype)
    clip = Flux3Clip(te, load_llm_tokenizer(tok_dir), source=str(folder))
    return Flux3Model(handle, "flux3", source=str(folder)), clip, vae
