"""ControlNet nodes: loading ComfyUI's file layouts, the hint riding on the conditioning, and the engine's
ControlNet sampling equal to diffusers' ``StableDiffusionControlNetPipeline`` on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.builder import Graph

from tests.diffusion.diffusion_helpers import diffusers_pipeline
from tests.helpers.noise import engine_noise
from tests.helpers.tiny_controlnet import build_controlnet

PROMPT, NEGATIVE = "a red fox in snow", "blue sky"


@pytest.fixture(scope="session")
def tiny_cn(model_root, tiny_sd):
    return build_controlnet(model_root, tiny_sd)


@pytest.fixture
def hint_png(sd_engine):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(sd_engine.paths.input_dir / "hint.png")
    return Image.fromarray(pixels)


def controlnet_graph(cn_name="tiny_cn.safetensors", strength=0.8, start=0.0, end=1.0, seed=1234, steps=4, cfg=7.5,
                     custom=False, old_apply=False, scheduler="normal", with_control=True, batch=1) -> Graph:
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1))
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=ck.out(1))
    positive, negative = pos.out(0), neg.out(0)
    if with_control:
        net = g.node("ControlNetLoader", control_net_name=cn_name)
        image = g.node("LoadImage", image="hint.png")
        if old_apply:
            positive = g.node("ControlNetApply", conditioning=positive, control_net=net, image=image.out(0),
                              strength=strength).out(0)
        else:
            apply = g.node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=net,
                           image=image.out(0), strength=strength, start_percent=start, end_percent=end, vae=ck.out(2))
            positive, negative = apply.out(0), apply.out(1)
    lat = g.node("EmptyLatentImage", width=64, height=64, batch_size=batch)
    if custom:
        guider = g.node("CFGGuider", model=ck.out(0), positive=positive, negative=negative, cfg=cfg)
        sigmas = g.node("BasicScheduler", model=ck.out(0), scheduler=scheduler, steps=steps, denoise=1.0)
        sampled = g.node("SamplerCustomAdvanced", noise=g.node("RandomNoise", noise_seed=seed), guider=guider,
                         sampler=g.node("KSamplerSelect", sampler_name="euler"), sigmas=sigmas, latent_image=lat)
        samples = sampled.out(0)
    else:
        samples = g.node("KSampler", model=ck.out(0), seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                         scheduler=scheduler, positive=positive, negative=negative, latent_image=lat, denoise=1.0).out(0)
    dec = g.node("VAEDecode", "out", samples=samples, vae=ck.out(2))
    g.node("PreviewAny", source=dec)
    return g


def controlnet_pipeline(tiny_sd, tiny_cn):
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline

    base = diffusers_pipeline(tiny_sd)
    return StableDiffusionControlNetPipeline(
        vae=tiny_sd.vae, text_encoder=tiny_sd.text_encoder, tokenizer=tiny_sd.tokenizer, unet=tiny_sd.unet,
        controlnet=tiny_cn.module, scheduler=EulerDiscreteScheduler.from_config(base.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def pipeline_reference(tiny_sd, tiny_cn, hint, strength=0.8, seed=1234, steps=4, cfg=7.5, batch=1):
    pipe = controlnet_pipeline(tiny_sd, tiny_cn)
    pipe.set_progress_bar_config(disable=True)
    noise, generator = engine_noise((batch, 4, 8, 8), seed)
    out = pipe(PROMPT, image=hint, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=cfg,
               num_images_per_prompt=batch,
               controlnet_conditioning_scale=strength, latents=noise, generator=generator, height=64, width=64,
               output_type="pt").images
    return out.permute(0, 2, 3, 1)


@pytest.mark.parametrize("name", ["tiny_cn.safetensors", "tiny_cn_diffusers", "tiny_cn_hf.safetensors"])
def test_controlnet_matches_diffusers_pipeline(sd_engine, tiny_sd, tiny_cn, hint_png, name):
    image = sd_engine.run(controlnet_graph(name)).raise_for_status().value("out")
    ref = pipeline_reference(tiny_sd, tiny_cn, hint_png)
    plain = sd_engine.run(controlnet_graph(with_control=False)).raise_for_status().value("out")
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert (image - plain).abs().max() > 1e-3  # the ControlNet changed the picture


def test_controlnet_batch_matches_diffusers_pipeline(sd_engine, tiny_sd, tiny_cn, hint_png):
    """A latent batch of 2 with one hint image: the hint serves every row (both CFG halves)."""
    image = sd_engine.run(controlnet_graph(batch=2)).raise_for_status().value("out")
    ref = pipeline_reference(tiny_sd, tiny_cn, hint_png, batch=2)
    assert image.shape == ref.shape == (2, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()


def controlnet_custom_graph(sigmas: str, seed=1234, cfg=7.5, strength=0.8) -> Graph:
    """SamplerCustomAdvanced (euler, CFG) over typed-in sigmas, with the ControlNet."""
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1))
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=ck.out(1))
    net = g.node("ControlNetLoader", control_net_name="tiny_cn.safetensors")
    image = g.node("LoadImage", image="hint.png")
    apply = g.node("ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=net, image=image.out(0),
                   strength=strength, start_percent=0.0, end_percent=1.0)
    guider = g.node("CFGGuider", model=ck.out(0), positive=apply.out(0), negative=apply.out(1), cfg=cfg)
    sampled = g.node("SamplerCustomAdvanced", noise=g.node("RandomNoise", noise_seed=seed), guider=guider,
                     sampler=g.node("KSamplerSelect", sampler_name="euler"),
                     sigmas=g.node("ManualSigmas", sigmas=sigmas),
                     latent_image=g.node("EmptyLatentImage", width=64, height=64, batch_size=1))
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=sampled.out(0), vae=ck.out(2)))
    return g


def test_samplercustomadvanced_matches_diffusers_pipeline(sd_engine, tiny_sd, tiny_cn, hint_png):
    """The sampling core path: SamplerCustomAdvanced (euler) equals the pipeline stepping through the same
    table timesteps (999, 749, 499, 249: the core, as ComfyUI, gives the UNet the nearest table timestep
    of a sigma, diffusers an interpolated one, so the sigmas are the table's own) from the same start."""
    pipe = controlnet_pipeline(tiny_sd, tiny_cn)
    pipe.set_progress_bar_config(disable=True)
    timesteps = [999, 749, 499, 249]
    pipe.scheduler.set_timesteps(timesteps=timesteps)
    sigmas = ", ".join(repr(float(v)) for v in pipe.scheduler.sigmas)
    image = sd_engine.run(controlnet_custom_graph(sigmas)).raise_for_status().value("out")
    noise, generator = engine_noise((1, 4, 8, 8), 1234)
    # the core starts at noise · sqrt(1 + sigma_max²) (ComfyUI's); diffusers multiplies by its init_noise_sigma
    sigma_max = float(pipe.scheduler.sigmas[0])
    noise = noise * (1 + sigma_max ** 2) ** 0.5 / float(pipe.scheduler.init_noise_sigma)
    ref = pipe(PROMPT, image=hint_png, negative_prompt=NEGATIVE, timesteps=timesteps, guidance_scale=7.5,
               controlnet_conditioning_scale=0.8, latents=noise, generator=generator, height=64, width=64,
               output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()


def test_samplercustomadvanced_applies_controlnet_like_ksampler(sd_engine, tiny_cn, hint_png):
    """The sampling core path (SamplerCustomAdvanced) gives KSampler's pixels with the ControlNet on
    (a batch of 2: the hint serves every row)."""
    custom = sd_engine.run(controlnet_graph(custom=True, scheduler="karras", batch=2)).raise_for_status().value("out")
    ksampler = sd_engine.run(controlnet_graph(scheduler="karras", batch=2)).raise_for_status().value("out")
    plain = sd_engine.run(controlnet_graph(custom=True, scheduler="karras", with_control=False, batch=2)
                          ).raise_for_status().value("out")
    assert torch.equal(custom, ksampler)
    assert (custom - plain).abs().max() > 1e-3


@pytest.mark.parametrize("custom", [False, True])
def test_controlnet_range_outside_the_schedule_is_no_control(sd_engine, tiny_cn, hint_png, custom):
    """start = end = 0: the ControlNet acts at no step, in both sampling paths."""
    scheduler = "karras" if custom else "normal"
    off = sd_engine.run(controlnet_graph(start=0.0, end=0.0, custom=custom, scheduler=scheduler)
                        ).raise_for_status().value("out")
    half = sd_engine.run(controlnet_graph(start=0.0, end=0.5, custom=custom, scheduler=scheduler)
                         ).raise_for_status().value("out")
    full = sd_engine.run(controlnet_graph(custom=custom, scheduler=scheduler)).raise_for_status().value("out")
    plain = sd_engine.run(controlnet_graph(with_control=False, custom=custom, scheduler=scheduler)
                          ).raise_for_status().value("out")
    assert torch.allclose(off, plain, atol=1e-6)
    assert (half - plain).abs().max() > 1e-4 and (half - full).abs().max() > 1e-4


def test_old_apply_also_controls_the_negative(sd_engine, tiny_sd, tiny_cn, hint_png):
    """ControlNetApply on the positive only equals the pipeline (which controls both CFG halves)."""
    image = sd_engine.run(controlnet_graph(old_apply=True)).raise_for_status().value("out")
    ref = pipeline_reference(tiny_sd, tiny_cn, hint_png)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()


def run_previewed(engine, g: Graph, names: list[str]):
    """Run ``g`` with each of the nodes ``names`` feeding a PreviewAny (so that it runs)."""
    for name in names:
        g.node("PreviewAny", source=g.lookup(name).out(0))
    return engine.run(g)


def test_old_apply_controls_the_negative_in_the_core_too(sd_engine, tiny_cn, hint_png):
    """On the sampling core path, ControlNetApply (positive only) samples like ControlNetApplyAdvanced."""
    old = sd_engine.run(controlnet_graph(old_apply=True, custom=True, scheduler="karras")).raise_for_status()
    new = sd_engine.run(controlnet_graph(custom=True, scheduler="karras")).raise_for_status()
    assert torch.allclose(old.value("out"), new.value("out"), atol=1e-6)


def test_diff_controlnet_adds_the_model_weights(sd_engine, tiny_cn):
    from nodegraph_nodes.diffusion.controlnet import ControlNet

    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    g.node("DiffControlNetLoader", "diff", model=ck.out(0), control_net_name="tiny_cn_diff.safetensors")
    g.node("ControlNetLoader", "plain", control_net_name="tiny_cn.safetensors")
    result = run_previewed(sd_engine, g, ["diff", "plain"]).raise_for_status()
    diff, plain = result.value("diff"), result.value("plain")
    assert isinstance(diff, ControlNet) and diff.family == "sd1"
    ref = tiny_cn.module.state_dict()
    got = diff.handle.get().state_dict()
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) < 1e-6
    assert plain.handle.get() is not diff.handle.get()


def test_difference_file_needs_a_model(sd_engine, tiny_cn):
    g = Graph()
    g.node("ControlNetLoader", "cn", control_net_name="tiny_cn_diff.safetensors")
    result = run_previewed(sd_engine, g, ["cn"])
    assert not result.ok and "DiffControlNetLoader" in str(result.failure)


def test_loader_lists_files_and_folders(sd_engine, tiny_cn):
    from nodegraph_nodes.diffusion.controlnet_nodes import controlnet_choices

    names = controlnet_choices(sd_engine.paths)
    assert {"tiny_cn.safetensors", "tiny_cn_diff.safetensors", "tiny_cn_diffusers", "tiny_cn_hf.safetensors"} <= set(names)
    assert not any(n.startswith("tiny_cn_diffusers/") for n in names)


def test_set_union_type_and_strength_zero(sd_engine, tiny_cn):
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1))
    net = g.node("ControlNetLoader", control_net_name="tiny_cn.safetensors")
    g.node("SetUnionControlNetType", "depth", control_net=net, type="depth")
    g.node("SetUnionControlNetType", "auto", control_net=net, type="auto")
    image = g.node("EmptyImage", width=64, height=64, batch_size=1, color=0)
    g.node("ControlNetApply", "zero", conditioning=pos, control_net=net, image=image, strength=0.0)
    g.node("ControlNetApplyAdvanced", "adv", positive=pos, negative=pos, control_net=net, image=image,
           strength=0.5, start_percent=0.2, end_percent=0.7)
    result = run_previewed(sd_engine, g, ["depth", "auto", "zero", "adv"]).raise_for_status()
    assert result.value("depth").control_type == (1,) and result.value("auto").control_type == ()
    zero = result.value("zero")
    assert "control" not in zero[0][1]
    positive, negative = result.value("adv", 0), result.value("adv", 1)
    hint = positive[0][1]["control"]
    assert hint is negative[0][1]["control"]  # one evaluation serves both lists
    assert (hint.strength, hint.start_percent, hint.end_percent) == (0.5, 0.2, 0.7)
    assert hint.image.shape == (1, 3, 64, 64) and positive[0][1]["control_apply_to_uncond"] is False


