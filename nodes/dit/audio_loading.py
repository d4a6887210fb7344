"""Where the loaders hand audio models. Each function detects its files from the keys and returns ``None`` for
other files, so the image families' detection goes on unchanged: :func:`load_checkpoint`
(CheckpointLoaderSimple: Stable Audio's all-in-one file, :mod:`.stable_audio`; ACE-Step 1.5's,
:mod:`.ace_step_checkpoint`; ACE-Step 1.0's, :mod:`.ace_step1`), :func:`load_transformer`
(UNETLoader: ACE-Step 1.5's DiT, :mod:`.ace_step`), :func:`load_vae` (VAELoader: an Oobleck audio VAE,
:mod:`.audio_vae`; 44.1 kHz when its hop is 2048 samples (Stable Audio), else 48 kHz (ACE-Step 1.5))."""

from __future__ import annotations

import math
import re
from pathlib import Path


def load_checkpoint(path: Path, manager, device: str, models_dir: Path):
    """``(MODEL, CLIP, VAE)`` of an audio all-in-one file, else ``None``."""
    from nodegraph_nodes.dit import ace_step1, ace_step_checkpoint, stable_audio
    from nodegraph_nodes.dit.loading import file_keys

    keys = file_keys(path, manager.allow_pickle)
    if ace_step1.is_checkpoint(keys):
        return ace_step1.load_checkpoint(path, keys, manager, device, Path(models_dir))
    if stable_audio.is_checkpoint(keys):
        return stable_audio.load_checkpoint(path, manager, device)
    if ace_step_checkpoint.is_checkpoint(keys):
        return ace_step_checkpoint.load_checkpoint(path, keys, manager, device, Path(models_dir))
    return None


def load_transformer(path: Path, keys, manager, device: str, weight_dtype: str):
    """The MODEL of an audio diffusion-model file, else ``None``."""
    from nodegraph_nodes.dit import ace_step

    prefix = ace_step.detect_prefix(keys)
    if prefix is not None:
        return ace_step.load_transformer(path, prefix, manager, device, weight_dtype)
    return None


def load_vae(path: Path, manager, device: str):
    """The ``AudioVae`` of an Oobleck VAE file, else ``None``."""
    from nodegraph_nodes.diffusion.files import read_state_dict
    from nodegraph_nodes.dit import audio_vae
    from nodegraph_nodes.dit.loading import file_keys

    if not path.is_file():
        return None
    keys = file_keys(path, manager.allow_pickle)
    snake = any(k.endswith(".alpha") for k in keys) and any("weight_g" in k or "original0" in k for k in keys)
    if not snake or not (audio_vae.is_tools_layout(keys) or audio_vae.is_diffusers_layout(keys)):
        return None
    hop = _hop(keys, path, manager)
    rate = 44100 if hop == 2048 else 48000
    family = "stable_audio" if rate == 44100 else "ace_step_1.5"
    return audio_vae.load_vae_sd(path, "audio_vae", lambda: read_state_dict(path, allow_pickle=manager.allow_pickle),
                                 manager, device, rate, family)


def _hop(keys, path: Path, manager) -> int:
    """Samples per latent frame: the product of the encoder blocks' strides (kernel = 2 · stride)."""
    from safetensors import safe_open

    from nodegraph_nodes.dit.audio_vae import _weight_norm_names

    strides = []
    with safe_open(str(path), framework="pt") as fh:
        for key in sorted(keys):
            name = _weight_norm_names(key)
            diffusers = re.fullmatch(r"encoder\.block\.\d+\.conv1\.weight_v", name)
            tools = re.fullmatch(r"encoder\.layers\.\d+\.layers\.4\.weight_v", name)
            if diffusers or tools:
                strides.append(int(fh.get_slice(key).get_shape()[-1]) // 2)
    return math.prod(strides) if strides else 0
