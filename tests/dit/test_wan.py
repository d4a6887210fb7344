"""Wan 2.1 text-to-video through ComfyUI's nodes (EmptyHunyuanLatentVideo → KSampler → VAEDecode →
CreateVideo → SaveVideo) equals diffusers' WanPipeline on the same tiny weights, seed, steps, guidance and
shift — from ComfyUI's split files (UNETLoader with Wan's original names, CLIPLoader type wan, VAELoader
with Wan's VAE layout) and from the diffusers folder (CheckpointLoaderSimple)."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.template_runs import fewer_sampler_steps, saved_video_frames, set_inputs, template_api
from tests.dit.tiny_wan import build_wan, template_files
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT = "a red fox running in snow"
SEED, STEPS, CFG, SHIFT = 11, 3, 4.0, 5.0
WIDTH, HEIGHT, LENGTH = 32, 32, 5  # latent [1, 16, 2, 4, 4]


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    return build_wan(tmp_path_factory.mktemp("wan_models"), shift=SHIFT)


@pytest.fixture
def wan_engine(tiny_wan, tmp_path):
    eng = make_engine(tiny_wan.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def wan_graph(how: str, prompt: str = PROMPT, shift: float | None = SHIFT, save: bool = False) -> Graph:
    g = Graph()
    if how == "files":
        model = g.node("UNETLoader", unet_name="tiny_wan2.1_t2v.safetensors", weight_dtype="default").out(0)
        clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
        vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    else:
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_wan")
        model, clip, vae = ck.out(0), ck.out(1), ck.out(2)
    if shift is not None:
        model = g.node("ModelSamplingSD3", model=model, shift=shift).out(0)
    pos = g.node("CLIPTextEncode", text=prompt, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    lat = g.node("EmptyHunyuanLatentVideo", width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
    g.node("PreviewAny", source=dec)
    if save:
        video = g.node("CreateVideo", images=dec, fps=8.0)
        g.node("SaveVideo", "save", video=video, filename_prefix="wan/tiny", format="mp4", **{"format.codec": "h264"})
    return g


def reference(tiny, prompt: str = PROMPT, shift: float = SHIFT) -> torch.Tensor:
    """WanPipeline's frames ``[F, H, W, 3]`` from the engine's starting noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, transformer=tiny.transformer,
                       vae=tiny.vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, (LENGTH - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8), SEED)
    with torch.no_grad():
        video = pipe(prompt, negative_prompt="", height=HEIGHT, width=WIDTH, num_frames=LENGTH,
                     num_inference_steps=STEPS, guidance_scale=CFG, latents=noise, max_sequence_length=512,
                     output_type="pt").frames
    return video[0].permute(0, 2, 3, 1).float()


def test_empty_video_latent_and_trim(wan_engine):
    g = Graph()
    lat = g.node("EmptyHunyuanLatentVideo", "lat", width=48, height=32, length=9, batch_size=2)
    trim = g.node("TrimVideoLatent", "trim", samples=lat, trim_amount=1)
    g.node("PreviewAny", source=lat)
    g.node("PreviewAny", source=trim)
    result = wan_engine.run(g).raise_for_status()
    assert result.value("lat")["samples"].shape == (2, 16, 3, 4, 6)
    assert result.value("trim")["samples"].shape == (2, 16, 2, 4, 6)


@pytest.mark.parametrize("how", ["files", "folder"])
def test_wan_t2v_matches_pipeline(wan_engine, tiny_wan, how):
    frames = wan_engine.run(wan_graph(how)).raise_for_status().value("out")
    ref = reference(tiny_wan)
    assert frames.shape == ref.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(frames, ref, atol=1e-4), (frames - ref).abs().max()
    assert frames.std() > 0.01
    assert not torch.allclose(frames[0], frames[-1], atol=1e-3)


