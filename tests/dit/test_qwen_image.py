"""Qwen-Image text-to-image through ComfyUI's nodes equals diffusers' QwenImagePipeline on the same tiny
weights, seed, steps and shift — from ComfyUI's split files (UNETLoader + CLIPLoader type qwen_image +
VAELoader, Wan-layout VAE, older-layout Qwen2.5-VL) and from the diffusers folder.

The pipeline's true CFG rescales the combined prediction to the positive one's norm per patch, which
ComfyUI's KSampler does not do; the comparison runs at cfg 1 (true_cfg_scale 1, no negative). Why no
ComfyUI graph (CFGNorm included) can equal it at cfg > 1, and what KSampler / CFGNorm compute there instead:
test_qwen_true_cfg.py."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.helpers.noise import engine_noise

PROMPT = "a red fox in snow"
SEED, STEPS, SHIFT = 77, 4, 3.1


def qwen_graph(how: str, shift: float = SHIFT, prompt: str = PROMPT, batch: int = 1) -> Graph:
    g = Graph()
    if how == "files":
        model = g.node("UNETLoader", unet_name="tiny_qwen_image.safetensors", weight_dtype="default").out(0)
        clip = g.node("CLIPLoader", clip_name="tiny_qwen_2.5_vl.safetensors", type="qwen_image").out(0)
        vae = g.node("VAELoader", vae_name="tiny_qwen_image_vae.safetensors").out(0)
    else:
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_qwen_image")
        model, clip, vae = ck.out(0), ck.out(1), ck.out(2)
    model = g.node("ModelSamplingAuraFlow", model=model, shift=shift).out(0)
    pos = g.node("CLIPTextEncode", text=prompt, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=batch)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
    g.node("PreviewAny", source=dec)
    return g


def reference(tiny, shift: float = SHIFT, prompt: str = PROMPT, batch: int = 1) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=tiny.vae,
                             text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, transformer=tiny.transformer)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((batch, 16, 8, 8), SEED)
    latents = QwenImagePipeline._pack_latents(noise, batch, 16, 8, 8)
    with torch.no_grad():
        image = pipe(prompt, num_inference_steps=STEPS, true_cfg_scale=1.0, latents=latents, height=64, width=64,
                     num_images_per_prompt=batch, output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize("how", ["files", "folder"])
def test_qwen_image_txt2img_matches_pipeline(qwen_engine, tiny_qwen_image, how):
    image = qwen_engine.run(qwen_graph(how)).raise_for_status().value("out")
    ref = reference(tiny_qwen_image)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def test_qwen_image_shift_and_prompt_reach_the_model(qwen_engine, tiny_qwen_image):
    base = qwen_engine.run(qwen_graph("files")).raise_for_status().value("out")
    other_shift = qwen_engine.run(qwen_graph("files", shift=6.0)).raise_for_status().value("out")
    other_prompt = qwen_engine.run(qwen_graph("files", prompt="blue sky")).raise_for_status().value("out")
    assert not torch.allclose(base, other_shift, atol=1e-3)
    assert not torch.allclose(base, other_prompt, atol=1e-3)
    assert torch.allclose(other_shift, reference(tiny_qwen_image, shift=6.0), atol=1e-4)


def test_qwen_image_batch_matches_pipeline(qwen_engine, tiny_qwen_image):
    image = qwen_engine.run(qwen_graph("files", batch=2)).raise_for_status().value("out")
    ref = reference(tiny_qwen_image, batch=2)
    assert image.shape == ref.shape == (2, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image[0], image[1], atol=1e-3)
