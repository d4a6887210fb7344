"""Wan Fun Camera: WanCameraEmbedding's Plücker embedding (layout and values worked out by hand),
WanCameraImageToVideo's outputs, the camera adapter of the Fun transformer (its forward equals diffusers' with
the adapter's output added to the patch embedding; UNETLoader detects it in ComfyUI's layout; the camera changes
the video), and ComfyUI's official ``video_wan2.1_fun_camera_v1.1_1.3B`` and ``video_wan2_2_14B_fun_camera``
templates on tiny files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from nodegraph_nodes.dit.wan_camera import camera_embedding

from tests.dit.template_runs import fewer_sampler_steps, package_template_api, saved_video_frames, set_inputs
from tests.dit.tiny_wan import build_wan, template_files, wan_inputs
from tests.dit.tiny_wan_fun import fun_transformer, write_fun
from tests.helpers.engines import make_engine

PROMPT = "a red fox running in snow"
WIDTH, HEIGHT, LENGTH, SHIFT = 32, 32, 5, 5.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tiny = build_wan(tmp_path_factory.mktemp("wan_camera_models"), shift=SHIFT)
    models = tiny.root / "models"
    write_fun(models, "tiny_wan21_fun_camera.safetensors", "camera21")
    write_fun(models, "tiny_wan22_fun_camera.safetensors", "camera22", seed=67)
    return tiny


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def test_camera_embedding_layout_and_values():
    emb = camera_embedding("Pan Right", 16, 16, 5)
    assert emb.shape == (1, 24, 2, 16, 16)
    # latent frame 0 is the first pose four times; channel c * 4 + k is Plücker channel c of frame k
    assert torch.equal(emb[0, 0::4, 0], emb[0, 3::4, 0])
    # frame 4 of 5 (latent frame 1, k = 3): origin (4/5 · 1.5, 0, 0), no rotation; pixel (0, 0) at its centre
    fx = 16 * (1280 / 720) * 0.5 / 16 * 16  # a square video is narrower than the poses' 16:9: fx rescaled
    d = torch.tensor([(0.5 - 8) / fx, (0.5 - 8) / 8, 1.0])
    d = d / d.norm()
    ox = 4 / 5 * 1.5
    moment = torch.tensor([0.0, -ox * d[2], ox * d[1]])  # o × d
    got = emb[0, 3::4, 1, 0, 0]
    assert torch.allclose(got, torch.cat([moment, d]), atol=1e-6), got
    # a static camera has no moment; a rotation turns the rays of later frames
    static = camera_embedding("Static", 16, 16, 5)
    assert static[0, :12].abs().max() == 0 and torch.equal(static[0, 12:, 1], static[0, 12:, 0])
    cw = camera_embedding("ClockWise (CW)", 16, 16, 5)
    angle = 4 / 5 * math.pi / 3  # frame 4's roll
    rz = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    assert torch.allclose(cw[0, 15::4, 1, 0, 0], rz @ d, atol=1e-6)
    with pytest.raises(ValueError, match="1 \\+ a multiple of 4"):
        camera_embedding("Static", 16, 16, 6)


def test_camera_nodes_outputs(engine):
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB").save(
        engine.paths.input_dir / "start.png")
    g = Graph()
    _, vae, pos, neg = wan_inputs(g, "tiny_wan21_fun_camera.safetensors", "tiny_wan_2.1_vae.safetensors", PROMPT,
                                  SHIFT)
    cam = g.node("WanCameraEmbedding", "cam", camera_pose="Zoom In", width=WIDTH, height=HEIGHT, length=9)
    node = g.node("WanCameraImageToVideo", "i2v", positive=pos, negative=neg, vae=vae, width=cam.out(1),
                  height=cam.out(2), length=cam.out(3), batch_size=2, camera_conditions=cam.out(0),
                  start_image=g.node("LoadImage", image="start.png").out(0))
    g.node("PreviewAny", source=node.out(2))
    result = engine.run(g).raise_for_status()
    embedding, (positive,), latent = result.value("cam"), result.value("i2v"), result.value("i2v", 2)["samples"]
    assert [result.value("cam", i) for i in (1, 2, 3)] == [WIDTH, HEIGHT, 9]
    assert torch.equal(embedding, camera_embedding("Zoom In", WIDTH, HEIGHT, 9))
    assert latent.shape == (2, 16, 3, HEIGHT // 8, WIDTH // 8) and latent.abs().max() == 0
    extras = positive[1]
    assert extras["camera_conditions"] is not None and torch.equal(extras["camera_conditions"], embedding)
    concat, mask = extras["concat_latent_image"], extras["concat_mask"]
    assert concat.shape == (1, 16, 3, 4, 4) and mask.shape == (1, 4, 3, 4, 4)
    assert mask[:, :, 0].abs().max() == 0 and mask[:, :, 1:].min() == 1  # the start frame and the 3 after it
    from nodegraph_nodes.dit.qwen_image import WAN21

    zero = WAN21.process_out(torch.zeros(1, 16, 2, 4, 4))
    assert torch.allclose(concat[:, :, 1:], zero) and not torch.allclose(concat[:, :, :1], zero[:, :, :1])


def test_camera_adapter_forward_is_diffusers_with_the_adapter_added():
    net = fun_transformer("camera22")
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 36, 2, 4, 4, generator=g), torch.tensor([600.0])
    text, camera = torch.randn(1, 7, 32, generator=g), torch.randn(1, 24, 2, 32, 32, generator=g)
    with torch.no_grad():
        ours = net(x, t, text, camera_conditions=camera, return_dict=False)[0]
        hook = net.patch_embedding.register_forward_hook(lambda _m, _a, out: out + net.control_adapter(camera))
        try:
            ref = super(type(net), net).forward(x, t, text, return_dict=False)[0]
        finally:
            hook.remove()
        plain = net(x, t, text, return_dict=False)[0]
    assert torch.equal(ours, ref) and (ours - plain).abs().max() > 1e-2


def _camera_video(engine, unet: str, pose: str, clip_vision: bool) -> torch.Tensor:
    g = Graph()
    model, vae, pos, neg = wan_inputs(g, unet, "tiny_wan_2.1_vae.safetensors", PROMPT, SHIFT)
    start = g.node("LoadImage", image="start.png").out(0)
    cam = g.node("WanCameraEmbedding", camera_pose=pose, width=WIDTH, height=HEIGHT, length=LENGTH)
    inputs = {}
    if clip_vision:
        vision = g.node("CLIPVisionLoader", clip_name="tiny_clip_vision").out(0)
        inputs["clip_vision_output"] = g.node("CLIPVisionEncode", clip_vision=vision, image=start, crop="none").out(0)
    node = g.node("WanCameraImageToVideo", positive=pos, negative=neg, vae=vae, width=cam.out(1), height=cam.out(2),
                  length=cam.out(3), batch_size=1, camera_conditions=cam.out(0), start_image=start, **inputs)
    ks = g.node("KSampler", model=model, seed=5, steps=2, cfg=4.0, sampler_name="euler", scheduler="simple",
                positive=node.out(0), negative=node.out(1), latent_image=node.out(2), denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    return engine.run(g).raise_for_status().value("out")


@pytest.mark.parametrize("unet,clip_vision", [("tiny_wan21_fun_camera.safetensors", True),
                                              ("tiny_wan22_fun_camera.safetensors", False)])
def test_fun_camera_models_follow_the_camera(engine, unet, clip_vision):
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB").save(
        engine.paths.input_dir / "start.png")
    static = _camera_video(engine, unet, "Static", clip_vision)
    pan = _camera_video(engine, unet, "Pan Left", clip_vision)
    assert static.shape == pan.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert (static - pan).abs().max() > 1e-3


def _template_files(tiny, engine, name: str, unets: dict[str, str]) -> None:
    template_files(tiny.root, unets, clip_vision=True)
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB").save(
        engine.paths.input_dir / f"{name}_start_image.jpg")


def test_comfy_wan21_fun_camera_template_runs(engine, tiny):
    """ComfyUI's ``video_wan2.1_fun_camera_v1.1_1.3B`` template (the installed comfyui_workflow_templates_json
    package, MIT) on the tiny Wan 2.1 Fun Camera model under its file name (CLIP vision H: the tiny tower).
    Made smaller: WanCameraEmbedding 32×32, 5 frames (its outputs size WanCameraImageToVideo); 2 steps."""
    name = "video_wan2.1_fun_camera_v1.1_1.3B"
    _template_files(tiny, engine, name, {"wan2.1_fun_camera_v1.1_1.3B_bf16.safetensors":
                                         "tiny_wan21_fun_camera.safetensors"})
    api = package_template_api(name, engine.registry)
    set_inputs(api, {"WanCameraEmbedding": dict(width=WIDTH, height=HEIGHT, length=LENGTH), "KSampler": dict(steps=2)})
    result = engine.run(api).raise_for_status()
    executed = {api[n]["class_type"] for n in result.executed}
    assert {"WanCameraEmbedding", "WanCameraImageToVideo", "CLIPVisionEncode", "SaveVideo"} <= executed
    assert saved_video_frames(engine.paths.output_dir) == LENGTH


def test_comfy_wan22_fun_camera_template_runs(engine, tiny):
    """ComfyUI's ``video_wan2_2_14B_fun_camera`` template (two experts through KSamplerAdvanced) on the tiny Wan
    2.2 Fun Camera model under both experts' names. Made smaller: 32×32, 5 frames; 4 steps, the expert switch
    at step 2 instead of 10."""
    name = "video_wan2_2_14B_fun_camera"
    _template_files(tiny, engine, name, {f"wan2.2_fun_camera_{noise}_noise_14B_fp8_scaled.safetensors":
                                         "tiny_wan22_fun_camera.safetensors" for noise in ("high", "low")})
    api = package_template_api(name, engine.registry)
    set_inputs(api, {"WanCameraEmbedding": dict(width=WIDTH, height=HEIGHT, length=LENGTH)})
    fewer_sampler_steps(api, 4)
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert executed.count("KSamplerAdvanced") == 2 and "WanCameraImageToVideo" in executed
    assert saved_video_frames(engine.paths.output_dir) == LENGTH
