"""Wan Fun Control: WanFunControlToVideo's and Wan22FunControlToVideo's conditioning values (the control and start
latents side by side, the mask and its place, the reference latent), what the runner feeds the transformer from
them (captured at its patch embedding), the reference convolution (its forward equals diffusers' with the
reference as one more leading frame), and ComfyUI's official ``video_wan2_2_14B_fun_control`` and
``video_wan2_2_5B_fun_control`` templates on tiny files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from nodegraph_nodes.dit.qwen_image import WAN21

from tests.dit.template_runs import fewer_sampler_steps, package_template_api, saved_video_frames, set_inputs
from tests.dit.test_wan_vace import write_mp4
from tests.dit.tiny_wan import build_wan, template_files, wan_inputs
from tests.dit.tiny_wan_fun import fun_transformer, write_fun
from tests.helpers.engines import make_engine

PROMPT = "a red fox running in snow"
WIDTH, HEIGHT, LENGTH, SHIFT = 32, 32, 5, 5.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.dit.tiny_wan22 import wan22_vae, wan22_vae_original_layout

    tiny = build_wan(tmp_path_factory.mktemp("wan_fun_control_models"), shift=SHIFT)
    models = tiny.root / "models"
    write_fun(models, "tiny_wan21_fun_control.safetensors", "control21")
    write_fun(models, "tiny_wan22_fun_control.safetensors", "control22", seed=71)
    write_fun(models, "wan2.2_fun_control_5B_bf16.safetensors", "control22_5b", seed=73)
    save_file(wan22_vae_original_layout(wan22_vae().state_dict()), str(models / "vae" / "wan2.2_vae.safetensors"))
    return tiny


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny.root, tmp_path, default_registry(packs=False))
    eng.paths.input_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(21)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(image, "RGB").save(eng.paths.input_dir / "start.png")
    write_mp4(eng.paths.input_dir / "control.mp4", LENGTH)
    yield eng
    eng.close()


def _control(g):
    return g.node("GetVideoComponents", "frames", video=g.node("LoadVideo", file="control.mp4")).out(0)


def _video_latent(tiny, frames: torch.Tensor) -> torch.Tensor:
    """``frames`` ``[F, H, W, 3]`` encoded as one video by the tiny Wan 2.1 VAE (diffusers), the mean."""
    with torch.no_grad():
        x = frames[..., :3].permute(3, 0, 1, 2)[None].float() * 2 - 1
        return tiny.vae.encode(x).latent_dist.mode()


def _conditioning_run(engine, unet: str, node: str, image_input: str):
    """``node`` (``"fun"``) on the tiny ``unet``'s conditionings with start.png (LoadImage ``"start"``) as
    ``image_input`` and control.mp4's frames (``"frames"``) as the control video: the run's result and its
    positive conditioning."""
    g = Graph()
    _, vae, pos, neg = wan_inputs(g, unet, "tiny_wan_2.1_vae.safetensors", PROMPT, SHIFT)
    image, control = g.node("LoadImage", "start", image="start.png").out(0), _control(g)
    fun = g.node(node, "fun", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT, length=LENGTH,
                 batch_size=1, control_video=control, **{image_input: image})
    g.node("PreviewAny", source=fun.out(2))
    result = engine.run(g).raise_for_status()
    (positive,) = result.value("fun")
    return result, positive


def test_wan_fun_control_to_video_values(engine, tiny):
    result, positive = _conditioning_run(engine, "tiny_wan21_fun_control.safetensors", "WanFunControlToVideo",
                                         "start_image")
    concat = positive[1]["concat_latent_image"]
    assert concat.shape == (1, 32, 2, 4, 4) and "concat_mask" not in positive[1]
    assert torch.allclose(concat[:, :16], _video_latent(tiny, result.value("frames")), atol=1e-4)
    assert torch.allclose(concat[:, 16:, :1], _video_latent(tiny, result.value("start")), atol=1e-4)
    assert torch.allclose(concat[:, 16:, 1:], WAN21.process_out(torch.zeros(1, 16, 1, 4, 4)))
    assert result.value("fun", 2)["samples"].shape == (1, 16, 2, 4, 4)


def test_wan22_fun_control_to_video_values(engine, tiny):
    result, positive = _conditioning_run(engine, "tiny_wan22_fun_control.safetensors", "Wan22FunControlToVideo",
                                         "ref_image")
    extras = positive[1]
    concat, mask = extras["concat_latent_image"], extras["concat_mask"]
    assert concat.shape == (1, 32, 2, 4, 4) and mask.shape == (1, 4, 2, 4, 4) and mask.min() == 1
    assert extras["concat_mask_index"] == 16
    assert torch.allclose(concat[:, :16], _video_latent(tiny, result.value("frames")), atol=1e-4)
    assert torch.allclose(concat[:, 16:], WAN21.process_out(torch.zeros(1, 16, 2, 4, 4)))
    (reference,) = extras["reference_latents"]
    assert torch.allclose(reference, _video_latent(tiny, result.value("start")), atol=1e-4)


def _sample(engine, unet: str, fun: str, with_control: bool, with_image: bool, capture=None) -> torch.Tensor:
    g = Graph()
    model, vae, pos, neg = wan_inputs(g, unet, "tiny_wan_2.1_vae.safetensors", PROMPT, SHIFT)
    inputs = {}
    if with_control:
        inputs["control_video"] = _control(g)
    image = g.node("LoadImage", image="start.png").out(0)
    if fun == "WanFunControlToVideo":  # Wan 2.1 Fun models attend to the image's CLIP vision states
        vision = g.node("CLIPVisionLoader", clip_name="tiny_clip_vision").out(0)
        inputs["clip_vision_output"] = g.node("CLIPVisionEncode", clip_vision=vision, image=image, crop="none").out(0)
    if with_image:
        inputs["start_image" if fun == "WanFunControlToVideo" else "ref_image"] = image
    node = g.node(fun, positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1,
                  **inputs)
    ks = g.node("KSampler", model=model, seed=8, steps=2, cfg=4.0, sampler_name="euler", scheduler="simple",
                positive=node.out(0), negative=node.out(1), latent_image=node.out(2), denoise=1.0)
    g.node("PreviewAny", source=ks.out(0))
    result = engine.run(g).raise_for_status()
    return result.value(ks.id)["samples"]


@pytest.mark.parametrize("unet,fun", [("tiny_wan21_fun_control.safetensors", "WanFunControlToVideo"),
                                      ("tiny_wan22_fun_control.safetensors", "Wan22FunControlToVideo")])
def test_the_control_video_and_image_change_the_video(engine, unet, fun):
    both = _sample(engine, unet, fun, True, True)
    assert both.shape == (1, 16, 2, 4, 4)
    assert (both - _sample(engine, unet, fun, False, True)).abs().max() > 1e-3
    assert (both - _sample(engine, unet, fun, True, False)).abs().max() > 1e-3


def test_wan22_fun_control_runner_input_layout(engine, tiny):
    """What the transformer gets: the noisy latent, the control latent in the model's space, ``1 - mask`` (zeros),
    the start latent (the latent format's zero: zeros in the model's space); the reference latent first frame."""
    seen: dict[str, torch.Tensor] = {}

    def capture(module, args):  # the patch embedding's and the reference convolution's inputs
        if isinstance(module, torch.nn.Conv3d) and module.in_channels == 52:
            seen.setdefault("x", args[0].detach().clone())
        elif isinstance(module, torch.nn.Conv2d) and module.kernel_size == (2, 2) and module.in_channels == 16:
            seen.setdefault("reference", args[0].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(capture)
    try:
        g = Graph()
        model, vae, pos, neg = wan_inputs(g, "tiny_wan22_fun_control.safetensors", "tiny_wan_2.1_vae.safetensors",
                                          PROMPT, SHIFT)
        ref, control = g.node("LoadImage", "start", image="start.png").out(0), _control(g)
        node = g.node("Wan22FunControlToVideo", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT,
                      length=LENGTH, batch_size=1, ref_image=ref, control_video=control)
        ks = g.node("KSampler", model=model, seed=8, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                    positive=node.out(0), negative=node.out(1), latent_image=node.out(2), denoise=1.0)
        g.node("PreviewAny", source=ks.out(0))
        result = engine.run(g).raise_for_status()
    finally:
        handle.remove()
    x, reference = seen["x"], seen["reference"]
    assert x.shape == (1, 52, 2, 4, 4)
    assert torch.allclose(x[:, 16:32], WAN21.process_in(_video_latent(tiny, result.value("frames"))), atol=1e-4)
    assert x[:, 32:].abs().max() < 1e-5
    assert torch.allclose(reference, WAN21.process_in(_video_latent(tiny, result.value("start")))[:, :, 0], atol=1e-4)


def test_reference_forward_is_diffusers_with_one_more_leading_frame():
    net = fun_transformer("control22")
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(1, 52, 2, 4, 4, generator=g), torch.tensor([400.0])
    text, ref = torch.randn(1, 7, 32, generator=g), torch.randn(1, 16, 4, 4, generator=g)

    def first_frame_is_the_reference(_m, _a, out):
        out = out.clone()
        out[:, :, 0] = net.ref_conv(ref)
        return out

    with torch.no_grad():
        ours = net(x, t, text, reference_latent=ref, return_dict=False)[0]
        hook = net.patch_embedding.register_forward_hook(first_frame_is_the_reference)
        try:
            padded = torch.cat([torch.zeros(1, 52, 1, 4, 4), x], dim=2)
            ref_out = super(type(net), net).forward(padded, t, text, return_dict=False)[0][:, :, 1:]
        finally:
            hook.remove()
    assert torch.equal(ours, ref_out)


def _start_image(engine, file: str) -> None:
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB").save(
        engine.paths.input_dir / file)


def test_comfy_wan22_14b_fun_control_template_runs(engine, tiny):
    """ComfyUI's ``video_wan2_2_14B_fun_control`` template (the installed comfyui_workflow_templates_json package,
    MIT; two experts through KSamplerAdvanced, LoadVideo → GetVideoComponents as the control video, the start
    image as ``ref_image``) on the tiny Wan 2.2 Fun Control model under both experts' names. Made smaller:
    32×32, 5 frames; 4 steps, the expert switch at step 2 instead of 10."""
    name = "video_wan2_2_14B_fun_control"
    template_files(tiny.root, {f"wan2.2_fun_control_{noise}_noise_14B_fp8_scaled.safetensors":
                               "tiny_wan22_fun_control.safetensors" for noise in ("high", "low")})
    _start_image(engine, f"{name}_start_image.jpg")
    write_mp4(engine.paths.input_dir / f"{name}_start_image_control_video.mp4", LENGTH)
    api = package_template_api(name, engine.registry)
    set_inputs(api, {"Wan22FunControlToVideo": dict(width=WIDTH, height=HEIGHT, length=LENGTH)})
    fewer_sampler_steps(api, 4)
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert executed.count("KSamplerAdvanced") == 2 and "Wan22FunControlToVideo" in executed
    assert saved_video_frames(engine.paths.output_dir) == LENGTH


def test_comfy_wan22_5b_fun_control_template_runs(engine, tiny):
    """ComfyUI's ``video_wan2_2_5B_fun_control`` template on a tiny Wan 2.2 Fun Control 5B model (48-channel
    latents: 148 input channels, a 48-channel reference convolution) and the tiny Wan 2.2 VAE under their file
    names. Made smaller: 32×32, 5 frames; 2 steps."""
    name = "video_wan2_2_5B_fun_control"
    template_files(tiny.root, {}, vae=False)
    _start_image(engine, f"{name}_start_image.png")
    write_mp4(engine.paths.input_dir / f"{name}_control_video.mp4", LENGTH)
    api = package_template_api(name, engine.registry)
    set_inputs(api, {"Wan22FunControlToVideo": dict(width=WIDTH, height=HEIGHT, length=LENGTH),
                     "KSampler": dict(steps=2)})
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert "Wan22FunControlToVideo" in executed and "SaveVideo" in executed
    assert saved_video_frames(engine.paths.output_dir) == LENGTH


WAN21_FUN_TEMPLATES = {
    "wan2.1_fun_control": ("tiny_wan21_fun_control.safetensors", "wan2.1_fun_control_1.3B_bf16.safetensors",
                           "WanFunControlToVideo"),
    "wan2.1_fun_inp": ("tiny_wan21_i2v.safetensors", "wan2.1_fun_inp_1.3B_bf16.safetensors", "WanFunInpaintToVideo"),
}


@pytest.mark.parametrize("name", sorted(WAN21_FUN_TEMPLATES))
def test_comfy_wan21_fun_templates_run(engine, tiny, name):
    """ComfyUI's ``wan2.1_fun_control`` (Canny of a loaded video as the control video, the start frame) and
    ``wan2.1_fun_inp`` (start and end images) templates, both through SkipLayerGuidanceDiT, CFGZeroStar and
    UNetTemporalAttentionMultiply (a no-op with a warning on Wan, as in ComfyUI), on tiny 1.3B-style models under
    their file names. Made smaller: 32×32, 5 frames; 2 steps; SkipLayerGuidanceDiT skips block 1 of the tiny
    model's 2 (the template's 9, 10 of 30)."""
    from nodegraph.events import EventRecorder, NodeWarning

    source, unet, node = WAN21_FUN_TEMPLATES[name]
    template_files(tiny.root, {unet: source}, clip_vision=True)
    if name == "wan2.1_fun_control":
        _start_image(engine, "wan2.1_fun_control_start_frame.png")
        write_mp4(engine.paths.input_dir / "wan2.1_fun_control_control_video.mp4", LENGTH)
    else:
        for which in ("start", "end"):
            _start_image(engine, f"wan2.1_fun_inp_{which}_image.png")
    api = package_template_api(name, engine.registry)
    set_inputs(api, {node: dict(width=WIDTH, height=HEIGHT, length=LENGTH), "KSampler": dict(steps=2),
                     "SkipLayerGuidanceDiT": dict(double_layers="1", single_layers="1")})
    recorder = EventRecorder()
    result = engine.run(api, listeners=[recorder]).raise_for_status()
    executed = {api[n]["class_type"] for n in result.executed}
    assert {node, "SkipLayerGuidanceDiT", "CFGZeroStar", "UNetTemporalAttentionMultiply", "SaveVideo"} <= executed
    assert [w.class_type for w in recorder.of(NodeWarning)] == ["UNetTemporalAttentionMultiply"]
    assert saved_video_frames(engine.paths.output_dir) == LENGTH


def test_skip_layer_guidance_on_wan(engine):
    """SkipLayerGuidanceDiT on a Wan model (ComfyUI's Wan takes ``double_block`` replacements): skipping a block
    changes the video; single layers alone (Wan has no single-stream blocks) leave the model as it is."""

    def latent(double: str | None, single: str = "") -> torch.Tensor:
        g = Graph()
        model, vae, pos, neg = wan_inputs(g, "tiny_wan2.1_t2v.safetensors", "tiny_wan_2.1_vae.safetensors", PROMPT,
                                          SHIFT)
        if double is not None:
            slg = g.node("SkipLayerGuidanceDiT", "slg", model=model, double_layers=double, single_layers=single,
                         scale=3.0, start_percent=0.0, end_percent=1.0, rescaling_scale=0.0)
            model = slg.out(0)
        empty = g.node("EmptyHunyuanLatentVideo", width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1)
        ks = g.node("KSampler", model=model, seed=3, steps=2, cfg=4.0, sampler_name="euler", scheduler="simple",
                    positive=pos, negative=neg, latent_image=empty, denoise=1.0)
        g.node("PreviewAny", source=ks.out(0))
        return engine.run(g).raise_for_status().value(ks.id)["samples"]

    plain, skipped = latent(None), latent("1")
    assert (plain - skipped).abs().max() > 1e-3
    with pytest.raises(Exception, match="names block 5, but the model has 2 double blocks"):
        latent("5")
    assert torch.equal(latent("", "0, 1"), plain)