def test_not_a_controlnet_file_is_a_clear_error(sd_engine, tiny_cn):
    import shutil

    shutil.copy(sd_engine.paths.models_dir / "vae" / "tiny_vae.safetensors",
                sd_engine.paths.models_dir / "controlnet" / "not_cn.safetensors")
    g = Graph()
    g.node("ControlNetLoader", "cn", control_net_name="not_cn.safetensors")
    result = run_previewed(sd_engine, g, ["cn"])
    assert not result.ok and "not a ControlNet" in str(result.failure)


@pytest.fixture(scope="session")
def tiny_cn_xl(model_root, tiny_sdxl):
    return build_controlnet(model_root, tiny_sdxl, "tiny_cn_xl")


def sdxl_graph(loader: str | None, name: str, seed: int = 3) -> Graph:
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sdxl.safetensors")
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1))
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=ck.out(1))
    positive, negative = pos.out(0), neg.out(0)
    if loader is not None:
        inputs = {"model": ck.out(0)} if loader == "DiffControlNetLoader" else {}
        net = g.node(loader, "net", control_net_name=name, **inputs)
        image = g.node("LoadImage", image="hint.png")
        apply = g.node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=net,
                       image=image.out(0), strength=1.0, start_percent=0.0, end_percent=1.0)
        positive, negative = apply.out(0), apply.out(1)
    lat = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=ck.out(0), seed=seed, steps=3, cfg=5.0, sampler_name="euler", scheduler="karras",
                positive=positive, negative=negative, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=ck.out(2)))
    return g


