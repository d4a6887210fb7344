"""HiDream I1 diffusers folders (``HiDreamImagePipeline``) through CheckpointLoaderSimple: MODEL, CLIP (four
encoders, ComfyUI's recipe of :mod:`.hidream_text`) and VAE. The official folders hold no Llama
(``text_encoder_4`` / ``tokenizer_4`` come from meta-llama/Llama-3.1-8B-Instruct): copy them into the folder
as ``text_encoder_4/`` (``LlamaForCausalLM`` or ``LlamaModel``) and ``tokenizer_4/``; without them the
loader says so. The scheduler config's ``shift`` is the model's default shift. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from nodegraph_nodes.diffusion.components import TextEncoder, _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError, is_diffusers_folder, read_json
from nodegraph_nodes.dit.file_loading import diffusers_sub_loader, require_subfolders

PIPELINE = "HiDreamImagePipeline"


def is_hidream_folder(path: Path) -> bool:
    return path.is_dir() and is_diffusers_folder(path) and \
        read_json(path / "model_index.json").get("_class_name", "") == PIPELINE


def load_diffusers_folder(folder: Path, manager, device: str, models_dir: Path):
    """MODEL, CLIP, VAE of a HiDreamImagePipeline folder."""
    from diffusers import AutoencoderKL, HiDreamImageTransformer2DModel
    from transformers import CLIPTextModelWithProjection, LlamaModel, T5EncoderModel

    from nodegraph_nodes.dit.hidream import HiDreamModel
    from nodegraph_nodes.dit.hidream_text import HiDreamClip, LlamaEncoder
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import flow_dtype, load_t5_tokenizer, load_tokenizer, vae_model
    from nodegraph_nodes.dit.text import T5Encoder

    dtype = flow_dtype(device)
    sub_loader = diffusers_sub_loader(folder, manager, dtype)
    require_subfolders(folder, ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                                "text_encoder_3", "tokenizer_3"))
    if not (folder / "text_encoder_4").is_dir() or not (folder / "tokenizer_4").is_dir():
        raise ModelFileError(f"HiDream folder {folder.name} has no text_encoder_4 / tokenizer_4 (Llama 3.1 8B "
                             "Instruct, not part of HiDream's release): copy meta-llama/Llama-3.1-8B-Instruct's "
                             "model and tokenizer files into those subfolders")
    shift = None
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file() and "shift" in read_json(sched):
        shift = float(read_json(sched)["shift"])

    def load(cls, sub: str, placed: bool = True):
        return manager.load(_manager_key(folder / sub, sub, dtype), sub_loader(cls, sub, placed=placed),
                            compute_dtype=dtype)

    handle = manager.load(_manager_key(folder / "transformer", "transformer:default", dtype),
                          sub_loader(HiDreamImageTransformer2DModel, "transformer", placed=True), compute_dtype=dtype)
    model = HiDreamModel(handle, "hidream", source=str(folder), default_shift=shift)
    vae = vae_model(manager.load(_manager_key(folder / "vae", "vae", dtype), sub_loader(AutoencoderKL, "vae")))
    encoders = {}
    for key, te, tk in (("clip_l", "text_encoder", "tokenizer"), ("clip_g", "text_encoder_2", "tokenizer_2")):
        tokenizer = load_tokenizer(folder / tk)
        pad = 0 if key == "clip_g" else int(tokenizer.eos_token_id)
        encoders[key] = TextEncoder(load(CLIPTextModelWithProjection, te), tokenizer, key, -1, False, pad, True)
    t5 = T5Encoder(load(T5EncoderModel, "text_encoder_3"), load_t5_tokenizer(folder / "tokenizer_3"))
    llama = LlamaEncoder(load(LlamaModel, "text_encoder_4"), load_llm_tokenizer(folder / "tokenizer_4"))
    clip = HiDreamClip(encoders["clip_l"], encoders["clip_g"], t5, llama, Path(models_dir) / "embeddings")
    return model, clip, vae
