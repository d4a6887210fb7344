"""A tiny random-weight Chroma built from diffusers' ``ChromaTransformer2DModel`` and saved as users have
it: ``diffusion_models/tiny_chroma.safetensors`` (ComfyUI's / lodestones' single-file names: BFL's Flux
names without modulation layers, plus ``distilled_guidance_layer.*``), the T5 of :mod:`tests.dit.tiny_flow`
(``text_encoders/tiny_t5xxl.safetensors``, tokenizer in ``text_encoders/t5_tokenizer``), Flux's VAE
(``vae/tiny_flux_ae.safetensors``) and ``diffusers/tiny_chroma/`` (a ``ChromaPipeline`` folder).

The single-file export is written from the layout's key names, independently of the engine's import.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import (T5_DIM, TinyFlow, _contig, _random_transformer, _save_folder, _vae, _vae_file,
                                 build_text_encoders, flux_blocks_to_bfl)


def chroma_transformer():
    from diffusers import ChromaTransformer2DModel

    torch.manual_seed(0)
    net = ChromaTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                                   attention_head_dim=128, num_attention_heads=1, joint_attention_dim=T5_DIM,
                                   axes_dims_rope=(16, 56, 56), approximator_num_channels=64,
                                   approximator_hidden_dim=32, approximator_layers=2)
    return _random_transformer(net, 21)


def chroma_to_comfy(net) -> dict[str, torch.Tensor]:
    """diffusers ChromaTransformer2DModel → the single-file names (chroma-unlocked-v*.safetensors)."""
    sd = net.state_dict()
    out = {"img_in.weight": sd["x_embedder.weight"], "img_in.bias": sd["x_embedder.bias"],
           "txt_in.weight": sd["context_embedder.weight"], "txt_in.bias": sd["context_embedder.bias"],
           "final_layer.linear.weight": sd["proj_out.weight"], "final_layer.linear.bias": sd["proj_out.bias"]}
    g = "distilled_guidance_layer."
    for kind in ("weight", "bias"):
        out[f"{g}in_proj.{kind}"] = sd[f"{g}in_proj.{kind}"]
        out[f"{g}out_proj.{kind}"] = sd[f"{g}out_proj.{kind}"]
    for i in range(net.config.approximator_layers):
        for kind in ("weight", "bias"):
            out[f"{g}layers.{i}.in_layer.{kind}"] = sd[f"{g}layers.{i}.linear_1.{kind}"]
            out[f"{g}layers.{i}.out_layer.{kind}"] = sd[f"{g}layers.{i}.linear_2.{kind}"]
        out[f"{g}norms.{i}.scale"] = sd[f"{g}norms.{i}.weight"]
    out.update(flux_blocks_to_bfl(net, modulation=False))
    return out


def build_chroma(root: Path) -> TinyFlow:
    from diffusers import FlowMatchEulerDiscreteScheduler

    models = root / "models"
    text = build_text_encoders(root)
    net = chroma_transformer()
    vae = _vae(0.3611, 0.1159)
    for sub in ("diffusion_models", "vae", "diffusers"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    comfy = {"model.diffusion_model." + k: v for k, v in chroma_to_comfy(net).items()}
    save_file(_contig(comfy), str(models / "diffusion_models" / "tiny_chroma.safetensors"))
    if not (models / "vae" / "tiny_flux_ae.safetensors").is_file():
        save_file(_contig(_vae_file(vae)), str(models / "vae" / "tiny_flux_ae.safetensors"))
    folder = models / "diffusers" / "tiny_chroma"
    # ComfyUI's Chroma default: Flux's time shift with mu = 1.15 at every resolution
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=1.15, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    _save_folder(folder, "ChromaPipeline", {"transformer": net, "vae": vae, "text_encoder": text.t5},
                 {"tokenizer": text.tokenizer_t5}, sched)
    return TinyFlow(net, vae, text, folder)
