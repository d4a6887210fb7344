"""Flux Kontext: ReferenceLatent editing equals diffusers' FluxKontextPipeline on the same tiny Flux
weights, image, seed, steps and guidance; FluxKontextImageScale's resolution choice; the reference
placement rules; the declarations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nodegraph.builder import Graph

from nodegraph_nodes.dit.kontext import reference_positions
from nodegraph_nodes.dit.model import pack_latents
from tests.helpers.noise import engine_noise

PROMPT = "a red fox in snow"
SEED, STEPS, GUIDANCE = 9, 4, 2.5


def _image(engine) -> torch.Tensor:
    from PIL import Image

    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(engine.paths.input_dir / "edit.png")
    return torch.from_numpy(np.array(Image.open(engine.paths.input_dir / "edit.png"))).float() / 255


def kontext_graph() -> Graph:
    g = Graph()
    unet = g.node("UNETLoader", unet_name="tiny_flux_dev.safetensors", weight_dtype="default")
    model = g.node("ModelSamplingFlux", model=unet, max_shift=1.15, base_shift=0.5, width=64, height=64)
    clip = g.node("DualCLIPLoader", clip_name1="tiny_clip_l.safetensors", clip_name2="tiny_t5xxl.safetensors",
                  type="flux")
    vae = g.node("VAELoader", vae_name="tiny_flux_ae.safetensors")
    image = g.node("LoadImage", image="edit.png")
    ref = g.node("VAEEncode", pixels=image.out(0), vae=vae)
    text = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    cond = g.node("FluxGuidance", conditioning=g.node("ReferenceLatent", conditioning=text, latent=ref),
                  guidance=GUIDANCE)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=cond, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
    g.node("PreviewAny", source=dec)
    return g


def test_kontext_edit_matches_flux_kontext_pipeline(flow_engine, tiny_flux):
    from diffusers import FluxKontextPipeline

    pixels = _image(flow_engine)
    image = flow_engine.run(kontext_graph()).raise_for_status().value("out")
    pipe = tiny_flux.flux_pipeline(FluxKontextPipeline)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        ref = pipe(image=pixels.permute(2, 0, 1)[None], prompt=PROMPT, num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, latents=pack_latents(noise), height=64, width=64,
                   max_sequence_length=256, _auto_resize=False, max_area=64 * 64,
                   output_type="pt").images.permute(0, 2, 3, 1)
        plain = flow_engine.run(_without_reference()).raise_for_status().value("out")
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, plain, atol=1e-3)  # the reference changed the result


def _without_reference():
    prompt = kontext_graph().to_api()
    for node in prompt.values():
        if node["class_type"] == "ReferenceLatent":
            node["inputs"].pop("latent")
    return prompt


@pytest.mark.parametrize("size,expected", [((64, 64), (1024, 1024)), ((100, 300), (672, 1568)),
                                           ((480, 640), (880, 1184))])
def test_kontext_image_scale_picks_the_closest_aspect(flow_engine, size, expected):
    from PIL import Image

    flow_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    w, h = size
    Image.new("RGB", (w, h), (200, 10, 10)).save(flow_engine.paths.input_dir / "scale.png")
    g = Graph()
    out = g.node("FluxKontextImageScale", "s", image=g.node("LoadImage", image="scale.png").out(0))
    g.node("PreviewAny", source=out)
    image = flow_engine.run(g).raise_for_status().value("s")
    assert (image.shape[2], image.shape[1]) == expected
    assert torch.allclose(image[0, 10, 10], torch.tensor([200, 10, 10]) / 255, atol=0.02)


def test_reference_positions_follow_comfyui():
    assert reference_positions("offset", (8, 8), [(8, 8)]) == [(1, 0, 0)]
    # a second square reference goes below the first (stack as wide as tall), a third to the right
    assert reference_positions("offset", (8, 8), [(8, 8), (8, 8), (4, 4)]) == [(1, 0, 0), (1, 8, 0), (1, 0, 8)]
    assert reference_positions("index", (8, 8), [(8, 8), (6, 6)]) == [(1, 0, 0), (2, 0, 0)]
    assert reference_positions("uxo", (8, 10), [(8, 8), (6, 6)]) == [(0, 8, 10), (0, 16, 18)]


def test_reference_latent_chains_and_method(flow_engine):
    g = Graph()
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    clip = g.node("DualCLIPLoader", clip_name1="tiny_clip_l.safetensors", clip_name2="tiny_t5xxl.safetensors",
                  type="flux")
    text = g.node("CLIPTextEncode", text="a", clip=clip)
    two = g.node("ReferenceLatent", conditioning=g.node("ReferenceLatent", conditioning=text, latent=lat), latent=lat)
    out = g.node("FluxKontextMultiReferenceLatentMethod", "m", conditioning=two, reference_latents_method="uxo/uno")
    g.node("PreviewAny", source=out)
    cond = flow_engine.run(g).raise_for_status().value("m")
    assert len(cond[0][1]["reference_latents"]) == 2 and cond[0][1]["reference_latents_method"] == "uxo"
