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

from tests.dit.template_runs import package_template_api, saved_video_frames, set_inputs
from tests.dit.tiny_wan import build_wan, flf_reference, template_files, wan_inputs
from tests.helpers.engines import make_engine

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
    start, end = images(engine.paths.input_dir, "fun")
    g = Graph()
    model, vae, pos, neg = wan_inputs(g, "tiny_wan_i2v.safetensors", "tiny_wan_2.1_vae.safetensors", PROMPT, SHIFT)
    fun = g.node("WanFunInpaintToVideo", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT,
                 length=LENGTH, batch_size=1, start_image=g.node("LoadImage", image="fun_start_image.png").out(0),
                 end_image=g.node("LoadImage", image="fun_end_image.png").out(0))
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal",
                positive=fun.out(0), negative=fun.out(1), latent_image=fun.out(2), denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    out = engine.run(g).raise_for_status().value("out")

    latent = (1, 16, (LENGTH - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    ref = flf_reference(tiny, tiny.i2v_transformer, start, end, latent, prompt=PROMPT, height=HEIGHT, width=WIDTH,
                        length=LENGTH, steps=STEPS, cfg=CFG, shift=SHIFT, seed=SEED)
    assert out.shape == ref.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


def test_comfy_wan22_fun_inpaint_template_runs(engine, tiny):
    """ComfyUI's ``video_wan2_2_14B_fun_inpaint`` template (the installed comfyui_workflow_templates_json package,
    MIT) on the tiny 36-channel model under both experts' names, with tiny lightx2v LoRAs in Wan's original names.
    Made smaller: WanFunInpaintToVideo 32×32, 5 frames; the template's 4 steps are kept."""
    from tests.dit.test_wan_vace import write_original_lora

    name = "video_wan2_2_14B_fun_inpaint"
    template_files(tiny.root, {f"wan2.2_fun_inpaint_{noise}_noise_14B_fp8_scaled.safetensors":
                               "tiny_wan_i2v.safetensors" for noise in ("high", "low")})
    loras = tiny.root / "models" / "loras"
    loras.mkdir(exist_ok=True)
    for noise in ("high", "low"):
        write_original_lora(tiny.i2v_transformer, loras / f"wan2.2_i2v_lightx2v_4steps_lora_v1_{noise}_noise.safetensors")
    images(engine.paths.input_dir, name)
    api = package_template_api(name, engine.registry)
    set_inputs(api, {"WanFunInpaintToVideo": dict(width=WIDTH, height=HEIGHT, length=LENGTH)})
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert executed.count("KSamplerAdvanced") == 2 and executed.count("LoraLoaderModelOnly") == 2
    assert "WanFunInpaintToVideo" in executed
    assert saved_video_frames(engine.paths.output_dir) == LENGTH