def test_sdxl_controlnet_single_file_and_folder(sd_engine, tiny_sdxl, tiny_cn_xl, hint_png):
    """An SDXL ControlNet gets the text-time embeddings; the single file (whose small test-size class
    embedding does not tell its time-id width) loads through DiffControlNetLoader, which reads it off the
    MODEL, and samples like the diffusers folder."""
    folder = sd_engine.run(sdxl_graph("ControlNetLoader", "tiny_cn_xl_diffusers")).raise_for_status().value("out")
    single = sd_engine.run(sdxl_graph("DiffControlNetLoader", "tiny_cn_xl.safetensors")).raise_for_status().value("out")
    hf_keys = sd_engine.run(sdxl_graph("DiffControlNetLoader", "tiny_cn_xl_hf.safetensors")
                            ).raise_for_status().value("out")
    plain = sd_engine.run(sdxl_graph(None, "")).raise_for_status().value("out")
    assert torch.allclose(folder, single, atol=1e-5) and torch.allclose(folder, hf_keys, atol=1e-5)
    assert (folder - plain).abs().max() > 1e-3
    failed = sd_engine.run(sdxl_graph("ControlNetLoader", "tiny_cn_xl.safetensors"))
    assert not failed.ok and "time-id width" in str(failed.failure)


def test_folder_with_fp16_weights_only(sd_engine, tiny_cn):
    """A diffusers ControlNet folder that holds only ``diffusion_pytorch_model.fp16.safetensors`` loads."""
    import copy

    folder = sd_engine.paths.models_dir / "controlnet" / "tiny_cn_fp16"
    copy.deepcopy(tiny_cn.module).half().save_pretrained(str(folder), variant="fp16")
    g = Graph()
    g.node("ControlNetLoader", "cn", control_net_name="tiny_cn_fp16")
    net = run_previewed(sd_engine, g, ["cn"]).raise_for_status().value("cn")
    ref = tiny_cn.module.state_dict()
    got = net.handle.get().state_dict()
    assert max((ref[k].half().float() - got[k]).abs().max().item() for k in ref) == 0.0
