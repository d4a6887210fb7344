"""WanFunInpaintToVideo (Wan Fun InP models: start and end frames) with a 36-channel tiny Wan transformer
equals diffusers' WanImageToVideoPipeline with ``last_image`` (1e-4), as WanFirstLastFrameToVideo does; the
official ``video_wan2_2_14B_fun_inpaint`` template (two experts, lightx2v LoRAs in Wan's original names) runs
on tiny files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.tiny_wan import build_wan
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT = "a red fox running in snow"
SEED, STEPS, CFG, SHIFT = 19, 3, 4.0, 5.0
WIDTH, HEIGHT, LENGTH = 32, 32, 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_wan(tmp_path_factory.mktemp("wan_fun_models"), shift=SHIFT)


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def images(input_dir, name: str):
    rng = np.random.default_rng(23)
    input_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for which in ("start", "end"):
        image = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")
        image.save(input_dir / f"{name}_{which}_image.png")
        out.append(image)
    return out


def test_wan_fun_inpaint_matches_pipeline(engine, tiny):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline

    start, end = images(engine.paths.input_dir, "fun")
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_wan_i2v.safetensors", weight_dtype="default").out(0)
    model = g.node("ModelSamplingSD3", model=model, shift=SHIFT).out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    fun = g.node("WanFunInpaintToVideo", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT,
                 length=LENGTH, batch_size=1, start_image=g.node("LoadImage", image="fun_start_image.png").out(0),
                 end_image=g.node("LoadImage", image="fun_end_image.png").out(0))
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal",
                positive=fun.out(0), negative=fun.out(1), latent_image=fun.out(2), denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    out = engine.run(g).raise_for_status().value("out")

    pipe = WanImageToVideoPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder,
                                   transformer=tiny.i2v_transformer, vae=tiny.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    pipe.set_progress_bar_config(disable=True)
    text = WanPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, transformer=None, vae=None,
                       scheduler=None)
    noise, _ = engine_noise((1, 16, (LENGTH - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8), SEED)
    with torch.no_grad():
        embeds, negative = text.encode_prompt(PROMPT, negative_prompt="", max_sequence_length=512)
        video = pipe(image=start, last_image=end, prompt_embeds=embeds, negative_prompt_embeds=negative,
                     height=HEIGHT, width=WIDTH, num_frames=LENGTH, num_inference_steps=STEPS, guidance_scale=CFG,
                     latents=noise, output_type="pt").frames
    ref = video[0].permute(0, 2, 3, 1).float()
    assert out.shape == ref.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


def test_comfy_wan22_fun_inpaint_template_runs(engine, tiny):
    """ComfyUI's ``video_wan2_2_14B_fun_inpaint`` template (the installed comfyui_workflow_templates_json package,
    MIT) on the tiny 36-channel model under both experts' names, with tiny lightx2v LoRAs in Wan's original names.
    Made smaller: WanFunInpaintToVideo 32×32, 5 frames; the template's 4 steps are kept."""
    import json

    import av

    from nodegraph.workflow.loader import load_workflow_data

    from tests.dit.test_wan_vace import write_original_lora
    from tests.dit.tiny_qwen import copy_as
    from tests.helpers.package_templates import check_templates, package_templates

    name = "video_wan2_2_14B_fun_inpaint"
    for noise in ("high", "low"):
        copy_as(tiny.root, {"diffusion_models/tiny_wan_i2v.safetensors":
                            f"diffusion_models/wan2.2_fun_inpaint_{noise}_noise_14B_fp8_scaled.safetensors"})
        loras = tiny.root / "models" / "loras"
        loras.mkdir(exist_ok=True)
        write_original_lora(tiny.i2v_transformer, loras / f"wan2.2_i2v_lightx2v_4steps_lora_v1_{noise}_noise.safetensors")
    copy_as(tiny.root, {"text_encoders/tiny_umt5_xxl.safetensors": "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                        "vae/tiny_wan_2.1_vae.safetensors": "vae/wan_2.1_vae.safetensors"})
    images(engine.paths.input_dir, name)
    path = package_templates(lambda n: n == f"{name}.json")[0]
    assert check_templates([path], engine.registry).clean == [path.name]
    api = load_workflow_data(json.loads(path.read_text()), engine.registry).api
    for n in api.values():
        if n["class_type"] == "WanFunInpaintToVideo":
            n["inputs"].update(width=WIDTH, height=HEIGHT, length=LENGTH)
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert executed.count("KSamplerAdvanced") == 2 and executed.count("LoraLoaderModelOnly") == 2
    assert "WanFunInpaintToVideo" in executed
    saved = list(engine.paths.output_dir.rglob("*.mp4"))
    assert len(saved) == 1
    with av.open(str(saved[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == LENGTH
