"""InpaintModelConditioning and InstructPixToPixConditioning: what they put on the conditioning, and
sampling with UNets that take extra input channels (an inpainting run equals diffusers'
``StableDiffusionInpaintPipeline`` on tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph.builder import Graph

from tests.diffusion.diffusion_helpers import diffusers_pipeline
from tests.helpers.ldm_export import clip_to_ldm, unet_to_ldm, vae_to_ldm
from tests.helpers.noise import engine_noise
from tests.helpers.tiny_sd import _randomize

PROMPT, NEGATIVE = "a photo of a cat", "blue sky"


def _checkpoint_with_unet(model_root, tiny_sd, name: str, in_channels: int):
    """A single-file SD 1.x checkpoint whose UNet takes ``in_channels`` (the tiny model's VAE and CLIP)."""
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in tiny_sd.unet.config.items() if not k.startswith("_")}
    cfg["in_channels"] = in_channels
    torch.manual_seed(11)
    unet = UNet2DConditionModel(**cfg).eval()
    assert unet.conv_in.in_channels == in_channels
    _randomize(unet)
    sd = {}
    sd.update(unet_to_ldm(unet.state_dict(), unet.config))
    sd.update(vae_to_ldm(tiny_sd.vae.state_dict(), tiny_sd.vae.config))
    sd.update(clip_to_ldm(tiny_sd.text_encoder.state_dict(), "cond_stage_model.transformer."))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(model_root / "models" / "checkpoints" / f"{name}.safetensors"))
    return unet


@pytest.fixture(scope="session")
def inpaint_unet(model_root, tiny_sd):
    return _checkpoint_with_unet(model_root, tiny_sd, "tiny_inpaint", 9)


@pytest.fixture(scope="session")
def ip2p_unet(model_root, tiny_sd):
    return _checkpoint_with_unet(model_root, tiny_sd, "tiny_ip2p", 8)


@pytest.fixture
def pictures(sd_engine):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(sd_engine.paths.input_dir / "photo.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 8:40] = 255  # on 8-pixel cells: the latent mask is exact
    Image.fromarray(mask).convert("RGB").save(sd_engine.paths.input_dir / "mask.png")
    return Image.fromarray(pixels), Image.fromarray(mask)


def inpaint_graph(ckpt="tiny_inpaint.safetensors", noise_mask=False, empty_latent=True, seed=99, steps=4, cfg=6.0):
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1))
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=ck.out(1))
    image = g.node("LoadImage", image="photo.png")
    mask = g.node("LoadImageMask", image="mask.png", channel="red")
    cond = g.node("InpaintModelConditioning", "cond", positive=pos, negative=neg, vae=ck.out(2), pixels=image.out(0),
                  mask=mask.out(0), noise_mask=noise_mask)
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1).out(0) if empty_latent else cond.out(2)
    ks = g.node("KSampler", "ks", model=ck.out(0), seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
                positive=cond.out(0), negative=cond.out(1), latent_image=latent, denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=ck.out(2))
    g.node("PreviewAny", source=dec)
    g.node("PreviewAny", source=cond.out(2))
    g.node("PreviewAny", source=ks.out(0))
    return g


def test_inpaint_model_matches_inpaint_pipeline(sd_engine, tiny_sd, inpaint_unet, pictures):
    from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline

    photo, mask = pictures
    result = sd_engine.run(inpaint_graph()).raise_for_status()
    image = result.value("out")
    base = diffusers_pipeline(tiny_sd)
    pipe = StableDiffusionInpaintPipeline(
        vae=tiny_sd.vae, text_encoder=tiny_sd.text_encoder, tokenizer=tiny_sd.tokenizer, unet=inpaint_unet,
        scheduler=EulerDiscreteScheduler.from_config(base.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    # the masked image's latent as the engine encodes it (the distribution's mode; the pipeline would sample)
    pixels = torch.from_numpy(np.asarray(photo)).float().div(255).permute(2, 0, 1)[None] * 2 - 1
    keep = torch.from_numpy(np.asarray(mask) < 128).float()[None, None]
    with torch.no_grad():
        masked = tiny_sd.vae.encode(pixels * keep).latent_dist.mode() * tiny_sd.vae.config.scaling_factor
    noise, generator = engine_noise((1, 4, 8, 8), 99)
    ref = pipe(PROMPT, image=photo, mask_image=mask, masked_image_latents=masked, negative_prompt=NEGATIVE,
               num_inference_steps=4, guidance_scale=6.0, latents=noise, generator=generator, height=64, width=64,
               strength=1.0, output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def test_inpaint_conditioning_outputs(sd_engine, tiny_sd, pictures):
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1))
    image = g.node("LoadImage", image="photo.png")
    mask = g.node("LoadImageMask", image="mask.png", channel="red")
    cond = g.node("InpaintModelConditioning", "cond", positive=pos, negative=pos, vae=ck.out(2), pixels=image.out(0),
                  mask=mask.out(0))
    plain = g.node("VAEEncode", "plain", pixels=image.out(0), vae=ck.out(2))
    for ref in (cond.out(0), cond.out(1), cond.out(2), plain.out(0)):
        g.node("PreviewAny", source=ref)
    result = sd_engine.run(g).raise_for_status()
    positive, negative, latent = (result.value("cond", i) for i in range(3))
    extras = positive[0][1]
    assert extras["concat_latent_image"].shape == (1, 4, 8, 8) and extras["concat_mask"].shape == (1, 1, 64, 64)
    assert negative[0][1]["concat_latent_image"] is extras["concat_latent_image"]
    assert torch.equal(latent["samples"], result.value("plain")["samples"])  # the unmasked image
    assert not torch.allclose(extras["concat_latent_image"], latent["samples"])  # the grayed-out one
    assert latent["noise_mask"].shape == (1, 1, 64, 64) and float(latent["noise_mask"].sum()) == 32 * 32


def test_inpaint_with_noise_mask_keeps_the_unmasked_latent(sd_engine, inpaint_unet, pictures):
    """noise_mask on (the default): sampling changes only the masked cells of the encoded image."""
    result = sd_engine.run(inpaint_graph(noise_mask=True, empty_latent=False)).raise_for_status()
    start, end = result.value("cond", 2)["samples"], result.value("ks")["samples"]
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 1:5] = True  # the mask's cells (pixels 16:48 × 8:40)
    assert torch.allclose(end[..., ~inside], start[..., ~inside], atol=1e-5)
    assert (end[..., inside] - start[..., inside]).abs().max() > 1e-2


