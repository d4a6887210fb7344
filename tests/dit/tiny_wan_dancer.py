"""A tiny random-weight Wan-Dancer transformer (nodegraph's :class:`WanDancerTransformer`, whose blocks are diffusers'
Wan blocks) saved in ComfyUI's / the official single-file layout (Wan's original names under
``model.diffusion_model.`` plus the Dancer parts with the official names).

Ten blocks, so that the official injection list (0, 4, 8 …) injects music after blocks 0, 4 and 8 (three
injectors, as the official code builds for ten blocks) and block 9 (the template's skip layer) exists; width 256
(two heads of 128, the width rule of Wan files); 36 input channels and the CLIP image embedder of Wan 2.1 I2V;
the official fixed music encoder (35 → 256, 4 heads, MLP 1024, two layers). The official file also holds the
injectors' ``q`` / ``k`` / ``norm_q`` / ``norm_k`` and each music layer's rope buffer ``rotary.freqs``, which the
output does not depend on: they are written with random values (the rope buffer exact).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _random_transformer
from tests.dit.tiny_wan import TEXT_WIDTH, wan_original_layout

LAYERS = 10
INJECTORS = 3
CONFIG = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 128, "in_channels": 36,
          "out_channels": 16, "text_dim": TEXT_WIDTH, "freq_dim": 32, "ffn_dim": 64, "num_layers": LAYERS,
          "eps": 1e-6, "image_dim": 1280, "injectors": INJECTORS}
#: the official ``WanModel`` arguments of the same model (``gen_video_global.py``'s flags)
OFFICIAL_CONFIG = {"dim": 256, "in_dim": 36, "ffn_dim": 64, "out_dim": 16, "text_dim": TEXT_WIDTH, "freq_dim": 32,
                   "eps": 1e-6, "patch_size": (1, 2, 2), "num_heads": 2, "num_layers": LAYERS,
                   "has_image_input": True, "enable_music_inject": True, "enable_refimage": True,
                   "enable_global": True, "enable_dynamicfps": True, "enable_unimodel": True}


def dancer_transformer(seed: int = 71, image_dim: int = 1280):
    """The tiny transformer; ``image_dim`` the CLIP vision width (1280: CLIP vision H, the official recording's)."""
    from nodegraph_nodes.dit.wan_dancer_model import WanDancerTransformer

    torch.manual_seed(0)
    net = WanDancerTransformer(**{**CONFIG, "image_dim": image_dim})
    return _random_transformer(net, seed).float()


def dancer_original_layout(net, prefix: str = "model.diffusion_model.", seed: int = 72) -> dict:
    """The official / ComfyUI names, with the official file's unused injector and rope tensors added."""
    sd = net.state_dict()
    base = {k: v for k, v in sd.items() if not k.startswith(("patch_embedding_global.", "head_global.",
                                                                 "img_emb_refimage.", "music_"))}
    out = wan_original_layout(base, prefix)
    out.update({prefix + k: v.contiguous() for k, v in sd.items() if k not in base})
    g = torch.Generator().manual_seed(seed)
    dim = net.config.num_attention_heads * net.config.attention_head_dim
    for i in range(net.config.injectors):
        for name in ("q", "k"):
            out[f"{prefix}music_injector.injector.{i}.{name}.weight"] = torch.randn(dim, dim, generator=g) * 0.05
            out[f"{prefix}music_injector.injector.{i}.{name}.bias"] = torch.randn(dim, generator=g) * 0.05
        for name in ("norm_q", "norm_k"):
            out[f"{prefix}music_injector.injector.{i}.{name}.weight"] = 1 + torch.randn(dim, generator=g) * 0.1
    width = net.config.music_dim
    freqs = 1.0 / (10000 ** (torch.arange(0, width, 2)[: width // 2].float() / width))
    for i in range(net.config.music_layers):
        out[f"{prefix}music_encoder.{i}.rotary.freqs"] = freqs.clone()
    return out


def write_dancer(models: Path, seed: int = 71, name: str = "tiny_wan2.2_dancer.safetensors", image_dim: int = 1280):
    """``models/diffusion_models/<name>``; the transformer."""
    net = dancer_transformer(seed, image_dim)
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(dancer_original_layout(net), str(models / "diffusion_models" / name))
    return net


def official_inputs() -> dict[str, torch.Tensor]:
    """The inputs of the recorded official outputs (tests/data/wan_dancer_official), drawn from a seeded generator:
    3 latent frames of 8 × 8 (4 × 4 tokens: 2 per music group), 512 text states (the last 500 zero, as padded
    prompts are), CLIP states of the start and reference images, 40 music frames."""
    g = torch.Generator().manual_seed(7)
    context = torch.randn(1, 512, TEXT_WIDTH, generator=g)
    context[:, 12:] = 0
    return {"x": torch.randn(1, 16, 3, 8, 8, generator=g), "y": torch.randn(1, 20, 3, 8, 8, generator=g),
            "context": context, "clip": torch.randn(1, 257, 1280, generator=g),
            "clip_ref": torch.randn(1, 257, 1280, generator=g), "music": torch.randn(40, 35, generator=g),
            "timestep": torch.tensor([637.5])}


def synthetic_song(rate: int, seconds: float = 6.0, seed: int = 3):
    """A float32 mono test track (numpy): a kick at 112 BPM, a noise snare, four sine chords 1.5 s each slightly
    off A440 tuning; the input of the recorded librosa features (tests/data/wan_dancer_official/README.md)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    y = np.zeros_like(t)
    for k, beat in enumerate(np.arange(0.1, seconds, 60 / 112)):
        m = (t >= beat) & (t < beat + 0.15)
        y[m] += np.sin(2 * np.pi * 60 * (t[m] - beat)) * np.exp(-(t[m] - beat) * 30) * (1.0 if k % 2 == 0 else 0.7)
    for beat in np.arange(0.37, seconds, 60 / 112 * 2):
        m = (t >= beat) & (t < beat + 0.08)
        y[m] += rng.standard_normal(m.sum()) * 0.3 * np.exp(-(t[m] - beat) * 50)
    chords = [(261.63, 329.63, 392.0), (220.0, 261.63, 329.63), (174.61, 220.0, 261.63), (196.0, 246.94, 293.66)]
    for c, start in enumerate(np.arange(0, seconds, 1.5)):
        m = (t >= start) & (t < start + 1.5)
        for f in chords[c % 4]:
            y[m] += 0.12 * np.sin(2 * np.pi * f * 1.003 * t[m])
    return (y / np.abs(y).max() * 0.8).astype(np.float32)