def test_wan_prompt_and_shift_reach_the_model_and_video_saves(wan_engine, tiny_wan):
    base = wan_engine.run(wan_graph("files", save=True)).raise_for_status()
    other_prompt = wan_engine.run(wan_graph("files", prompt="blue sky")).raise_for_status().value("out")
    default_shift = wan_engine.run(wan_graph("files", shift=None)).raise_for_status().value("out")
    assert not torch.allclose(base.value("out"), other_prompt, atol=1e-3)
    assert torch.allclose(default_shift, reference(tiny_wan, shift=8.0), atol=1e-4)  # ComfyUI's default shift 8
    saved = list((wan_engine.paths.output_dir / "wan").glob("tiny*.mp4"))
    assert len(saved) == 1

    import av

    with av.open(str(saved[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == LENGTH


def test_comfy_text_to_video_wan_template_runs(wan_engine, tiny_wan):
    """ComfyUI's official ``text_to_video_wan`` template (tests/data/comfy_templates_dit, MIT) on the tiny
    model saved under its file names; only the latent (32×32, 5 frames instead of 832×480, 33) and the steps
    (4 instead of 30) are made smaller."""
    import av

    template_files(tiny_wan.root, {"wan2.1_t2v_1.3B_fp16.safetensors": "tiny_wan2.1_t2v.safetensors"})
    api = template_api("text_to_video_wan", wan_engine.registry)
    kinds = {n["class_type"] for n in api.values()}
    assert {"UNETLoader", "CLIPLoader", "EmptyHunyuanLatentVideo", "ModelSamplingSD3", "CreateVideo", "SaveVideo"} <= kinds
    for n in api.values():
        if n["class_type"] == "EmptyHunyuanLatentVideo":
            n["inputs"].update(width=WIDTH, height=HEIGHT, length=LENGTH)
        if n["class_type"] == "KSampler":
            n["inputs"]["steps"] = 4
    result = wan_engine.run(api).raise_for_status()
    assert all(n in result.executed for n in api)
    saved = list(wan_engine.paths.output_dir.rglob("*.mp4"))
    assert len(saved) == 1
    with av.open(str(saved[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == LENGTH and frames[0].shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("last", [False, True], ids=["WanImageToVideo", "WanFirstLastFrameToVideo"])
def test_wan_image_to_video_matches_pipeline(wan_engine, tiny_wan, last):
    """WanImageToVideo (start image → gray frames → VAE latent + mask as extra channels) and
    WanFirstLastFrameToVideo (start and end images) with a 36-channel transformer equal
    WanImageToVideoPipeline (no image encoder: Wan 2.2 A14B style; ``last_image``) to 1e-4."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from PIL import Image

    rng = np.random.default_rng(3)
    start = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")
    end = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")
    (wan_engine.paths.input_dir).mkdir(parents=True, exist_ok=True)
    start.save(wan_engine.paths.input_dir / "start.png")
    end.save(wan_engine.paths.input_dir / "end.png")
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_wan_i2v.safetensors", weight_dtype="default").out(0)
    model = g.node("ModelSamplingSD3", model=model, shift=SHIFT).out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    image = g.node("LoadImage", image="start.png").out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    if last:
        i2v = g.node("WanFirstLastFrameToVideo", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT,
                     length=LENGTH, batch_size=1, start_image=image, end_image=g.node("LoadImage", image="end.png").out(0))
    else:
        i2v = g.node("WanImageToVideo", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT,
                     length=LENGTH, batch_size=1, start_image=image)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal",
                positive=i2v.out(0), negative=i2v.out(1), latent_image=i2v.out(2), denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
    g.node("PreviewAny", source=dec)
    frames = wan_engine.run(g).raise_for_status().value("out")

    pipe = WanImageToVideoPipeline(tokenizer=tiny_wan.tokenizer, text_encoder=tiny_wan.text_encoder,
                                   transformer=tiny_wan.i2v_transformer, vae=tiny_wan.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, (LENGTH - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8), SEED)
    from diffusers import WanPipeline

    text = WanPipeline(tokenizer=tiny_wan.tokenizer, text_encoder=tiny_wan.text_encoder, transformer=None, vae=None,
                       scheduler=None)  # the i2v pipeline's prompt cleaning needs ftfy; the encoding is the same
    with torch.no_grad():
        embeds, negative_embeds = text.encode_prompt(PROMPT, negative_prompt="", max_sequence_length=512)
        video = pipe(image=start, last_image=end if last else None, prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, height=HEIGHT,
                     width=WIDTH, num_frames=LENGTH,
                     num_inference_steps=STEPS, guidance_scale=CFG, latents=noise, max_sequence_length=512,
                     output_type="pt").frames
    ref = video[0].permute(0, 2, 3, 1).float()
    assert frames.shape == ref.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(frames, ref, atol=1e-4), (frames - ref).abs().max()
    assert not torch.allclose(frames, wan_engine.run(wan_graph("files")).raise_for_status().value("out"), atol=1e-2)


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_comfy_wan22_14b_templates_run(wan_engine, tiny_wan, kind):
    """ComfyUI's official ``video_wan2_2_14B_t2v`` / ``_i2v`` templates (two experts: high-noise steps 0–2 and
    low-noise steps 2–4 through KSamplerAdvanced; tests/data/comfy_templates_dit, MIT) on the tiny models saved
    under their file names. Their lightx2v LoRA path is switched off, so the LoRA files are placeholders that
    only satisfy validation. Made smaller: the latent (32×32, 5 frames) and the 20 steps (4)."""
    import shutil

    import numpy as np
    from PIL import Image

    net = "tiny_wan2.1_t2v" if kind == "t2v" else "tiny_wan_i2v"
    lora = "lora_v1.1" if kind == "t2v" else "lora_v1"
    template_files(tiny_wan.root, {f"wan2.2_{kind}_{noise}_noise_14B_fp8_scaled.safetensors": f"{net}.safetensors"
                                   for noise in ("high", "low")})
    models = tiny_wan.root / "models"
    (models / "loras").mkdir(exist_ok=True)
    for noise in ("high", "low"):
        shutil.copyfile(models / "vae" / "tiny_wan_2.1_vae.safetensors",
                        models / "loras" / f"wan2.2_{kind}_lightx2v_4steps_{lora}_{noise}_noise.safetensors")
    wan_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 40, 3), dtype=np.uint8), "RGB").save(
        wan_engine.paths.input_dir / "video_wan2_2_14B_i2v_input_image.jpg")
    api = template_api(f"video_wan2_2_14B_{kind}", wan_engine.registry)
    for n in api.values():
        if n["class_type"] in ("EmptyHunyuanLatentVideo", "WanImageToVideo"):
            n["inputs"].update(width=WIDTH, height=HEIGHT, length=LENGTH)
        if n["class_type"] == "PrimitiveInt" and n["inputs"].get("value") == 20:
            n["inputs"]["value"] = 4
    result = wan_engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert executed.count("UNETLoader") == 2 and executed.count("KSamplerAdvanced") == 2
    assert "LoraLoaderModelOnly" not in executed
    assert ("WanImageToVideo" in executed) == (kind == "i2v")
    assert saved_video_frames(wan_engine.paths.output_dir) == LENGTH


@pytest.mark.parametrize("flf", [False, True], ids=["i2v", "flf2v"])
def test_wan21_image_to_video_with_clip_vision_matches_pipeline(wan_engine, tiny_wan, flf):
    """Wan 2.1 I2V (an image embedder): CLIPVisionLoader → CLIPVisionEncode → WanImageToVideo's
    clip_vision_output reaches the transformer; Wan 2.1 FLF2V: WanFirstLastFrameToVideo with both images' CLIP
    vision outputs. Equal WanImageToVideoPipeline (``last_image``) given the same CLIP vision states (its own
    CLIP preprocessing is PIL's, ComfyUI's is on tensors) to 1e-4."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline
    from PIL import Image

    start = Image.fromarray(np.random.default_rng(9).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")
    wan_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    start.save(wan_engine.paths.input_dir / "start21.png")
    end = Image.fromarray(np.random.default_rng(10).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")
    end.save(wan_engine.paths.input_dir / "end21.png")
    net_file = "tiny_wan21_flf2v.safetensors" if flf else "tiny_wan21_i2v.safetensors"

    def graph(with_vision: bool) -> Graph:
        g = Graph()
        model = g.node("UNETLoader", unet_name=net_file, weight_dtype="default").out(0)
        model = g.node("ModelSamplingSD3", model=model, shift=SHIFT).out(0)
        clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
        vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
        image = g.node("LoadImage", image="start21.png").out(0)
        extra = {}
        if with_vision:
            vision = g.node("CLIPVisionLoader", clip_name="tiny_clip_vision").out(0)
            extra["clip_vision_output"] = g.node("CLIPVisionEncode", "cv", clip_vision=vision, image=image,
                                                 crop="none").out(0)
            g.node("PreviewAny", source=extra["clip_vision_output"])
        pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
        neg = g.node("CLIPTextEncode", text="", clip=clip)
        if flf:
            end_image = g.node("LoadImage", image="end21.png").out(0)
            if with_vision:
                extra = {"clip_vision_start_image": extra["clip_vision_output"],
                         "clip_vision_end_image": g.node("CLIPVisionEncode", "cv_end", clip_vision=vision,
                                                         image=end_image, crop="none").out(0)}
                g.node("PreviewAny", source=extra["clip_vision_end_image"])
            i2v = g.node("WanFirstLastFrameToVideo", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT,
                         length=LENGTH, batch_size=1, start_image=image, end_image=end_image, **extra)
        else:
            i2v = g.node("WanImageToVideo", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT,
                         length=LENGTH, batch_size=1, start_image=image, **extra)
        ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                    scheduler="normal", positive=i2v.out(0), negative=i2v.out(1), latent_image=i2v.out(2), denoise=1.0)
        dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
        g.node("PreviewAny", source=dec)
        return g

    result = wan_engine.run(graph(True)).raise_for_status()
    frames, vision = result.value("out"), result.value("cv").penultimate_hidden_states
    if flf:
        vision = torch.cat([vision, result.value("cv_end").penultimate_hidden_states])  # the pipeline's two rows
    failed = wan_engine.run(graph(False))
    assert failed.status == "error" and "clip_vision" in str(failed.failure)

    pipe = WanImageToVideoPipeline(tokenizer=tiny_wan.tokenizer, text_encoder=tiny_wan.text_encoder,
                                   transformer=tiny_wan.flf21_transformer if flf else tiny_wan.i2v21_transformer,
                                   vae=tiny_wan.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    pipe.set_progress_bar_config(disable=True)
    pipe.encode_image = lambda image, device: vision.to(device)
    text = WanPipeline(tokenizer=tiny_wan.tokenizer, text_encoder=tiny_wan.text_encoder, transformer=None, vae=None,
                       scheduler=None)
    noise, _ = engine_noise((1, 16, (LENGTH - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8), SEED)
    with torch.no_grad():
        embeds, negative_embeds = text.encode_prompt(PROMPT, negative_prompt="", max_sequence_length=512)
        video = pipe(image=start, last_image=end if flf else None, prompt_embeds=embeds,
                     negative_prompt_embeds=negative_embeds, height=HEIGHT, width=WIDTH, num_frames=LENGTH,
                     num_inference_steps=STEPS, guidance_scale=CFG, latents=noise, max_sequence_length=512,
                     output_type="pt").frames
    ref = video[0].permute(0, 2, 3, 1).float()
    assert frames.shape == ref.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(frames, ref, atol=1e-4), (frames - ref).abs().max()


def test_comfy_image_to_video_wan_template_runs(wan_engine, tiny_wan):
    """ComfyUI's official ``image_to_video_wan`` template (Wan 2.1 I2V with CLIP vision H;
    tests/data/comfy_templates_dit, MIT) on the tiny models under its file names (the tiny CLIP vision tower
    as one ComfyUI-style file). Made smaller: WanImageToVideo 32×32, 5 frames; 4 steps instead of 20."""
    import numpy as np
    from PIL import Image

    template_files(tiny_wan.root, {"wan2.1_i2v_480p_14B_fp16.safetensors": "tiny_wan21_i2v.safetensors"},
                   clip_vision=True)
    wan_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB").save(
        wan_engine.paths.input_dir / "image_to_video_wan_start_image.png")
    api = template_api("image_to_video_wan", wan_engine.registry)
    for n in api.values():
        if n["class_type"] == "WanImageToVideo":
            n["inputs"].update(width=WIDTH, height=HEIGHT, length=LENGTH)
        if n["class_type"] == "KSampler":
            n["inputs"]["steps"] = 4
    result = wan_engine.run(api).raise_for_status()
    executed = {api[n]["class_type"] for n in result.executed}
    assert {"CLIPVisionLoader", "CLIPVisionEncode", "WanImageToVideo", "SaveVideo"} <= executed
    assert saved_video_frames(wan_engine.paths.output_dir) == LENGTH


FLF_TEMPLATES = {
    "wan2.1_flf2v_720_f16": {"tiny_wan21_flf2v": ["wan2.1_flf2v_720p_14B_fp16"]},
    "video_wan2_2_14B_flf2v": {"tiny_wan_i2v": ["wan2.2_i2v_high_noise_14B_fp8_scaled",
                                                "wan2.2_i2v_low_noise_14B_fp8_scaled"]},
}


@pytest.mark.parametrize("name", sorted(FLF_TEMPLATES))
def test_comfy_wan_first_last_frame_templates_run(wan_engine, tiny_wan, name):
    """ComfyUI's official ``wan2.1_flf2v_720_f16`` (Wan 2.1 FLF2V with both images' CLIP vision H) and
    ``video_wan2_2_14B_flf2v`` (two experts through KSamplerAdvanced) templates (tests/data/comfy_templates_dit,
    MIT) on the tiny models under their file names. Made smaller: WanFirstLastFrameToVideo 32×32, 5 frames;
    4 steps (the 2.2 template's expert switch moved from step 10 to 2)."""
    import numpy as np
    from PIL import Image

    template_files(tiny_wan.root, {f"{dst}.safetensors": f"{src}.safetensors"
                                   for src, names in FLF_TEMPLATES[name].items() for dst in names}, clip_vision=True)
    wan_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for which in ("start", "end"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB").save(
            wan_engine.paths.input_dir / f"{name}_{which}_image.png")
    api = template_api(f"{name}", wan_engine.registry)
    set_inputs(api, {"WanFirstLastFrameToVideo": dict(width=WIDTH, height=HEIGHT, length=LENGTH)})
    fewer_sampler_steps(api, 4)
    result = wan_engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert "WanFirstLastFrameToVideo" in executed and "SaveVideo" in executed
    assert ("CLIPVisionEncode" in executed) == (name == "wan2.1_flf2v_720_f16")
    assert saved_video_frames(wan_engine.paths.output_dir) == LENGTH
