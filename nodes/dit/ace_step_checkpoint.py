"""ACE-Step 1.5 all-in-one checkpoints (ComfyUI's ``ace_step_1.5_turbo_aio.safetensors``, CheckpointLoaderSimple):
one file with the DiT under ``model.diffusion_model.`` (ACE-Step's names, :mod:`.ace_step`), the Qwen3 encoders
and the Oobleck VAE. The parts are found by their keys, whatever their prefix: each Qwen3 model is the prefix
``P`` with ``P + "model.layers.0.self_attn.q_norm.weight"`` and ``P + "model.embed_tokens.weight"`` (the narrower
is the embedding model, a wider one the 5 Hz LM), the VAE the prefix of its ``decoder.layers.`` /
``decoder.block.`` weights (``first_stage_model.`` / ``vae.``). The file is read once for all parts. The
tokenizer is ACE-Step's Qwen3 one in ``models/text_encoders/qwen3_tokenizer/`` (the files hold none).
"""

from __future__ import annotations

from pathlib import Path

from nodegraph_nodes.diffusion.components import _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError

DIT_PREFIX = "model.diffusion_model."
QWEN_MARK = "model.layers.0.self_attn.q_norm.weight"
VAE_PREFIXES = ("first_stage_model.", "vae.")


def qwen_prefixes(keys) -> list[str]:
    keyset = set(keys)
    return sorted(k[:-len(QWEN_MARK)] for k in keyset
                  if k.endswith(QWEN_MARK) and not k.startswith(DIT_PREFIX)
                  and k[:-len(QWEN_MARK)] + "model.embed_tokens.weight" in keyset)


def vae_prefix(keys) -> str | None:
    from nodegraph_nodes.dit.audio_vae import is_diffusers_layout, is_tools_layout

    for prefix in VAE_PREFIXES:
        if is_tools_layout(keys, prefix) or is_diffusers_layout(keys, prefix):
            return prefix
    return None


def is_checkpoint(keys) -> bool:
    from nodegraph_nodes.dit.ace_step import detect_prefix

    keys = list(keys)
    return detect_prefix(keys) == DIT_PREFIX and bool(qwen_prefixes(keys)) and vae_prefix(keys) is not None


def load_checkpoint(path: Path, keys, manager, device: str, models_dir: Path):
    """``(MODEL, CLIP, VAE)`` of an ACE-Step 1.5 all-in-one file."""
    from safetensors import safe_open

    from nodegraph_nodes.dit.ace_step import AceClip, AceStepModel, build_net
    from nodegraph_nodes.dit.audio_vae import load_vae_sd
    from nodegraph_nodes.dit.convert import strip_prefix
    from nodegraph_nodes.dit.file_loading import CheckpointWeights
    from nodegraph_nodes.dit.llm_loading import build_qwen3, find_llm_tokenizer, load_llm_tokenizer
    from nodegraph_nodes.dit.loading import _stored, flow_dtype

    keys = list(keys)
    dtype = flow_dtype(device)
    weights = CheckpointWeights(path, manager)
    part = lambda prefix: strip_prefix(weights(), prefix)  # noqa: E731

    def dit_loader():
        sd = part(DIT_PREFIX)
        return build_net(path, sd, _stored(manager, sd, dtype))

    model = AceStepModel(manager.load(_manager_key(path, "ace_step_1.5", dtype), dit_loader, compute_dtype=dtype),
                         "ace_step_1.5", source=str(path))

    with safe_open(str(path), framework="pt") as fh:
        widths = {p: int(fh.get_slice(p + "model.embed_tokens.weight").get_shape()[1]) for p in qwen_prefixes(keys)}
    ordered = sorted(widths, key=widths.get)
    if len(ordered) > 2:
        raise ModelFileError(f"{path.name} holds {len(ordered)} Qwen3 models; ACE-Step 1.5 has two at most")

    def qwen_handle(prefix: str):
        def loader():
            sd = part(prefix)
            return build_qwen3(sd, _stored(manager, sd, dtype))
        return manager.load(_manager_key(path, f"qwen3_ace:{prefix}", dtype), loader, compute_dtype=dtype)

    tokenizer = load_llm_tokenizer(find_llm_tokenizer(models_dir, path, "qwen3"))
    clip = AceClip(qwen_handle(ordered[0]), tokenizer, qwen_handle(ordered[1]) if len(ordered) > 1 else None,
                   source=str(path))
    prefix = vae_prefix(keys)
    vae = load_vae_sd(path, "ace_vae", lambda: part(prefix), manager, device, 48000, "ace_step_1.5")
    return model, clip, vae
