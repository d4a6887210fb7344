"""USO style reference (ModelPatchLoader with USO's SigLIP projector, USOStyleReference) on Flux.1 dev.

A tiny SigLIP (20 layers, so that layer −20 exists) and a tiny projector file in USO's layout
(``feature_embedder.{high,mid,low}_{embedding_linear.0,layer_norm,projection}``); the engine's image equals
diffusers' FluxPipeline whose transformer gets, by hooks written here, the style tokens computed from the raw
weights — ``projection(layer_norm(silu(W·hᵀ + b)ᵀ))`` for the penultimate, −11th and −20th SigLIP layer outputs,
in the order high, mid, low — in front of the ``context_embedder`` output, with zero position ids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from nodegraph.builder import Graph

from nodegraph_nodes.dit.model import pack_latents
from tests.dit.test_redux import redux_files  # noqa: F401  (a tiny CLIP, not SigLIP, vision file)
from tests.helpers.noise import engine_noise

PROMPT = "a photo of a cat in snow"
SEED, STEPS, GUIDANCE = 77, 4, 3.5
WIDTH, HIDDEN, STYLE = 64, 128, 4


@pytest.fixture(scope="module")
def uso_files(flow_root):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(13)
    vision = SiglipVisionModel(SiglipVisionConfig(hidden_size=WIDTH, intermediate_size=96, num_hidden_layers=20,
                                                  num_attention_heads=1, image_size=32, patch_size=8,
                                                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)).eval()
    models = flow_root / "models"
    (models / "clip_vision").mkdir(parents=True, exist_ok=True)
    save_file({k if k.startswith("vision_model.") else "vision_model." + k: v.contiguous()
               for k, v in vision.state_dict().items() if "position_ids" not in k},
              str(models / "clip_vision" / "tiny_siglip20.safetensors"))
    g = torch.Generator().manual_seed(3)
    sd = {}
    for b in ("high", "mid", "low"):
        sd.update({f"feature_embedder.{b}_embedding_linear.0.weight": torch.randn(STYLE, 16, generator=g) * 0.3,
                   f"feature_embedder.{b}_embedding_linear.0.bias": torch.randn(STYLE, generator=g) * 0.1,
                   f"feature_embedder.{b}_layer_norm.weight": 1 + torch.randn(WIDTH, generator=g) * 0.1,
                   f"feature_embedder.{b}_layer_norm.bias": torch.randn(WIDTH, generator=g) * 0.1,
                   f"feature_embedder.{b}_projection.weight": torch.randn(HIDDEN, WIDTH, generator=g) * 0.2,
                   f"feature_embedder.{b}_projection.bias": torch.randn(HIDDEN, generator=g) * 0.1})
    (models / "model_patches").mkdir(parents=True, exist_ok=True)
    save_file(sd, str(models / "model_patches" / "tiny_uso_projector.safetensors"))
    return vision, sd


def uso_graph(with_uso: bool = True) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_flux_dev.safetensors", weight_dtype="default").out(0)
    clip = g.node("DualCLIPLoader", clip_name1="tiny_t5xxl.safetensors", clip_name2="tiny_clip_l.safetensors",
                  type="flux").out(0)
    vae = g.node("VAELoader", vae_name="tiny_flux_ae.safetensors").out(0)
    model = g.node("ModelSamplingFlux", model=model, max_shift=1.15, base_shift=0.5, width=64, height=64).out(0)
    if with_uso:
        image = g.node("LoadImage", image="uso_style.png").out(0)
        cv = g.node("CLIPVisionLoader", clip_name="tiny_siglip20.safetensors")
        enc = g.node("CLIPVisionEncode", "cv", clip_vision=cv, image=image, crop="center")
        patch = g.node("ModelPatchLoader", name="tiny_uso_projector.safetensors")
        model = g.node("USOStyleReference", model=model, model_patch=patch, clip_vision_output=enc).out(0)
    pos = g.node("CLIPTextEncodeFlux", clip=clip, clip_l=PROMPT, t5xxl=PROMPT, guidance=GUIDANCE)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    samples = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler",
                     scheduler="simple", positive=pos, negative=neg, latent_image=lat, denoise=1.0).out(0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=samples, vae=vae))
    return g


def style_tokens(vision, sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        hs = vision(pixel_values=(pixels - 0.5) / 0.5, output_hidden_states=True).hidden_states
    layers = {"high": hs[-2], "mid": hs[-11], "low": hs[-20]}
    out = []
    for b in ("high", "mid", "low"):
        p = f"feature_embedder.{b}_"
        e = F.silu(layers[b].transpose(1, 2) @ sd[p + "embedding_linear.0.weight"].T + sd[p + "embedding_linear.0.bias"])
        e = F.layer_norm(e.transpose(1, 2), (WIDTH,), sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"], 1e-5)
        out.append(e @ sd[p + "projection.weight"].T + sd[p + "projection.bias"])
    return torch.cat(out, dim=1)


def test_uso_style_matches_pipeline_with_prepended_tokens(flow_engine, tiny_flux, uso_files):
    from diffusers import FluxPipeline

    vision, sd = uso_files
    flow_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(flow_engine.paths.input_dir / "uso_style.png")
    result = flow_engine.run(uso_graph()).raise_for_status()
    image = result.value("out")
    plain = flow_engine.run(uso_graph(False)).raise_for_status().value("out")
    assert result.value("cv").all_hidden_states.shape == (1, 20, 16, WIDTH)

    tokens = style_tokens(vision, sd, torch.from_numpy(pixels).float().div(255).permute(2, 0, 1)[None])
    net = tiny_flux.transformer

    def ids(module, args, kwargs):
        t = kwargs["txt_ids"]
        return args, {**kwargs, "txt_ids": torch.cat([torch.zeros(tokens.shape[1], t.shape[-1], dtype=t.dtype), t])}

    handles = [net.register_forward_pre_hook(ids, with_kwargs=True),
               net.context_embedder.register_forward_hook(lambda m, a, o: torch.cat([tokens.expand(o.shape[0], -1, -1), o], 1))]
    pipe = tiny_flux.flux_pipeline(FluxPipeline)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    try:
        with torch.no_grad():
            ref = pipe(PROMPT, prompt_2=PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                       latents=pack_latents(noise), height=64, width=64, max_sequence_length=256,
                       output_type="pt").images.permute(0, 2, 3, 1)
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert (image - plain).abs().max() > 1e-2


def test_uso_needs_siglip_layers(flow_engine, tiny_flux, uso_files, redux_files):
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_flux_dev.safetensors", weight_dtype="default").out(0)
    image = g.node("EmptyImage", width=32, height=32, batch_size=1, color=0)
    cv = g.node("CLIPVisionLoader", clip_name="tiny_sigclip.safetensors")  # a CLIP (not SigLIP) vision file
    enc = g.node("CLIPVisionEncode", clip_vision=cv, image=image, crop="none")
    patch = g.node("ModelPatchLoader", name="tiny_uso_projector.safetensors")
    g.node("PreviewAny", source=g.node("USOStyleReference", model=model, model_patch=patch, clip_vision_output=enc))
    result = flow_engine.run(g)
    assert result.failure is not None and "SigLIP" in result.failure.exception_message


def _flux_checkpoint(models) -> None:
    """A tiny Flux.1 dev all-in-one file (ComfyUI's checkpoint layout) from the session's split files."""
    from safetensors.torch import load_file

    parts = {"model.diffusion_model.": "diffusion_models/tiny_flux_dev.safetensors",
             "first_stage_model.": "vae/tiny_flux_ae.safetensors",
             "text_encoders.clip_l.transformer.": "text_encoders/tiny_clip_l.safetensors",
             "text_encoders.t5xxl.transformer.": "text_encoders/tiny_t5xxl.safetensors"}
    sd = {}
    for prefix, name in parts.items():
        sd.update({prefix + k: v for k, v in load_file(str(models / name)).items()})
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file(sd, str(models / "checkpoints" / "flux1-dev-fp8.safetensors"))


def test_uso_template_runs_with_style_references_on(flow_engine, flow_root, tiny_flux, uso_files, flow_registry):
    """ComfyUI's flux1_dev_uso_reference_image_gen (the character-reference path: ReferenceLatent with the
    ``uxo/uno`` method, the USO DiT LoRA) with its two style references switched on (as saved they are bypassed),
    on tiny files under the template's names: 64×64, 2 steps, the reference image scaled to 64 instead of 512."""
    import json
    import shutil
    from pathlib import Path

    from nodegraph.workflow.loader import load_workflow_data
    from tests.dit.template_runs import last_saved_image

    models = flow_root / "models"
    _flux_checkpoint(models)
    shutil.copyfile(models / "clip_vision" / "tiny_siglip20.safetensors",
                    models / "clip_vision" / "sigclip_vision_patch14_384.safetensors")
    shutil.copyfile(models / "model_patches" / "tiny_uso_projector.safetensors",
                    models / "model_patches" / "uso-flux1-projector-v1.safetensors")
    g = torch.Generator().manual_seed(9)
    (models / "loras").mkdir(parents=True, exist_ok=True)
    save_file({"diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight": torch.randn(2, HIDDEN, generator=g) * 0.1,
               "diffusion_model.double_blocks.0.img_attn.proj.lora_B.weight": torch.randn(HIDDEN, 2, generator=g) * 0.1},
              str(models / "loras" / "uso-flux1-dit-lora-v1.safetensors"))
    flow_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(8).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(flow_engine.paths.input_dir / "flux1_dev_uso_reference_image_gen_input_image.png")

    ui = json.loads((Path(__file__).resolve().parents[1] / "data" / "comfy_templates_dit"
                     / "flux1_dev_uso_reference_image_gen.json").read_text())
    for sg in ui["definitions"]["subgraphs"]:
        if sg["name"] == "USO Character Reference":
            for n in sg["nodes"]:
                if n["id"] in (46, 53, 55, 56):  # the two style-reference images and their USOStyleReference
                    n["mode"] = 0
    api = load_workflow_data(ui, flow_registry).api
    for n in api.values():
        if n["class_type"] == "EmptySD3LatentImage":
            n["inputs"].update(width=64, height=64)
        if n["class_type"] == "KSampler":
            n["inputs"]["steps"] = 2
        if n["class_type"] == "ImageScaleToMaxDimension":
            n["inputs"]["largest_size"] = 64
    result = flow_engine.run(api).raise_for_status()
    kinds = [api[n]["class_type"] for n in result.executed]
    assert kinds.count("USOStyleReference") == 2 and "ModelPatchLoader" in kinds
    assert {"CheckpointLoaderSimple", "LoraLoaderModelOnly", "ReferenceLatent", "FluxKontextMultiReferenceLatentMethod",
            "KSampler", "SaveImage"} <= set(kinds)
    image = last_saved_image(flow_engine.paths.output_dir)
    assert image.shape == (64, 64, 3) and image.std() > 0.01
