"""Z-Image text-to-image through ComfyUI's nodes equals diffusers' ZImagePipeline on the same tiny
weights, seed, steps, guidance and shift — from ComfyUI's split files (UNETLoader with the NextDiT layout,
CLIPLoader type lumina2 with a Qwen3 file, VAELoader with Flux's VAE) and from the diffusers folder.

ComfyUI's cfg is the pipeline's ``guidance_scale`` + 1 (the pipeline writes pos + g·(pos − neg))."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.helpers.noise import engine_noise

PROMPT, NEGATIVE = "a photo of a cat", "blue sky"
SEED, STEPS, SHIFT = 5, 4, 3.0


def z_graph(how: str, cfg: float, shift: float | None = SHIFT) -> Graph:
    g = Graph()
    if how == "files":
        model = g.node("UNETLoader", unet_name="tiny_z_image.safetensors", weight_dtype="default").out(0)
        clip = g.node("CLIPLoader", clip_name="tiny_qwen_3.safetensors", type="lumina2").out(0)
        vae = g.node("VAELoader", vae_name="tiny_z_image_ae.safetensors").out(0)
    else:
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_z_image")
        model, clip, vae = ck.out(0), ck.out(1), ck.out(2)
    if shift is not None:
        model = g.node("ModelSamplingAuraFlow", model=model, shift=shift).out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=cfg, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
    g.node("PreviewAny", source=dec)
    return g


def reference(tiny, guidance: float, shift: float = SHIFT) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=tiny.vae,
                          text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, transformer=tiny.transformer)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=guidance,
                     latents=noise, height=64, width=64, output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize("how", ["files", "folder"])
def test_z_image_txt2img_matches_pipeline(qwen_engine, tiny_z_image, how):
    image = qwen_engine.run(z_graph(how, cfg=3.0)).raise_for_status().value("out")
    ref = reference(tiny_z_image, guidance=2.0)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def test_z_image_turbo_settings_match_pipeline(qwen_engine, tiny_z_image):
    """Turbo's template settings: cfg 1 (no negative pass) and the model's default shift 3."""
    image = qwen_engine.run(z_graph("files", cfg=1.0, shift=None)).raise_for_status().value("out")
    ref = reference(tiny_z_image, guidance=0.0)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, reference(tiny_z_image, guidance=2.0), atol=1e-3)
