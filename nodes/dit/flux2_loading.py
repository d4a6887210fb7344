"""Loading Flux.2 files: the transformer (UNETLoader), the Mistral text encoder (CLIPLoader type
``flux2``; a Qwen3 file there is Flux.2 Klein's encoder), the VAE (VAELoader) and diffusers folders (``Flux2Pipeline``; CheckpointLoaderSimple).
Nothing is downloaded.

Text-encoder files: ComfyUI's ``mistral_3_small_flux2_*.safetensors`` (the language model only:
``model.layers.…``, ``model.embed_tokens``, ``model.norm``, maybe ``lm_head``) or transformers'
``Mistral3ForConditionalGeneration`` layouts (``model.language_model.…`` / ``language_model.model.…``;
the vision tower is not needed for text). Config from the shapes; the head width (128), RoPE theta (1e9)
and norm eps (1e-5) are Mistral Small 3's, not in the weights. ``*_fp8_scaled`` files are dequantized.

Tokenizer (never downloaded): the Tekken tokenizer ComfyUI's repackaged file carries (its ``tekken_model``
entry: the bytes of Mistral's ``tekken.json``, turned into a ``tokenizers`` BPE by transformers'
``MistralConverter``, as ComfyUI reads it); else a folder with ``tokenizer.json`` (+
``tokenizer_config.json``) — ``<file>.tokenizer/`` next to the encoder file, ``mistral3_tokenizer/``
beside it or in ``models/text_encoders/`` (the ``tokenizer`` folder of black-forest-labs/FLUX.2-dev's
diffusers release), or a diffusers folder's own ``tokenizer/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from nodegraph_nodes.diffusion.components import VaeModel, _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError, is_diffusers_folder, read_json, read_state_dict
from nodegraph_nodes.dit import flux2
from nodegraph_nodes.dit.convert import dequantize_scaled_fp8
from nodegraph_nodes.dit.file_loading import diffusers_sub_loader, load_transformer_handle, require_subfolders
from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer

MISTRAL_HEAD_DIM, MISTRAL_ROPE_THETA, MISTRAL_EPS = 128, 1_000_000_000.0, 1e-5
TOKENIZER_FOLDER = "mistral3_tokenizer"
LM_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


def _dtype(device: str) -> torch.dtype:
    from nodegraph_nodes.dit.loading import flow_dtype

    return flow_dtype(device)


# -- transformer ------------------------------------------------------------------------------------

def detect_transformer(keys) -> str | None:
    """The prefix of a Flux.2 transformer file's keys, else ``None``."""
    return flux2.detect_prefix(keys)


def load_transformer(path: Path, keys, manager, device: str, weight_dtype: str = "default"):
    """UNETLoader for a Flux.2 transformer file."""

    handle = load_transformer_handle(path, flux2.detect_prefix(keys), manager, device, weight_dtype, _dtype(device),
                                     flux2.build_transformer)
    return flux2.Flux2Model(handle, "flux2", source=str(path))


# -- text encoder -----------------------------------------------------------------------------------

def is_mistral(keys) -> bool:
    keyset = set(keys)
    for p in LM_PREFIXES:
        if p + "layers.0.self_attn.q_proj.weight" in keyset:
            # Qwen2.5 has q/k/v biases and Qwen3 q_norm; Mistral neither
            return (p + "layers.0.self_attn.q_proj.bias" not in keyset
                    and p + "layers.0.self_attn.q_norm.weight" not in keyset)
    return False


def mistral_weights(sd: dict) -> dict:
    """``MistralModel`` names for a Mistral (or Mistral 3's language model) state dict."""
    for p in LM_PREFIXES:
        if p + "embed_tokens.weight" in sd:
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    raise ModelFileError("the Mistral text-encoder weights lack embed_tokens.weight")


