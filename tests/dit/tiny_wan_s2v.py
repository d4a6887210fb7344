"""A tiny random-weight Wan 2.2 S2V transformer (nodegraph's :class:`WanS2VTransformer`, whose blocks are diffusers'
Wan blocks) saved in ComfyUI's / the official single-file layout (Wan's original names under
``model.diffusion_model.``), and a tiny wav2vec 2.0 ("large" variant) audio encoder file.

Five blocks, so that ComfyUI's injection list (0, 4, 8 …) injects audio after blocks 0 and 4 (two injectors, as
the official code builds for five blocks); width 256 (two heads of 128, the width rule of Wan files), the tiny
UMT5's 32-wide text states, a tiny wav2vec 2.0's 128-wide states of 25 layers (embeddings + 24: the
official audio encoder's layer weights are 25 long).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _random_transformer
from tests.dit.tiny_wan import TEXT_WIDTH, wan_original_layout

CONFIG = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 128, "in_channels": 16,
          "out_channels": 16, "text_dim": TEXT_WIDTH, "freq_dim": 32, "ffn_dim": 96, "num_layers": 5, "eps": 1e-6,
          "cond_dim": 16, "audio_dim": 128, "audio_layers": 25, "num_audio_token": 4, "enable_adain": True,
          "injectors": 2}
#: the official ``WanModel_S2V`` arguments of the same model
OFFICIAL_CONFIG = {"cond_dim": 16, "audio_dim": 128, "num_audio_token": 4, "enable_adain": True,
                   "adain_mode": "attn_norm", "audio_inject_layers": [0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39],
                   "zero_init": False, "zero_timestep": True, "enable_motioner": False, "add_last_motion": True,
                   "enable_tsm": False, "trainable_token_pos_emb": False, "enable_framepack": True,
                   "framepack_drop_mode": "padd", "model_type": "s2v", "patch_size": (1, 2, 2), "text_len": 512,
                   "in_dim": 16, "dim": 256, "ffn_dim": 96, "freq_dim": 32, "text_dim": TEXT_WIDTH, "out_dim": 16,
                   "num_heads": 2, "num_layers": 5, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True,
                   "eps": 1e-6}
AUDIO_LAYERS_NAME = "casual_audio_encoder.weights"


def s2v_transformer(seed: int = 61):
    from nodegraph_nodes.dit.wan_s2v_model import WanS2VTransformer

    torch.manual_seed(0)
    net = WanS2VTransformer(**CONFIG)
    return _random_transformer(net, seed).float()


def s2v_original_layout(net, prefix: str = "model.diffusion_model.") -> dict:
    """The official / ComfyUI names: Wan's original names (the injectors' ``to_q`` … become ``q`` …)."""
    return wan_original_layout(net.state_dict(), prefix)


def write_s2v(models: Path, seed: int = 61, name: str = "tiny_wan2.2_s2v.safetensors"):
    """``models/diffusion_models/<name>``; the transformer."""
    net = s2v_transformer(seed)
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(s2v_original_layout(net), str(models / "diffusion_models" / name))
    return net


def write_audio_encoder(models: Path, name: str = "tiny_wav2vec2_large.safetensors"):
    """A tiny wav2vec 2.0 large-variant file in ``models/audio_encoders``; the transformers model."""
    from transformers import Wav2Vec2Model

    from tests.dit.test_audio_encoder import tiny_config, write

    torch.manual_seed(0)
    config = tiny_config(True)
    config.num_hidden_layers = 24
    model = Wav2Vec2Model(config).eval()
    (models / "audio_encoders").mkdir(parents=True, exist_ok=True)
    write(model, models / "audio_encoders" / name)
    return model


def official_inputs() -> dict[str, torch.Tensor]:
    """The inputs of the recorded official outputs (tests/data/wan_s2v_official), drawn from a seeded generator."""
    g = torch.Generator().manual_seed(7)
    frames, h, w = 2, 8, 8
    inputs = {
        "x": torch.randn(1, 16, frames, h, w, generator=g),
        "context": torch.randn(7, TEXT_WIDTH, generator=g),
        "audio": torch.randn(1, 25, 128, 4 * frames, generator=g),
        "reference": torch.randn(1, 16, 1, h, w, generator=g),
        "control": torch.randn(1, 16, frames, h, w, generator=g),
        "motion": torch.randn(1, 16, 5, h, w, generator=g),
        "motion_long": torch.randn(1, 16, 23, h, w, generator=g),
        "timestep": torch.tensor([637.5]),
    }
    # a larger, non-square latent (16 × 24: FramePack's 2× / 4× rope positions truncated, h and w apart)
    inputs.update({"x_wide": torch.randn(1, 16, 3, 16, 24, generator=g),
                   "audio_wide": torch.randn(1, 25, 128, 12, generator=g),
                   "reference_wide": torch.randn(1, 16, 1, 16, 24, generator=g),
                   "control_wide": torch.randn(1, 16, 3, 16, 24, generator=g),
                   "motion_wide": torch.randn(1, 16, 19, 16, 24, generator=g)})
    return inputs
