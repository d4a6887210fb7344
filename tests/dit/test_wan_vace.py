"""Wan 2.1 VACE through ComfyUI's nodes (UNETLoader on a VACE single file → WanVaceToVideo → KSampler →
TrimVideoLatent → VAEDecode) equals diffusers' WanVACEPipeline on the same tiny weights, seed, steps,
guidance and shift (1e-4): with a control video, control masks and a reference image, and with none of
them (text-to-video through VACE); and ComfyUI's official VACE templates run on the tiny files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.template_runs import saved_video_frames
from tests.dit.tiny_wan_vace import VACE_FILE, build_wan_vace
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT = "a red fox running in snow"
SEED, STEPS, CFG, SHIFT = 13, 3, 4.0, 5.0
WIDTH, HEIGHT, LENGTH = 32, 32, 5  # latent [1, 16, 2, 4, 4] (+1 frame with a reference image)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_wan_vace(tmp_path_factory.mktemp("wan_vace_models"))


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def control_inputs(input_dir):
    """A 5-frame control video with binary masks (an animated RGBA PNG: LoadImage's mask is 1 - alpha, 1 on
    the left half of each frame and a moving square), a reference image; and the same as PIL images for
    diffusers (masks white = 1)."""
    rng = np.random.default_rng(21)
    frames, masks, rgba = [], [], []
    for i in range(LENGTH):
        rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        mask[:, :WIDTH // 2] = 255
        mask[8 + i:16 + i, 16:24] = 255
        frames.append(Image.fromarray(rgb, "RGB"))
        masks.append(Image.fromarray(np.repeat(mask[..., None], 3, axis=2), "RGB"))
        rgba.append(Image.fromarray(np.concatenate([rgb, (255 - mask)[..., None]], axis=2), "RGBA"))
    input_dir.mkdir(parents=True, exist_ok=True)
    rgba[0].save(input_dir / "control.png", save_all=True, append_images=rgba[1:], duration=100, loop=0)
    reference = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")
    reference.save(input_dir / "reference.png")
    return frames, masks, reference


def vace_graph(with_inputs: bool, strength: float) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name=VACE_FILE, weight_dtype="default").out(0)
    model = g.node("ModelSamplingSD3", model=model, shift=SHIFT).out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    extra = {}
    if with_inputs:
        control = g.node("LoadImage", image="control.png")
        extra = {"control_video": control.out(0), "control_masks": control.out(1),
                 "reference_image": g.node("LoadImage", image="reference.png").out(0)}
    vace = g.node("WanVaceToVideo", "vace", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT,
                  length=LENGTH, batch_size=1, strength=strength, **extra)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal",
                positive=vace.out(0), negative=vace.out(1), latent_image=vace.out(2), denoise=1.0)
    trim = g.node("TrimVideoLatent", samples=ks, trim_amount=vace.out(3))
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=trim, vae=vae))
    g.node("PreviewAny", source=vace.out(3))
    return g


def reference_frames(tiny, frames, masks, reference, strength: float) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanVACEPipeline

    pipe = WanVACEPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, transformer=tiny.transformer,
                           vae=tiny.vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    pipe.set_progress_bar_config(disable=True)
    refs = 1 if reference is not None else 0
    noise, _ = engine_noise((1, 16, (LENGTH - 1) // 4 + 1 + refs, HEIGHT // 8, WIDTH // 8), SEED)
    text = WanPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, transformer=None, vae=None,
                       scheduler=None)  # the VACE pipeline's prompt cleaning needs ftfy; the encoding is the same
    with torch.no_grad():
        embeds, negative = text.encode_prompt(PROMPT, negative_prompt="", max_sequence_length=512)
        video = pipe(video=frames, mask=masks, reference_images=reference, prompt_embeds=embeds,
                     negative_prompt_embeds=negative, height=HEIGHT, width=WIDTH, num_frames=LENGTH,
                     num_inference_steps=STEPS, guidance_scale=CFG, latents=noise, conditioning_scale=strength,
                     output_type="pt").frames
    return video[0].permute(0, 2, 3, 1).float()


@pytest.mark.parametrize("with_inputs,strength", [(True, 1.0), (True, 0.6), (False, 1.0)],
                         ids=["control+reference", "strength0.6", "no-inputs"])
def test_wan_vace_matches_pipeline(engine, tiny, with_inputs, strength):
    frames = masks = reference = None
    if with_inputs:
        frames, masks, reference = control_inputs(engine.paths.input_dir)
    result = engine.run(vace_graph(with_inputs, strength)).raise_for_status()
    out = result.value("out")
    ref = reference_frames(tiny, frames, masks, reference, strength)
    assert out.shape == ref.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    assert out.std() > 0.01
    trim = result.value("vace", 3)
    assert trim == (1 if with_inputs else 0)
    assert result.value("vace", 2)["samples"].shape == (1, 16, 2 + trim, HEIGHT // 8, WIDTH // 8)


def test_wan_vace_control_changes_the_output(engine, tiny):
    control_inputs(engine.paths.input_dir)
    with_control = engine.run(vace_graph(True, 1.0)).raise_for_status().value("out")
    without = engine.run(vace_graph(False, 1.0)).raise_for_status().value("out")
    zero_strength = engine.run(vace_graph(True, 0.0)).raise_for_status().value("out")
    assert not torch.allclose(with_control, without, atol=1e-3)
    assert not torch.allclose(with_control, zero_strength, atol=1e-3)


def test_wan_vace_node_shapes_and_errors(engine, tiny):
    """The conditioning values (32-channel frames, 64-channel mask, strength) and a clear error for two
    WanVaceToVideo nodes chained on one conditioning."""
    control_inputs(engine.paths.input_dir)
    g = vace_graph(True, 1.0)
    result = engine.run(g).raise_for_status()
    extras = result.value("vace", 0)[0][1]
    assert extras["vace_frames"][0].shape == (1, 32, 3, HEIGHT // 8, WIDTH // 8)
    assert extras["vace_mask"][0].shape == (1, 64, 3, HEIGHT // 8, WIDTH // 8)
    assert torch.all(extras["vace_mask"][0][:, :, 0] == 0)  # the reference frame
    assert extras["vace_strength"] == [1.0]

    g = Graph()
    model = g.node("UNETLoader", unet_name=VACE_FILE, weight_dtype="default").out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    a = g.node("WanVaceToVideo", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT, length=LENGTH,
               batch_size=1, strength=1.0)
    b = g.node("WanVaceToVideo", positive=a.out(0), negative=a.out(1), vae=vae, width=WIDTH, height=HEIGHT,
               length=LENGTH, batch_size=1, strength=1.0)
    ks = g.node("KSampler", "ks", model=model, seed=SEED, steps=1, cfg=CFG, sampler_name="euler", scheduler="normal",
           positive=b.out(0), negative=b.out(1), latent_image=b.out(2), denoise=1.0)
    g.node("PreviewAny", source=ks)
    failed = engine.run(g)
    assert not failed.ok
    message = str(failed.failure)
    assert "WanVaceToVideo" in message and "chained" in message, message


def write_original_lora(net, path, rank: int = 4, seed: int = 3) -> None:
    """A random LoRA in Wan's original names (``diffusion_model.blocks.N.self_attn.q.lora_down.weight``, as
    CausVid / lightx2v files) on the attention and feed-forward layers of ``net``'s blocks (not the VACE
    blocks: diffusers' Wan LoRA conversion refuses them; those of the nodegraph side are read alike)."""
    from safetensors.torch import save_file

    from tests.dit.tiny_wan_vace import vace_original_layout

    gen = torch.Generator().manual_seed(seed)
    names = {}
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks.") and (
                ".attn" in name or ".ffn." in name):
            names[name + ".weight"] = module
    original = vace_original_layout({k: torch.zeros(1) for k in names}, prefix="diffusion_model.")
    sd = {}
    for (key, module), okey in zip(names.items(), original):
        base = okey[:-len(".weight")]
        out_f, in_f = module.weight.shape
        sd[base + ".lora_down.weight"] = torch.randn(rank, in_f, generator=gen) * 0.3
        sd[base + ".lora_up.weight"] = torch.randn(out_f, rank, generator=gen) * 0.3
        sd[base + ".alpha"] = torch.tensor(float(rank) / 2)
    save_file(sd, str(path))