def build_mistral(sd: dict, dtype: torch.dtype):
    from transformers import MistralConfig, MistralModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    sd = mistral_weights(sd)
    emb = sd["embed_tokens.weight"]
    layers = len({int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))})
    cfg = MistralConfig(vocab_size=int(emb.shape[0]), hidden_size=int(emb.shape[1]),
                        intermediate_size=int(sd["layers.0.mlp.gate_proj.weight"].shape[0]), num_hidden_layers=layers,
                        head_dim=MISTRAL_HEAD_DIM,
                        num_attention_heads=int(sd["layers.0.self_attn.q_proj.weight"].shape[0]) // MISTRAL_HEAD_DIM,
                        num_key_value_heads=int(sd["layers.0.self_attn.k_proj.weight"].shape[0]) // MISTRAL_HEAD_DIM,
                        rms_norm_eps=MISTRAL_EPS, rope_theta=MISTRAL_ROPE_THETA, max_position_embeddings=131072,
                        sliding_window=None, tie_word_embeddings=False)
    return _instantiate(MistralModel, cfg, sd, dtype, "Mistral text encoder", is_transformers=True)


TEKKEN_KEY = "tekken_model"


def tekken_tokenizer(data: bytes, where: str):
    """A fast tokenizer from the bytes of a ``tekken.json`` (special tokens by rank: ``<s>`` is 1)."""
    import tempfile

    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.mistral.tokenizer import MistralConverter

    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "tekken.json"
            path.write_bytes(data)
            raw = MistralConverter(vocab_file=str(path)).converted()
    except Exception as exc:
        raise ModelFileError(f"could not read the Tekken tokenizer in {where}: {exc}") from None
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def file_tokenizer(path: Path, keys) -> object | None:
    """The Tekken tokenizer stored in a ComfyUI Mistral file, or ``None``."""
    if TEKKEN_KEY not in set(keys) or path.suffix.lower() not in (".safetensors", ".sft"):
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        data = fh.get_tensor(TEKKEN_KEY)
    return tekken_tokenizer(data.to(torch.uint8).numpy().tobytes(), path.name)


def find_tokenizer(models_dir: Path, near: Path) -> Path:
    candidates = [near.with_name(near.stem + ".tokenizer"), near.parent / TOKENIZER_FOLDER,
                  Path(models_dir) / "text_encoders" / TOKENIZER_FOLDER]
    for c in candidates:
        if (c / "tokenizer.json").is_file():
            return c
    raise ModelFileError(
        f"no tokenizer found for {near.name} (the file holds no tekken_model; looked for tokenizer.json with "
        f"tokenizer_config.json). Models are never downloaded: use ComfyUI's repackaged file, or copy the 'tokenizer' folder of "
        f"black-forest-labs/FLUX.2-dev's diffusers release into models/text_encoders/{TOKENIZER_FOLDER}")


def load_text_encoder(path: Path, manager, device: str, models_dir: Path, where: str = "CLIPLoader"):
    """CLIPLoader type ``flux2``: a Mistral file."""
    from nodegraph_nodes.dit.loading import _stored, file_keys

    from nodegraph_nodes.dit import llm_loading

    keys = file_keys(path, manager.allow_pickle)
    if llm_loading.encoder_kind(keys) == "qwen3":  # Flux.2 Klein's Qwen3 4B / 8B
        return load_klein_text_encoder(path, manager, device, models_dir)
    if not is_mistral(keys):
        raise ModelFileError(f"{where}.type flux2 takes Flux.2's Mistral text encoder "
                             f"(mistral_3_small_flux2*.safetensors) or Klein's Qwen3 (qwen_3_4b / qwen_3_8b); "
                             f"{path.name} is neither")
    tokenizer = file_tokenizer(path, keys) or load_llm_tokenizer(find_tokenizer(models_dir, path))
    dtype = _dtype(device)

    def loader():
        sd = dequantize_scaled_fp8(read_state_dict(path, allow_pickle=manager.allow_pickle))
        sd = {k: v for k, v in sd.items() if k != TEKKEN_KEY}
        return build_mistral(sd, _stored(manager, sd, dtype))

    handle = manager.load(_manager_key(path, "mistral", dtype), loader, compute_dtype=dtype)
    return flux2.Flux2Clip("flux2", handle, tokenizer, source=str(path))


