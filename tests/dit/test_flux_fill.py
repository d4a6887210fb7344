"""Flux Fill: InpaintModelConditioning on a Fill transformer (image + mask channels) equals diffusers'
FluxFillPipeline on the same tiny weights, image, mask, seed, steps and guidance. ComfyUI encodes with
the latent distribution's mean; the pipeline samples it, so the reference is run with the mean."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph

from nodegraph_nodes.dit.model import FlowModel, pack_latents
from tests.dit.tiny_flow import _contig, flux_to_bfl, flux_transformer
from tests.helpers.noise import engine_noise

PROMPT = "a cat"
SEED, STEPS, GUIDANCE = 21, 4, 30.0


def test_flux_fill_matches_flux_fill_pipeline(flow_engine, flow_root, tiny_flux, monkeypatch):
    from diffusers import FluxFillPipeline
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from PIL import Image

    net = flux_transformer(in_channels=384)
    save_file(_contig(flux_to_bfl(net)), str(flow_root / "models" / "diffusion_models" / "tiny_flux_fill.safetensors"))
    flow_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    rgba = np.concatenate([rng.integers(0, 255, (64, 64, 3)), np.full((64, 64, 1), 255)], axis=-1).astype(np.uint8)
    rgba[16:48, 8:40, 3] = 0  # transparent = masked (LoadImage's MASK is 1 - alpha)
    Image.fromarray(rgba, "RGBA").save(flow_engine.paths.input_dir / "fill.png")

    g = Graph()
    unet = g.node("UNETLoader", "unet", unet_name="tiny_flux_fill.safetensors", weight_dtype="default")
    model = g.node("ModelSamplingFlux", model=unet, max_shift=1.15, base_shift=0.5, width=64, height=64)
    clip = g.node("DualCLIPLoader", clip_name1="tiny_clip_l.safetensors", clip_name2="tiny_t5xxl.safetensors",
                  type="flux")
    vae = g.node("VAELoader", vae_name="tiny_flux_ae.safetensors")
    image = g.node("LoadImage", image="fill.png")
    pos = g.node("FluxGuidance", conditioning=g.node("CLIPTextEncode", text=PROMPT, clip=clip), guidance=GUIDANCE)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    inpaint = g.node("InpaintModelConditioning", positive=pos, negative=neg, vae=vae, pixels=image.out(0),
                     mask=image.out(1), noise_mask=False)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=inpaint.out(0), negative=inpaint.out(1), latent_image=inpaint.out(2), denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    result = flow_engine.run(g).raise_for_status()
    assert isinstance(result.value("unet"), FlowModel)

    pixels = torch.from_numpy(rgba[..., :3]).float().permute(2, 0, 1)[None] / 255
    mask = torch.from_numpy(rgba[..., 3] == 0).float()[None, None]
    pipe = tiny_flux.flux_pipeline(FluxFillPipeline, net)
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        ref = pipe(PROMPT, image=pixels, mask_image=mask, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                   latents=pack_latents(noise), height=64, width=64, max_sequence_length=256,
                   output_type="pt").images.permute(0, 2, 3, 1)
    out = result.value("out")
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


def test_flux_control_model_matches_flux_control_pipeline(flow_engine, flow_root, tiny_flux, monkeypatch):
    """Flux.1 Canny/Depth models (128 input channels): InstructPixToPixConditioning's image latent as the
    extra channels, as ComfyUI's flux_canny_model_example does, equals diffusers' FluxControlPipeline."""
    from diffusers import FluxControlPipeline
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from PIL import Image

    net = flux_transformer(in_channels=128)
    save_file(_contig(flux_to_bfl(net)), str(flow_root / "models" / "diffusion_models" / "tiny_flux_canny.safetensors"))
    flow_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(5).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(flow_engine.paths.input_dir / "control.png")
    g = Graph()
    unet = g.node("UNETLoader", unet_name="tiny_flux_canny.safetensors", weight_dtype="default")
    model = g.node("ModelSamplingFlux", model=unet, max_shift=1.15, base_shift=0.5, width=64, height=64)
    clip = g.node("DualCLIPLoader", clip_name1="tiny_clip_l.safetensors", clip_name2="tiny_t5xxl.safetensors",
                  type="flux")
    vae = g.node("VAELoader", vae_name="tiny_flux_ae.safetensors")
    text = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    pos = g.node("FluxGuidance", conditioning=text, guidance=GUIDANCE)
    control = g.node("InstructPixToPixConditioning", positive=pos, negative=g.node("ConditioningZeroOut", conditioning=text),
                     vae=vae, pixels=g.node("LoadImage", image="control.png").out(0))
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=control.out(0), negative=control.out(1), latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    out = flow_engine.run(g).raise_for_status().value("out")

    pipe = tiny_flux.flux_pipeline(FluxControlPipeline, net)
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        # a tensor control image is taken as already normalised ([-1, 1]) by this pipeline
        ref = pipe(PROMPT, control_image=torch.from_numpy(rgb).float().permute(2, 0, 1)[None] / 255 * 2 - 1,
                   num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=pack_latents(noise), height=64,
                   width=64, max_sequence_length=256, output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