def test_wan_original_named_lora_matches_diffusers(engine, tiny):
    """A Wan LoRA in Wan's original names (ComfyUI users' CausVid / lightx2v files) through
    LoraLoaderModelOnly on the VACE model equals WanVACEPipeline after ``load_lora_weights`` of the same file
    (diffusers' own conversion of these names) at 1e-4, and changes the output."""
    pytest.importorskip("peft")
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanVACEPipeline

    loras = tiny.root / "models" / "loras"
    loras.mkdir(exist_ok=True)
    write_original_lora(tiny.transformer, loras / "tiny_wan_lora.safetensors")
    base = engine.run(vace_graph(False, 1.0)).raise_for_status().value("out")
    g = Graph()
    model = g.node("UNETLoader", unet_name=VACE_FILE, weight_dtype="default").out(0)
    model = g.node("LoraLoaderModelOnly", model=model, lora_name="tiny_wan_lora.safetensors", strength_model=0.8).out(0)
    model = g.node("ModelSamplingSD3", model=model, shift=SHIFT).out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    vace = g.node("WanVaceToVideo", positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT, length=LENGTH,
                  batch_size=1, strength=1.0)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal",
                positive=vace.out(0), negative=vace.out(1), latent_image=vace.out(2), denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    out = engine.run(g).raise_for_status().value("out")

    import copy

    net = copy.deepcopy(tiny.transformer)
    pipe = WanVACEPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, transformer=net,
                           vae=tiny.vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(loras / "tiny_wan_lora.safetensors"), adapter_name="tiny")
    pipe.set_adapters(["tiny"], [0.8])
    noise, _ = engine_noise((1, 16, (LENGTH - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8), SEED)
    text = WanPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, transformer=None, vae=None,
                       scheduler=None)
    with torch.no_grad():
        embeds, negative = text.encode_prompt(PROMPT, negative_prompt="", max_sequence_length=512)
        video = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=HEIGHT, width=WIDTH,
                     num_frames=LENGTH, num_inference_steps=STEPS, guidance_scale=CFG, latents=noise,
                     output_type="pt").frames
    ref = video[0].permute(0, 2, 3, 1).float()
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    assert not torch.allclose(out, base, atol=1e-3)


