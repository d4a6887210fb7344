"""Flux.1 dev text-to-image through ComfyUI's nodes equals diffusers' FluxPipeline on the same tiny
weights, seed, steps, guidance and (resolution-dependent) shift: KSampler and the official template's
SamplerCustomAdvanced + BasicGuider + FluxGuidance chain, from the BFL single file (UNETLoader +
DualCLIPLoader + VAELoader) and from the diffusers folder."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph

from nodegraph_nodes.dit.model import pack_latents
from tests.helpers.noise import engine_noise

PROMPT = "a photo of a cat in snow"
SEED, STEPS, GUIDANCE = 77, 4, 3.5


def _loaders(g: Graph, how: str):
    if how == "folder":
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_flux_dev")
        return ck.out(0), ck.out(1), ck.out(2)
    unet = g.node("UNETLoader", unet_name="tiny_flux_dev.safetensors", weight_dtype="default")
    clip = g.node("DualCLIPLoader", clip_name1="tiny_t5xxl.safetensors", clip_name2="tiny_clip_l.safetensors",
                  type="flux")
    vae = g.node("VAELoader", vae_name="tiny_flux_ae.safetensors")
    return unet.out(0), clip.out(0), vae.out(0)


def flux_graph(how: str, path: str, guidance: float = GUIDANCE) -> Graph:
    g = Graph()
    model, clip, vae = _loaders(g, how)
    model = g.node("ModelSamplingFlux", model=model, max_shift=1.15, base_shift=0.5, width=64, height=64).out(0)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    if path == "ksampler":
        pos = g.node("CLIPTextEncodeFlux", clip=clip, clip_l=PROMPT, t5xxl=PROMPT, guidance=guidance)
        neg = g.node("CLIPTextEncode", text="", clip=clip)
        samples = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler",
                         scheduler="simple", positive=pos, negative=neg, latent_image=lat, denoise=1.0).out(0)
    else:  # ComfyUI's flux_dev template
        text = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
        cond = g.node("FluxGuidance", conditioning=text, guidance=guidance)
        guider = g.node("BasicGuider", model=model, conditioning=cond)
        noise = g.node("RandomNoise", noise_seed=SEED)
        sampler = g.node("KSamplerSelect", sampler_name="euler")
        sigmas = g.node("BasicScheduler", model=model, scheduler="simple", steps=STEPS, denoise=1.0)
        samples = g.node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                         latent_image=lat).out(0)
    dec = g.node("VAEDecode", "out", samples=samples, vae=vae)
    g.node("PreviewAny", source=dec)
    return g


def reference(tiny, guidance: float = GUIDANCE) -> torch.Tensor:
    from diffusers import FluxPipeline

    pipe = tiny.flux_pipeline(FluxPipeline)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        image = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=guidance, latents=pack_latents(noise),
                     height=64, width=64, max_sequence_length=256, output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize("how,path", [("files", "ksampler"), ("files", "custom"), ("folder", "custom")])
def test_flux_dev_txt2img_matches_pipeline(flow_engine, tiny_flux, how, path):
    image = flow_engine.run(flux_graph(how, path)).raise_for_status().value("out")
    ref = reference(tiny_flux)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def test_flux_guidance_value_reaches_the_model(flow_engine, tiny_flux):
    image = flow_engine.run(flux_graph("files", "custom", guidance=1.5)).raise_for_status().value("out")
    assert torch.allclose(image, reference(tiny_flux, guidance=1.5), atol=1e-4)
    assert not torch.allclose(image, reference(tiny_flux), atol=1e-3)
