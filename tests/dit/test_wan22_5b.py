"""Wan 2.2 TI2V 5B through ComfyUI's nodes (UNETLoader, CLIPLoader type wan, VAELoader on the 48-channel Wan
2.2 VAE in Wan's original names, Wan22ImageToVideoLatent → KSampler → VAEDecode) equals diffusers' WanPipeline
(text-to-video) and WanImageToVideoPipeline (with a start image) with ``expand_timesteps`` on the same tiny
weights, seed, steps, guidance and shift (1e-4); the official ``video_wan2_2_5B_ti2v`` template runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.template_runs import package_template_api, saved_video_frames, set_inputs
from tests.dit.tiny_wan import flf_reference, wan_inputs
from tests.dit.tiny_wan22 import NET_FILE, VAE_FILE, build_wan22
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT = "a red fox running in snow"
SEED, STEPS, CFG, SHIFT = 17, 3, 4.0, 5.0
WIDTH, HEIGHT, LENGTH = 64, 64, 5  # latent [1, 48, 2, 4, 4]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_wan22(tmp_path_factory.mktemp("wan22_models"))


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def graph(start: bool) -> Graph:
    g = Graph()
    model, vae, pos, neg = wan_inputs(g, NET_FILE, VAE_FILE, PROMPT, SHIFT)
    extra = {"start_image": g.node("LoadImage", image="start.png").out(0)} if start else {}
    lat = g.node("Wan22ImageToVideoLatent", "lat", vae=vae, width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1,
                 **extra)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    g.node("PreviewAny", source=lat)
    return g


@pytest.mark.parametrize("start", [False, True], ids=["t2v", "i2v"])
def test_wan22_5b_matches_pipeline(engine, tiny, start):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline

    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    image.save(engine.paths.input_dir / "start.png")
    result = engine.run(graph(start)).raise_for_status()
    out = result.value("out")
    latent = result.value("lat")
    assert latent["samples"].shape == (1, 48, 2, HEIGHT // 16, WIDTH // 16)
    assert ("noise_mask" in latent) == start

    noise, _ = engine_noise((1, 48, (LENGTH - 1) // 4 + 1, HEIGHT // 16, WIDTH // 16), SEED)
    sched = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    text = WanPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, transformer=None, vae=None,
                       scheduler=None)
    kwargs = dict(negative_prompt_embeds=None, height=HEIGHT, width=WIDTH, num_frames=LENGTH,
                  num_inference_steps=STEPS, guidance_scale=CFG, latents=noise, output_type="pt")
    with torch.no_grad():
        embeds, negative = text.encode_prompt(PROMPT, negative_prompt="", max_sequence_length=512)
        kwargs.update(prompt_embeds=embeds, negative_prompt_embeds=negative)
        if start:
            pipe = WanImageToVideoPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder,
                                           transformer=tiny.transformer, vae=tiny.vae, scheduler=sched,
                                           expand_timesteps=True)
            pipe.set_progress_bar_config(disable=True)
            video = pipe(image=image, **kwargs).frames
        else:
            pipe = WanPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, transformer=tiny.transformer,
                               vae=tiny.vae, scheduler=sched, expand_timesteps=True)
            pipe.set_progress_bar_config(disable=True)
            video = pipe(**kwargs).frames
    ref = video[0].permute(0, 2, 3, 1).float()
    assert out.shape == ref.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    assert out.std() > 0.01


def test_wan22_vae_round_trip_and_refusals(engine, tiny):
    """VAEEncode / VAEDecode of an image through the 48-channel VAE (1/16 size), and Wan22ImageToVideoLatent
    refusing a 16-channel VAE."""
    from nodegraph_nodes.dit.wan22_5b import WAN22

    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    image.save(engine.paths.input_dir / "img.png")
    g = Graph()
    vae = g.node("VAELoader", vae_name=VAE_FILE).out(0)
    enc = g.node("VAEEncode", "enc", pixels=g.node("LoadImage", image="img.png").out(0), vae=vae)
    g.node("PreviewAny", source=g.node("VAEDecode", "dec", samples=enc, vae=vae))
    result = engine.run(g).raise_for_status()
    assert result.value("enc")["samples"].shape[:2] == (1, 48)
    assert result.value("enc")["samples"].shape[-2:] == (HEIGHT // 16, WIDTH // 16)
    assert result.value("dec").shape == (1, HEIGHT, WIDTH, 3)
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None, :, None] * 2 - 1
        ref = tiny.vae.encode(x).latent_dist.mode()[:, :, 0]
    assert torch.allclose(result.value("enc")["samples"], ref, atol=1e-4)
    assert len(WAN22.mean) == 48


def test_comfy_wan22_5b_ti2v_template_runs(engine, tiny):
    """ComfyUI's official ``video_wan2_2_5B_ti2v`` template (the installed comfyui_workflow_templates_json
    package, MIT) on the tiny files under its names. Made smaller: the latent (64×64, 5 frames) and the steps
    (4)."""
    from tests.dit.tiny_qwen import copy_as

    copy_as(tiny.root, {f"diffusion_models/{NET_FILE}": "diffusion_models/wan2.2_ti2v_5B_fp16.safetensors",
                        "text_encoders/tiny_umt5_xxl.safetensors": "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                        f"vae/{VAE_FILE}": "vae/wan2.2_vae.safetensors"})
    api = package_template_api("video_wan2_2_5B_ti2v", engine.registry)
    set_inputs(api, {"Wan22ImageToVideoLatent": dict(width=WIDTH, height=HEIGHT, length=LENGTH),
                     "KSampler": {"steps": 4}})
    result = engine.run(api).raise_for_status()
    executed = {api[n]["class_type"] for n in result.executed}
    assert {"Wan22ImageToVideoLatent", "KSampler", "SaveVideo"} <= executed
    assert saved_video_frames(engine.paths.output_dir) == LENGTH


def test_wan22_5b_fun_inpaint_matches_pipeline(engine, tiny):
    """WanFunInpaintToVideo with the 48-channel VAE (ComfyUI's: the VAE's channels and 1/16 size) and a Fun InP
    5B transformer (100 input channels: the latent, the 4-channel mask, the start/end frames' latent) equals
    WanImageToVideoPipeline with ``last_image`` on the same weights (1e-4)."""
    from tests.dit.tiny_wan22 import FUN_FILE

    rng = np.random.default_rng(6)
    start, end = (Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB") for _ in range(2))
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    start.save(engine.paths.input_dir / "fun_start.png")
    end.save(engine.paths.input_dir / "fun_end.png")
    g = Graph()
    model, vae, pos, neg = wan_inputs(g, FUN_FILE, VAE_FILE, PROMPT, SHIFT)
    fun = g.node("WanFunInpaintToVideo", "fun", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT,
                 length=LENGTH, batch_size=1, start_image=g.node("LoadImage", image="fun_start.png").out(0),
                 end_image=g.node("LoadImage", image="fun_end.png").out(0))
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal",
                positive=fun.out(0), negative=fun.out(1), latent_image=fun.out(2), denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    result = engine.run(g).raise_for_status()
    assert result.value("fun", 2)["samples"].shape == (1, 48, 2, HEIGHT // 16, WIDTH // 16)
    out = result.value("out")

    latent = (1, 48, (LENGTH - 1) // 4 + 1, HEIGHT // 16, WIDTH // 16)
    ref = flf_reference(tiny, tiny.fun_transformer, start, end, latent, prompt=PROMPT, height=HEIGHT, width=WIDTH,
                        length=LENGTH, steps=STEPS, cfg=CFG, shift=SHIFT, seed=SEED)
    assert out.shape == ref.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


def test_comfy_wan22_5b_fun_inpaint_template_runs(engine, tiny):
    """ComfyUI's official ``video_wan2_2_5B_fun_inpaint`` template on the tiny Fun InP 5B transformer and the
    48-channel VAE under its names. Made smaller: 64×64, 5 frames, 4 steps."""
    from tests.dit.tiny_qwen import copy_as
    from tests.dit.tiny_wan22 import FUN_FILE

    name = "video_wan2_2_5B_fun_inpaint"
    copy_as(tiny.root, {f"diffusion_models/{FUN_FILE}": "diffusion_models/wan2.2_fun_inpaint_5B_bf16.safetensors",
                        "text_encoders/tiny_umt5_xxl.safetensors": "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                        f"vae/{VAE_FILE}": "vae/wan2.2_vae.safetensors"})
    rng = np.random.default_rng(7)
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    for which in ("start", "end"):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), "RGB").save(
            engine.paths.input_dir / f"{name}_{which}_image.png")
    api = package_template_api(name, engine.registry)
    set_inputs(api, {"WanFunInpaintToVideo": dict(width=WIDTH, height=HEIGHT, length=LENGTH),
                     "KSampler": {"steps": 4}})
    result = engine.run(api).raise_for_status()
    assert "WanFunInpaintToVideo" in {api[n]["class_type"] for n in result.executed}
    assert saved_video_frames(engine.paths.output_dir) == LENGTH
