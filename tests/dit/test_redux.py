"""Flux.1 Redux through ComfyUI's nodes (CLIPVisionLoader → CLIPVisionEncode → StyleModelLoader →
StyleModelApply) equals diffusers' FluxPipeline given the prompt embeddings FluxPriorReduxPipeline builds
(T5 states ++ ``ReduxImageEncoder(vision last_hidden_state)``, CLIP-L's pooled output unchanged), on tiny
random weights saved in the file layout users download (``redux_up.*`` / ``redux_down.*``).

The vision tower here is a tiny CLIP vision file (SigLIP files and the template: test_redux_siglip.py), so the
prior pipeline itself is written out: its recipe at ``prompt_embeds_scale=1`` is the concatenation below.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph

from nodegraph_nodes.dit.model import pack_latents
from tests.dit.tiny_flow import T5_DIM
from tests.helpers.noise import engine_noise

PROMPT = "a photo of a cat in snow"
SEED, STEPS, GUIDANCE = 77, 4, 3.5
VISION = 64


@pytest.fixture(scope="module")
def redux_files(flow_root):
    """A tiny CLIP vision file (models/clip_vision) and a tiny Redux file (models/style_models)."""
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    models = flow_root / "models"
    torch.manual_seed(5)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=VISION, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1, image_size=32,
        patch_size=8, projection_dim=VISION, hidden_act="quick_gelu", layer_norm_eps=1e-5)).eval()
    (models / "clip_vision").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vision.state_dict().items() if "position_ids" not in k},
              str(models / "clip_vision" / "tiny_sigclip.safetensors"))
    redux = ReduxImageEncoder(redux_dim=VISION, txt_in_features=T5_DIM).eval()
    with torch.no_grad():
        for p in redux.parameters():
            p.copy_(torch.randn(p.shape) * 0.2)
    (models / "style_models").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in redux.state_dict().items()},
              str(models / "style_models" / "tiny_flux1-redux-dev.safetensors"))
    save_file({"style_embedding": torch.zeros(1, 8, 768)}, str(models / "style_models" / "t2i_style.safetensors"))
    return redux


def redux_graph(strength: float = 1.0, strength_type: str = "multiply", sample: bool = True,
                style_file: str = "tiny_flux1-redux-dev.safetensors", images: int = 1) -> Graph:
    g = Graph()
    unet = g.node("UNETLoader", unet_name="tiny_flux_dev.safetensors", weight_dtype="default")
    clip = g.node("DualCLIPLoader", clip_name1="tiny_t5xxl.safetensors", clip_name2="tiny_clip_l.safetensors",
                  type="flux")
    vae = g.node("VAELoader", vae_name="tiny_flux_ae.safetensors")
    model = g.node("ModelSamplingFlux", model=unet.out(0), max_shift=1.15, base_shift=0.5, width=64,
                   height=64).out(0)
    pos = g.node("CLIPTextEncodeFlux", "text", clip=clip.out(0), clip_l=PROMPT, t5xxl=PROMPT, guidance=GUIDANCE)
    image = g.node("EmptyImage", width=48, height=40, batch_size=images, color=0x3C8AD2)
    cv = g.node("CLIPVisionLoader", clip_name="tiny_sigclip.safetensors")
    enc = g.node("CLIPVisionEncode", "cv", clip_vision=cv, image=image, crop="none")
    style = g.node("StyleModelLoader", style_model_name=style_file)
    styled = g.node("StyleModelApply", "styled", conditioning=pos, style_model=style, clip_vision_output=enc,
                    strength=strength, strength_type=strength_type)
    if not sample:
        g.node("PreviewAny", source=styled)
        return g
    neg = g.node("CLIPTextEncode", text="", clip=clip.out(0))
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    samples = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler",
                     scheduler="simple", positive=styled, negative=neg, latent_image=lat, denoise=1.0).out(0)
    dec = g.node("VAEDecode", "out", samples=samples, vae=vae.out(0))
    g.node("PreviewAny", source=dec)
    return g


def test_flux_redux_matches_pipeline(flow_engine, tiny_flux, redux_files):
    from diffusers import FluxPipeline

    result = flow_engine.run(redux_graph()).raise_for_status()
    image = result.value("out")
    states = result.value("cv").last_hidden_state
    assert states.shape == (1, 17, VISION)  # 4×4 patches + class token

    pipe = tiny_flux.flux_pipeline(FluxPipeline)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        text, pooled, _ = pipe.encode_prompt(PROMPT, PROMPT, max_sequence_length=256)
        image_embeds = redux_files(states).image_embeds
        prompt_embeds = torch.cat([text, image_embeds], dim=1)  # FluxPriorReduxPipeline, prompt_embeds_scale=1
        ref = pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, latents=pack_latents(noise), height=64, width=64,
                   output_type="pt").images.permute(0, 2, 3, 1)
        plain = pipe(prompt_embeds=text, pooled_prompt_embeds=pooled, num_inference_steps=STEPS,
                     guidance_scale=GUIDANCE, latents=pack_latents(noise), height=64, width=64,
                     output_type="pt").images.permute(0, 2, 3, 1)

    cond, extras = result.value("styled")[0]
    assert cond.shape == (1, 256 + 17, T5_DIM)
    assert torch.allclose(cond, prompt_embeds, atol=1e-5)
    assert torch.allclose(extras["pooled_output"], pooled, atol=1e-5)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, plain, atol=1e-3)  # the image tokens change the result


def test_strength_scales_the_image_tokens_only(flow_engine, tiny_flux, redux_files):
    full = flow_engine.run(redux_graph(sample=False)).raise_for_status().value("styled")[0][0]
    half = flow_engine.run(redux_graph(0.25, sample=False)).raise_for_status().value("styled")[0][0]
    bias1 = flow_engine.run(redux_graph(1.0, "attn_bias", sample=False)).raise_for_status().value("styled")[0][0]
    assert torch.equal(half[:, :256], full[:, :256])
    assert torch.allclose(half[:, 256:], 0.25 * full[:, 256:], atol=1e-6)
    assert full[:, 256:].abs().max() > 0.01
    assert torch.equal(bias1, full)  # ComfyUI adds no attention bias at strength 1
    two = flow_engine.run(redux_graph(images=2, sample=False)).raise_for_status().value("styled")[0][0]
    assert two.shape == (1, 256 + 2 * 17, T5_DIM)  # the images' tokens side by side in one row
    assert torch.allclose(two[:, 256 + 17:], full[:, 256:], atol=1e-5)


def test_attn_bias_below_one_and_other_style_models_are_refused(flow_engine, tiny_flux, redux_files):
    result = flow_engine.run(redux_graph(0.5, "attn_bias", sample=False))
    assert result.failure is not None and "attn_bias" in str(result.failure)
    result = flow_engine.run(redux_graph(sample=False, style_file="t2i_style.safetensors"))
    assert result.failure is not None and "T2I style adapter" in str(result.failure)