def load_klein_text_encoder(path: Path, manager, device: str, models_dir: Path):
    """Flux.2 Klein's Qwen3 encoder (tokenizer as for Z-Image's: ``qwen3_tokenizer/``)."""
    from nodegraph_nodes.dit import llm_loading
    from nodegraph_nodes.dit.loading import _stored

    tokenizer = load_llm_tokenizer(llm_loading.find_llm_tokenizer(models_dir, path, "qwen3"))
    dtype = _dtype(device)

    def loader():
        sd = dequantize_scaled_fp8(read_state_dict(path, allow_pickle=manager.allow_pickle))
        return llm_loading.build_qwen3(sd, _stored(manager, sd, dtype))

    handle = manager.load(_manager_key(path, "qwen3", dtype), loader, compute_dtype=dtype)
    return flux2.Flux2Clip("flux2_klein", handle, tokenizer, source=str(path))


# -- VAE --------------------------------------------------------------------------------------------

def is_vae_file(path: Path, allow_pickle: bool) -> bool:
    from nodegraph_nodes.dit.loading import file_keys

    return path.is_file() and flux2.is_flux2_vae(file_keys(path, allow_pickle))


def load_vae(path: Path, manager, device: str) -> VaeModel:
    """VAELoader for Flux.2's VAE (BFL/LDM or diffusers layout, with its ``bn`` statistics)."""
    dtype = _dtype(device)
    handle = manager.load(_manager_key(path, "vae", dtype),
                          lambda: flux2.build_vae(read_state_dict(path, allow_pickle=manager.allow_pickle), dtype))
    return VaeModel(handle, 16, 128)


# -- diffusers folders ------------------------------------------------------------------------------

PIPELINES = ("Flux2Pipeline", "Flux2KleinPipeline")


def is_diffusers_flux2(folder: Path) -> bool:
    return is_diffusers_folder(folder) and \
        read_json(folder / "model_index.json").get("_class_name", "") in PIPELINES


def load_diffusers_folder(folder: Path, manager, device: str):
    """MODEL, CLIP, VAE of a ``Flux2Pipeline`` (Mistral) or ``Flux2KleinPipeline`` (Qwen3) folder (the text
    encoder's language model only)."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    dtype = _dtype(device)
    require_subfolders(folder, ("transformer", "vae", "text_encoder", "tokenizer"))
    sub_loader = diffusers_sub_loader(folder, manager, dtype)

    def text_loader():
        from nodegraph.offload import safetensors_dtype

        sd = {}
        for f in sorted((folder / "text_encoder").glob("*.safetensors")):
            sd.update(read_state_dict(f, allow_pickle=False))
        if not sd:
            raise ModelFileError(f"diffusers folder {folder.name}/text_encoder holds no safetensors weights")
        store = manager.storage_dtype(safetensors_dtype(folder / "text_encoder"), dtype)
        if klein:
            from nodegraph_nodes.dit.llm_loading import build_qwen3

            return build_qwen3(sd, store)
        return build_mistral(sd, store)

    klein = read_json(folder / "model_index.json").get("_class_name") == "Flux2KleinPipeline"

    handle = manager.load(_manager_key(folder / "transformer", "transformer:default", dtype),
                          sub_loader(Flux2Transformer2DModel, "transformer", placed=True), compute_dtype=dtype)
    vae = VaeModel(manager.load(_manager_key(folder / "vae", "vae", dtype),
                                sub_loader(AutoencoderKLFlux2, "vae", flux2.Flux2Vae)), 16, 128)
    te = manager.load(_manager_key(folder / "text_encoder", "qwen3" if klein else "mistral", dtype), text_loader,
                      compute_dtype=dtype)
    clip = flux2.Flux2Clip("flux2_klein" if klein else "flux2", te, load_llm_tokenizer(folder / "tokenizer"),
                           source=str(folder))
    return flux2.Flux2Model(handle, "flux2", source=str(folder)), clip, vae