def test_sd1_model_ignores_the_concat(sd_engine, pictures):
    """A UNet without extra input channels samples the same with or without the inpaint conditioning."""
    with_concat = sd_engine.run(inpaint_graph("tiny_sd15.safetensors")).raise_for_status().value("out")
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1))
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=ck.out(1))
    lat = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=ck.out(0), seed=99, steps=4, cfg=6.0, sampler_name="euler", scheduler="normal",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=ck.out(2)))
    plain = sd_engine.run(g).raise_for_status().value("out")
    assert torch.equal(with_concat, plain)


@pytest.mark.parametrize("custom", [False, True])
def test_instruct_pix2pix_conditioning_feeds_the_image(sd_engine, ip2p_unet, pictures, custom):
    def run(picture: str):
        g = Graph()
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_ip2p.safetensors")
        pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1))
        neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=ck.out(1))
        image = g.node("LoadImage", image=picture)
        cond = g.node("InstructPixToPixConditioning", "cond", positive=pos, negative=neg, vae=ck.out(2),
                      pixels=image.out(0))
        ks = g.node("KSampler", model=ck.out(0), seed=5, steps=3, cfg=4.0, sampler_name="euler",
                    scheduler="karras" if custom else "normal", positive=cond.out(0), negative=cond.out(1),
                    latent_image=cond.out(2), denoise=1.0)
        g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=ck.out(2)))
        g.node("PreviewAny", source=cond.out(2))
        return sd_engine.run(g).raise_for_status()

    first = run("photo.png")
    latent = first.value("cond", 2)
    assert latent["samples"].shape == (1, 4, 8, 8) and not latent["samples"].any()
    assert first.value("cond", 0)[0][1]["concat_latent_image"].shape == (1, 4, 8, 8)
    second = run("mask.png")
    assert (first.value("out") - second.value("out")).abs().max() > 1e-3


@pytest.mark.parametrize("scheduler", ["normal", "karras"])  # the diffusers-scheduler path and the core
def test_inpaint_model_takes_the_latent_and_noise_mask_without_the_conditioning(sd_engine, inpaint_unet, pictures,
                                                                                scheduler):
    """VAEEncodeForInpaint's latent and noise mask feed an inpainting UNet's extra channels (ComfyUI's
    fallback): the same pixels as InpaintModelConditioning giving them on the conditioning."""
    def run(with_conditioning: bool):
        g = Graph()
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_inpaint.safetensors")
        pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1)).out(0)
        neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=ck.out(1)).out(0)
        image = g.node("LoadImage", image="photo.png")
        mask = g.node("LoadImageMask", image="mask.png", channel="red")
        latent = g.node("VAEEncodeForInpaint", pixels=image.out(0), vae=ck.out(2), mask=mask.out(0), grow_mask_by=0)
        if with_conditioning:
            cond = g.node("InpaintModelConditioning", positive=pos, negative=neg, vae=ck.out(2), pixels=image.out(0),
                          mask=mask.out(0), noise_mask=True)
            pos, neg = cond.out(0), cond.out(1)
        ks = g.node("KSampler", model=ck.out(0), seed=4, steps=3, cfg=5.0, sampler_name="euler", scheduler=scheduler,
                    positive=pos, negative=neg, latent_image=latent, denoise=1.0)
        g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=ck.out(2)))
        return sd_engine.run(g).raise_for_status().value("out")

    assert torch.allclose(run(False), run(True), atol=1e-6)


def test_inpaint_model_with_an_area_is_a_clear_error(sd_engine, inpaint_unet, pictures):
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_inpaint.safetensors")
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1))
    area = g.node("ConditioningSetArea", conditioning=pos, width=64, height=64, x=0, y=0, strength=1.0)
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=ck.out(1))
    lat = g.node("EmptyLatentImage", width=128, height=128, batch_size=1)
    ks = g.node("KSampler", model=ck.out(0), seed=4, steps=2, cfg=5.0, sampler_name="euler", scheduler="karras",
                positive=area, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=ks.out(0))
    result = sd_engine.run(g)
    assert not result.ok and "area" in str(result.failure)
