"""The engine's txt2img / img2img equal diffusers' pipelines on the same weights, seed and scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.diffusion.diffusion_helpers import diffusers_pipeline, txt2img_graph
from tests.helpers.noise import engine_noise


@pytest.mark.parametrize("ckpt", ["tiny_sd15.safetensors", "tiny_sd15"])
@pytest.mark.parametrize("sampler,cls_name", [("euler", "EulerDiscreteScheduler"),
                                              ("euler_ancestral", "EulerAncestralDiscreteScheduler"),
                                              ("dpmpp_2m", "DPMSolverMultistepScheduler")])
def test_txt2img_matches_stable_diffusion_pipeline(sd_engine, tiny_sd, ckpt, sampler, cls_name):
    import diffusers

    seed, steps, cfg = 1234, 5, 7.5
    result = sd_engine.run(txt2img_graph(ckpt, "a red fox in snow", "blue sky", seed=seed, steps=steps, cfg=cfg,
                                         sampler=sampler)).raise_for_status()
    image = result.value("8")
    cls = getattr(diffusers, cls_name)
    pipe = diffusers_pipeline(tiny_sd, cls, scheduler_from_folder=not ckpt.endswith('.safetensors'))
    kwargs = {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True} if sampler == "dpmpp_2m" else {}
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **kwargs)
    pipe.scheduler.set_timesteps(steps)
    noise, generator = engine_noise((1, 4, 8, 8), seed)
    ref = pipe("a red fox in snow", negative_prompt="blue sky", num_inference_steps=steps, guidance_scale=cfg,
               latents=noise, generator=generator, height=64, width=64,
               output_type="pt").images
    ref = ref.permute(0, 2, 3, 1)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01  # not a constant picture


def test_img2img_matches_img2img_pipeline(sd_engine, tiny_sd):
    from diffusers import EulerDiscreteScheduler

    from nodegraph.builder import Graph

    sd_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(sd_engine.paths.input_dir / "in.png")
    seed, steps, denoise, cfg = 7, 4, 0.5, 6.0
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    img = g.node("LoadImage", image="in.png")
    enc = g.node("VAEEncode", pixels=img.out(0), vae=ck.out(2))
    pos = g.node("CLIPTextEncode", text="a photo of a cat", clip=ck.out(1))
    neg = g.node("CLIPTextEncode", text="", clip=ck.out(1))
    ks = g.node("KSampler", model=ck.out(0), seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
                positive=pos, negative=neg, latent_image=enc, denoise=denoise)
    dec = g.node("VAEDecode", "out", samples=ks, vae=ck.out(2))
    g.node("PreviewAny", source=dec)
    result = sd_engine.run(g).raise_for_status()
    image = result.value("out")
    pixels = result.value(img.id, 0)
    pipe = diffusers_pipeline(tiny_sd, EulerDiscreteScheduler, img2img=True)
    with torch.no_grad():
        init = tiny_sd.vae.encode(pixels.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode() * tiny_sd.vae.config.scaling_factor
    generator = torch.Generator().manual_seed(seed)
    ref = pipe("a photo of a cat", image=init, strength=denoise, num_inference_steps=int(steps / denoise),
               guidance_scale=cfg, generator=generator, output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
