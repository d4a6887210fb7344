"""Z-Image (Turbo): the single-stream DiT (diffusers ``ZImageTransformer2DModel``) and the MODEL's runner.

Facts (ComfyUI's): latent format Flux's (16 channels, Flux.1's VAE ``ae.safetensors``), default sampling
flow with shift 3 and network time = sigma (ComfyUI's ``ModelSamplingAuraFlow`` settings; templates set
it explicitly). The network, like Lumina 2's, runs on reversed time ``1 - sigma`` and predicts the
negated velocity; the runner turns both back.

Key layouts: ComfyUI's repackaged ``z_image_turbo_bf16.safetensors`` (Lumina's NextDiT names: fused
``attention.qkv``, ``attention.out``, ``q_norm``/``k_norm``, ``x_embedder``, ``final_layer``, bare or
under ``model.diffusion_model.``) is converted with diffusers' Z-Image converter; the diffusers layout
(``all_x_embedder.2-1.…``) loads as is. Config from the shapes; RoPE axes are not in the weights: the
released head width 128 uses (32, 48, 48), other widths (tiny test models) (h/4, 3h/8, 3h/8).

Each conditioning part runs as its own call (its caption length kept, as ComfyUI and diffusers' pipeline
give the network the unpadded caption states).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.formats import FLUX
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.qwen_image import open_runner, refuse_integer_weights
from nodegraph_nodes.dit.runner_common import NetRunner, pad_even
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 3.0
COMFY_MARKERS = ("cap_embedder.0.weight", "layers.0.attention.qkv.weight", "x_embedder.weight")
DIFFUSERS_MARKERS = ("cap_embedder.0.weight", "layers.0.attention.to_q.weight", "all_x_embedder.2-1.weight")
PREFIXES = ("model.diffusion_model.", "")


def detect_prefix(keys) -> str | None:
    """The key prefix of a Z-Image transformer's weights (either layout), or ``None``.

    Lumina 2 has the same NextDiT names; Z-Image's files also hold the pad tokens (``x_pad_token``,
    ``cap_pad_token``) and a ``t_embedder`` sized for its 256-wide modulation."""
    keyset = set(keys)
    for prefix in PREFIXES:
        for markers in (COMFY_MARKERS, DIFFUSERS_MARKERS):
            if all(prefix + m in keyset for m in markers) and prefix + "cap_pad_token" in keyset:
                return prefix
    return None


def to_diffusers(sd: dict) -> dict:
    """Diffusers' names for a Z-Image state dict in either layout (prefix already removed)."""
    if "all_x_embedder.2-1.weight" in sd:
        return sd
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    return convert_z_image_transformer_checkpoint_to_diffusers(dict(sd))


def rope_axes(head_dim: int) -> list[int]:
    if head_dim == 128:
        return [32, 48, 48]
    a = head_dim // 4
    b = (head_dim - a) // 2
    return [a, b, head_dim - a - b]


def transformer_config(sd: dict) -> dict:
    """``ZImageTransformer2DModel`` config from diffusers-layout weights."""
    try:
        x_emb = sd["all_x_embedder.2-1.weight"]
        head_dim = int(sd["layers.0.attention.norm_q.weight"].shape[0])
        k = sd["layers.0.attention.to_k.weight"]
        cap = sd["cap_embedder.1.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Z-Image transformer weights lack {exc.args[0]}") from None
    dim = int(x_emb.shape[0])

    def count(prefix: str) -> int:
        return len({int(m.group(1)) for key in sd if (m := re.match(prefix + r"\.(\d+)\.", key))})

    return {"all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": int(x_emb.shape[1]) // 4,
            "dim": dim, "n_layers": count("layers"), "n_refiner_layers": count("noise_refiner"),
            "n_heads": dim // head_dim, "n_kv_heads": int(k.shape[0]) // head_dim, "qk_norm": True,
            "cap_feat_dim": int(cap.shape[1]), "axes_dims": rope_axes(head_dim)}


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers import ZImageTransformer2DModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    refuse_integer_weights(sd, "Z-Image transformer")
    sd = to_diffusers(sd)
    return _instantiate(ZImageTransformer2DModel, transformer_config(sd), sd, dtype, "Z-Image transformer")


@dataclass(frozen=True, eq=False)
class ZImageModel(FlowModel):
    """MODEL: a Z-Image transformer."""

    family: str = "z_image"

    @property
    def format(self):
        return FLUX

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.sd3_flow, DEFAULT_SHIFT, 1.0)

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, ZImageRunner)

    def lora_patch(self, sd: dict, strength: float, name: str):
        from nodegraph_nodes.dit.llm_lora import llm_lora_patch

        return llm_lora_patch(self.family, self.handle.get(), sd, strength, name)


class ZImageRunner(NetRunner):
    """One run's calls of a ``ZImageTransformer2DModel``."""

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        h, w = x_in.shape[-2:]
        x = pad_even(x_in.to(self.device, self.dtype))
        t = 1.0 - timestep.to(self.device, torch.float32).reshape(-1).expand(x.shape[0])
        outs, row = [], 0
        for p in parts:
            states = _rows(p.cond.to(self.device, self.dtype), p.rows)
            mask = p.extras.get("attention_mask")
            caps = []
            for i in range(p.rows):
                s = states[i]
                if mask is not None:
                    s = s[_rows(mask, p.rows)[i].bool().to(s.device)]
                caps.append(s)
            xs = list(x[row:row + p.rows].unsqueeze(2).unbind(0))
            out = self.net(xs, t[row:row + p.rows].to(self.dtype), caps, return_dict=False)[0]
            outs.append(-torch.stack([o.float() for o in out])[:, :, 0])
            row += p.rows
        return torch.cat(outs)[..., :h, :w].to(self.dtype)
