"""A tiny random-weight SCAIL-2 transformer (nodegraph's :class:`WanSCAIL2Transformer`, whose blocks are diffusers'
Wan I2V blocks; and a first-SCAIL one, without the mask convolution) saved in ComfyUI's / the official
single-file layout (Wan's original names under ``model.diffusion_model.``, plus ``patch_embedding_pose`` /
``patch_embedding_mask``).

Width 256 (two heads of 128, the width rule of Wan files), two blocks, the tiny UMT5's 32-wide text states; the
image embedder takes 1280-wide CLIP states (the official ``MLPProj(1280, dim)`` is fixed at that width: the model
the recorded official outputs were made on) or the tiny CLIP vision tower's 32 (``image_dim``: the template run).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _random_transformer
from tests.dit.tiny_wan import CLIP_VISION_WIDTH, TEXT_WIDTH, wan_original_layout

CONFIG = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 128, "in_channels": 20,
          "out_channels": 16, "mask_channels": 28, "text_dim": TEXT_WIDTH, "freq_dim": 32, "ffn_dim": 96,
          "num_layers": 2, "image_dim": 1280, "eps": 1e-6}
#: the official ``SCAIL2Model`` arguments of the same model
OFFICIAL_CONFIG = {"model_type": "i2v", "patch_size": (1, 2, 2), "text_len": 512, "in_dim": 20, "mask_dim": 28,
                   "dim": 256, "ffn_dim": 96, "freq_dim": 32, "text_dim": TEXT_WIDTH, "out_dim": 16, "num_heads": 2,
                   "num_layers": 2, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}
#: the official first-SCAIL ``SCAILModel`` arguments of :func:`scail1_transformer`
OFFICIAL_CONFIG_SCAIL1 = {k: v for k, v in OFFICIAL_CONFIG.items() if k != "mask_dim"}
FILE = "tiny_wan2.1_scail2.safetensors"


def scail_transformer(seed: int = 71, image_dim: int = 1280):
    from nodegraph_nodes.dit.wan_scail_model import WanSCAIL2Transformer

    torch.manual_seed(0)
    net = WanSCAIL2Transformer(**{**CONFIG, "image_dim": image_dim})
    return _random_transformer(net, seed).float()


def scail1_transformer(seed: int = 79):
    """The first SCAIL's tiny transformer: no identity-mask convolution."""
    from nodegraph_nodes.dit.wan_scail_model import WanSCAIL2Transformer

    torch.manual_seed(0)
    net = WanSCAIL2Transformer(**{**CONFIG, "mask_channels": 0})
    return _random_transformer(net, seed).float()


def scail_original_layout(net, prefix: str = "model.diffusion_model.") -> dict:
    return wan_original_layout(net.state_dict(), prefix)


def write_scail(models: Path, seed: int = 73, name: str = FILE):
    """``models/diffusion_models/<name>``: a tiny SCAIL-2 file for the tiny CLIP vision tower; the transformer."""
    net = scail_transformer(seed, CLIP_VISION_WIDTH)
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(scail_original_layout(net), str(models / "diffusion_models" / name))
    return net


def official_inputs() -> dict[str, torch.Tensor]:
    """The inputs of the recorded official outputs (tests/data/scail2_official), from a seeded generator: a 16 × 24
    latent of 3 frames (pose 8 × 12), one primary and two additional references, 7 text states, 5 CLIP states."""
    g = torch.Generator().manual_seed(11)
    frames, h, w = 3, 16, 24
    return {
        "x": torch.randn(1, 16, frames, h, w, generator=g),
        "context": torch.randn(7, TEXT_WIDTH, generator=g),
        "clip": torch.randn(1, 5, 1280, generator=g),
        "reference": torch.randn(1, 16, 1, h, w, generator=g),
        "reference_mask": (torch.rand(1, 28, 1, h, w, generator=g) > 0.5).float(),
        "pose": torch.randn(1, 16, frames, h // 2, w // 2, generator=g),
        "pose_mask": (torch.rand(1, 28, frames, h // 2, w // 2, generator=g) > 0.5).float(),
        "additional": torch.randn(1, 16, 2, h, w, generator=g),
        "additional_mask": (torch.rand(1, 28, 2, h, w, generator=g) > 0.5).float(),
        "history": torch.cat([torch.ones(1, 4, 1, h, w), torch.zeros(1, 4, frames - 1, h, w)], dim=2),
        "timestep": torch.tensor([637.5]),
    }
