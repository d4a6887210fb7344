"""SD3.5 text-to-image through ComfyUI's nodes equals diffusers' StableDiffusion3Pipeline on the same
tiny weights, seed, steps, guidance and shift — loaded from the all-in-one checkpoint, the diffusers
folder, and the separate files (UNETLoader + TripleCLIPLoader + VAELoader)."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph

from tests.helpers.noise import engine_noise

PROMPT, NEGATIVE = "a red fox in snow", "blue sky"
SEED, STEPS, CFG = 1234, 4, 4.5


def _loaders(g: Graph, how: str):
    if how == "separate":
        unet = g.node("UNETLoader", unet_name="tiny_sd35_mmdit.safetensors", weight_dtype="default")
        clip = g.node("TripleCLIPLoader", clip_name1="tiny_t5xxl.safetensors", clip_name2="tiny_clip_l.safetensors",
                      clip_name3="tiny_clip_g.safetensors")
        vae = g.node("VAELoader", vae_name="tiny_sd3_vae.safetensors")
        return unet.out(0), clip.out(0), vae.out(0)
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd35.safetensors" if how == "checkpoint" else "tiny_sd35")
    return ck.out(0), ck.out(1), ck.out(2)


def sd3_graph(how: str, sampler: str = "euler", scheduler: str = "normal", shift: float | None = None) -> Graph:
    g = Graph()
    model, clip, vae = _loaders(g, how)
    if shift is not None:
        model = g.node("ModelSamplingSD3", model=model, shift=shift).out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name=sampler, scheduler=scheduler,
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
    g.node("PreviewAny", source=dec)
    return g


def reference(tiny, shift: float = 3.0) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(transformer=tiny.transformer, vae=tiny.vae, text_encoder=tiny.text.clip_l,
                                    tokenizer=tiny.text.tokenizer, text_encoder_2=tiny.text.clip_g,
                                    tokenizer_2=tiny.text.tokenizer_2, text_encoder_3=tiny.text.t5,
                                    tokenizer_3=tiny.text.tokenizer_t5,
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG, latents=noise,
                     height=64, width=64, max_sequence_length=77, output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize("how", ["checkpoint", "folder", "separate"])
def test_sd35_txt2img_matches_pipeline(flow_engine, tiny_sd3, how):
    image = flow_engine.run(sd3_graph(how)).raise_for_status().value("out")
    ref = reference(tiny_sd3)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def test_model_sampling_sd3_shift_matches_pipeline_shift(flow_engine, tiny_sd3):
    image = flow_engine.run(sd3_graph("checkpoint", shift=6.0)).raise_for_status().value("out")
    ref = reference(tiny_sd3, shift=6.0)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, reference(tiny_sd3, shift=3.0), atol=1e-3)