VACE_TEMPLATES = ("video_wan_vace_14B_t2v", "video_wan_vace_14B_ref2v", "video_wan_vace_14B_v2v",
                  "video_wan_vace_outpainting")


def write_mp4(path, frames: int, size: int = 32, seed: int = 12) -> None:
    """A small h264 clip of random frames (an input video for LoadVideo)."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.mark.parametrize("name", VACE_TEMPLATES)
def test_comfy_wan_vace_templates_run(engine, tiny, name):
    """ComfyUI's official VACE templates (the installed comfyui_workflow_templates_json package, MIT) on the
    tiny files saved under their names (the CausVid LoRA: a tiny LoRA in Wan's original names; the input videos:
    small random clips). Made smaller: WanVaceToVideo 32×32, 5 frames (the outpainting template's size and length
    primitives); the templates' 3–4 uni_pc steps are kept."""
    import json

    from nodegraph.workflow.loader import load_workflow_data

    from tests.dit.tiny_qwen import copy_as
    from tests.helpers.package_templates import package_templates

    copy_as(tiny.root, {f"diffusion_models/{VACE_FILE}": "diffusion_models/wan2.1_vace_14B_fp16.safetensors",
                        "text_encoders/tiny_umt5_xxl.safetensors": "text_encoders/umt5_xxl_fp16.safetensors",
                        "vae/tiny_wan_2.1_vae.safetensors": "vae/wan_2.1_vae.safetensors"})
    loras = tiny.root / "models" / "loras"
    loras.mkdir(exist_ok=True)
    write_original_lora(tiny.transformer, loras / "Wan21_CausVid_14B_T2V_lora_rank32.safetensors")
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB").save(
        engine.paths.input_dir / f"{name}_reference_image.jpg")
    write_mp4(engine.paths.input_dir / "video_wan_vace_14B_v2v_reference_image_control_video.mp4", 8)
    write_mp4(engine.paths.input_dir / "video_wan_vace_outpainting_input_video.mp4", 6)
    api = load_workflow_data(json.loads(package_templates(lambda n: n == f"{name}.json")[0].read_text()), engine.registry).api
    for n in api.values():
        if n["class_type"] == "WanVaceToVideo":
            sizes = {"width": WIDTH, "height": HEIGHT, "length": LENGTH}
            for key, value in sizes.items():
                linked = n["inputs"][key]
                if isinstance(linked, list):  # a PrimitiveInt (the outpainting template's)
                    api[linked[0]]["inputs"]["value"] = value
                else:
                    n["inputs"][key] = value
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert {"WanVaceToVideo", "LoraLoader", "TrimVideoLatent", "SaveVideo"} <= set(executed)
    assert ("LoadImage" in executed) == (name in ("video_wan_vace_14B_ref2v", "video_wan_vace_14B_v2v"))
    assert ("LoadVideo" in executed) == (name in ("video_wan_vace_14B_v2v", "video_wan_vace_outpainting"))
    assert saved_video_frames(engine.paths.output_dir) == LENGTH


def test_comfy_wan_vace_templates_validate(engine):
    """Every official VACE template validates with file errors only (the inpainting one with SAM3_Detect,
    nodes/mask/sam3_detect.py)."""
    from tests.helpers.package_templates import check_templates, package_templates

    check = check_templates(package_templates(lambda n: "vace" in n), engine.registry)
    assert len(check.clean) == 6, check.clean
    check.assert_missing(set())
