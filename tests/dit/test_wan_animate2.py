"""Wan Animate 2 through ComfyUI's nodes (UNETLoader → WanAnimate2ToVideo → KSampler → TrimVideoLatent → VAEDecode)
equals diffusers' modular ``WanAnimate2Blocks`` / ``WanAnimate2DistilledBlocks`` pipelines (flex-attention block
mask, reference-extraction pass, block 9 skipped on the unconditional branch) on the same tiny weights saved in
Comfy-Org's single-file layout, seed, steps, guidance and shift, to 1e-4 — one segment, and two chained segments;
both file layouts load; WanAnimate2Cache (default storage) does not change the result, int8 / int4 storage only
slightly; ContextWindowsManual over the animate latent and the strength inputs change it; original-named LoRAs
reach every layer; the distilled template runs end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.tiny_wan import build_wan
from tests.dit.tiny_wan_animate2 import DISTILLED_FILE, FILE, write_animate2
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT, POSE_PROMPT = "a red fox in snow", "cat running on the beach"
SEED, STEPS, CFG, SHIFT = 4, 2, 3.0, 5.0
SIZE, LENGTH = 32, 5  # latent [1, 16, 1 + 2, 4, 4]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_animate2_models")
    wan = build_wan(root, shift=SHIFT)
    base, distilled = write_animate2(root / "models")
    return wan, base, distilled


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny[0].root, tmp_path, default_registry(packs=False))
    rng = np.random.default_rng(3)
    eng.paths.input_dir.mkdir(parents=True, exist_ok=True)
    reference = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    pose = [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(LENGTH)]
    reference.save(eng.paths.input_dir / "ref.png")
    pose[0].save(eng.paths.input_dir / "pose.tiff", save_all=True, append_images=pose[1:])  # one multi-frame file
    eng.images = (reference, pose)
    yield eng
    eng.close()


def animate_graph(unet: str = FILE, cfg: float = CFG, cache: str | None = None, context: int | None = None,
                  pose_file: str = "pose.tiff", **node_inputs) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
    model = g.node("ModelSamplingSD3", model=model, shift=SHIFT).out(0)
    if context is not None:
        model = g.node("ContextWindowsManual", model=model, context_length=context, context_overlap=1,
                       context_schedule="standard_static", context_stride=1, closed_loop=False, fuse_method="pyramid",
                       dim=2, freenoise=True, cond_retain_index_list="0", split_conds_to_windows=False,
                       latent_retain_index_list="", causal_window_fix=True).out(0)
    if cache is not None:
        model = g.node("WanAnimate2Cache", model=model, device="cpu", dtype=cache).out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    vision = g.node("CLIPVisionLoader", clip_name="tiny_clip_vision").out(0)
    reference = g.node("LoadImage", image="ref.png").out(0)
    pose = g.node("LoadImage", image=pose_file).out(0)
    first = g.node("ImageFromBatch", image=pose, batch_index=0, length=1).out(0)
    cv_ref = g.node("CLIPVisionEncode", "cv_ref", clip_vision=vision, image=reference, crop="none").out(0)
    cv_pose = g.node("CLIPVisionEncode", "cv_pose", clip_vision=vision, image=first, crop="none").out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    pose_text = g.node("CLIPTextEncode", text=POSE_PROMPT, clip=clip)
    anim = g.node("WanAnimate2ToVideo", "anim", positive=pos, negative=neg, vae=vae, width=SIZE, height=SIZE,
                  length=LENGTH, batch_size=1, reference_image=reference, pose_video=pose, clip_vision_output=cv_ref,
                  positive_pose=pose_text, clip_vision_output_pose=cv_pose, **{
                      "video_frame_offset": 0, "pose_strength": 1.0, "pose_start_percent": 0.0,
                      "pose_end_percent": 1.0, "reference_image_strength": 1.0, **node_inputs})
    ks = g.node("KSampler", "ks", model=model, seed=SEED, steps=STEPS, cfg=cfg, sampler_name="euler",
                scheduler="normal", positive=anim.out(0), negative=anim.out(1), latent_image=anim.out(2), denoise=1.0)
    trim = g.node("TrimVideoLatent", samples=ks, trim_amount=anim.out(3))
    dec = g.node("VAEDecode", "out", samples=trim, vae=vae)
    for node in (dec, cv_ref, cv_pose, anim):
        g.node("PreviewAny", source=node)
    g.handles = {"anim": anim, "out": dec, "vae": vae, "reference": reference, "pose": pose, "model": model,
                 "cv_ref": cv_ref, "cv_pose": cv_pose, "pos": pos, "neg": neg, "pose_text": pose_text}
    return g


def pipeline_frames(tiny, transformer, images, vision: tuple, cfg: float, distilled: bool,
                    segment_seeds: list[int] | None = None) -> torch.Tensor:
    """diffusers' modular Wan Animate 2 pipeline's frames ``[F, H, W, 3]`` (its CLIP preprocessing — bicubic to
    224 — replaced by the CLIP vision states the graph computed for the same images). ``segment_seeds``: each
    segment's noise drawn from a generator seeded with its own seed (the graph's samplers' seeds) instead of one
    generator running on across segments."""
    from diffusers.modular_pipelines.wan_animate_2 import denoise
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.guiders import ClassifierFreeGuidance
    from diffusers.modular_pipelines.wan_animate_2 import WanAnimate2Blocks, WanAnimate2DistilledBlocks
    from diffusers.modular_pipelines.wan_animate_2 import encoders
    from transformers import CLIPVisionModel

    wan = tiny[0]
    pipe = (WanAnimate2DistilledBlocks if distilled else WanAnimate2Blocks)().init_pipeline()
    encoder = CLIPVisionModel.from_pretrained(str(wan.root / "models" / "clip_vision" / "tiny_clip_vision"))
    pipe.update_components(transformer=transformer, vae=wan.vae, text_encoder=wan.text_encoder,
                           tokenizer=wan.tokenizer, image_encoder=encoder,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT),
                           guider=ClassifierFreeGuidance(guidance_scale=cfg))
    states = list(vision)  # the reference image's first, then the driving video's first frame
    original, original_noise = encoders.clip_visual_encode, denoise.randn_tensor
    encoders.clip_visual_encode = lambda encoder, pixels, device, dtype: states.pop(0)
    if segment_seeds is not None:
        seeds = list(segment_seeds)
        denoise.randn_tensor = lambda shape, generator=None, device=None, dtype=None: torch.randn(
            shape, generator=torch.Generator().manual_seed(seeds.pop(0)), dtype=dtype)
    try:
        reference, pose = images
        generator = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            video = pipe(prompt=PROMPT, negative_prompt="", prompt_ref=POSE_PROMPT, image=reference, driving_video=pose,
                         height=SIZE, width=SIZE, segment_frame_length=LENGTH, num_inference_steps=STEPS,
                         generator=generator, output_type="pt").get("videos")
    finally:
        encoders.clip_visual_encode, denoise.randn_tensor = original, original_noise
    assert not states and (segment_seeds is None or not seeds)
    return video[0].permute(0, 2, 3, 1).float()


@pytest.mark.parametrize("distilled", [False, True])
def test_wan_animate2_matches_the_diffusers_pipeline(engine, tiny, distilled):
    cfg = 1.0 if distilled else CFG
    result = engine.run(animate_graph(DISTILLED_FILE if distilled else FILE, cfg=cfg)).raise_for_status()
    frames = result.value("out")
    anim = result.value("anim", 2)["samples"]
    assert anim.shape == (1, 16, 3, SIZE // 8, SIZE // 8) and result.value("anim", 3) == 1
    assert result.value("anim", 4) == 0 and result.value("anim", 5) == LENGTH
    noise, _ = engine_noise(anim.shape, SEED)  # the pipeline draws the same noise from its seeded generator
    assert torch.equal(noise[0], torch.randn(anim.shape[1:], generator=torch.Generator().manual_seed(SEED)))
    vision = (result.value("cv_ref").penultimate_hidden_states, result.value("cv_pose").penultimate_hidden_states)
    ref = pipeline_frames(tiny, tiny[2] if distilled else tiny[1], engine.images, vision, cfg, distilled)
    assert frames.shape == ref.shape == (LENGTH, SIZE, SIZE, 3)
    assert (frames - ref).abs().max() < 1e-4, float((frames - ref).abs().max())


def test_cache_context_windows_and_strengths(engine):
    def run(**kw):
        return engine.run(animate_graph(**kw)).raise_for_status().value("out")

    plain = run()
    assert torch.equal(run(cache="default"), plain)  # the cache only saves the per-step extract pass
    int8 = run(cache="int8")
    assert not torch.equal(int8, plain) and (int8 - plain).abs().max() < 2e-2
    int4 = run(cache="int4")
    assert (int8 - plain).abs().max() < (int4 - plain).abs().max() < 0.2
    windowed = run(context=2)  # 3 latent frames in windows of 2 (the causal anchor frame, retained frame 0)
    assert windowed.shape == plain.shape and torch.isfinite(windowed).all()
    assert not torch.allclose(windowed, plain, atol=1e-4)
    for inputs in ({"pose_strength": 0.0}, {"pose_start_percent": 0.6}, {"reference_image_strength": 0.5}):
        changed = run(**inputs)
        assert not torch.allclose(changed, plain, atol=1e-4), inputs
    failed = engine.run(animate_graph(pose_start_percent=0.8, pose_end_percent=0.2))
    assert failed.status == "error" and "pose_start_percent" in str(failed.failure)


def test_comfy_wan_animate2_distilled_template_runs(engine, tiny):
    """ComfyUI's official distilled Wan Animate 2 template (the installed comfyui_workflow_templates_json package,
    MIT) on the tiny files under its names: made smaller (32×32, 5 frames, 2 steps); the active Motion Transfer
    subgraph (WanAnimate2Cache int8, lcm) and the side-by-side Video Stitch run, both videos are saved."""
    from tests.dit.template_runs import package_template_api, set_inputs
    from tests.dit.test_wan_vace import write_mp4
    from tests.dit.tiny_qwen import copy_as
    from tests.dit.tiny_wan import template_files

    root = tiny[0].root
    template_files(root, {"wan_animate_2_distill_int8_convrot.safetensors": DISTILLED_FILE}, vae=False,
                   clip_vision=True)
    copy_as(root, {"vae/tiny_wan_2.1_vae.safetensors": "vae/Wan2_1_VAE_bf16.safetensors"})
    engine.images[0].save(engine.paths.input_dir / "ref_doll_realistic.png")
    write_mp4(engine.paths.input_dir / "drive_doll_street_dance.mp4", 7)
    api = package_template_api("video_wan_animate2_distilled", engine.registry)
    set_inputs(api, {"WanAnimate2ToVideo": {"length": LENGTH}, "BasicScheduler": {"steps": 2}})
    for node in api.values():
        if node["class_type"] == "ResizeImageMaskNode" and node["inputs"].get("resize_type.width") == 482:
            node["inputs"].update({"resize_type.width": SIZE, "resize_type.height": SIZE})
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert {"WanAnimate2ToVideo", "WanAnimate2Cache", "SamplerCustom", "TrimVideoLatent",
            "ImageStitch"} <= set(executed)
    saved = sorted(engine.paths.output_dir.rglob("*.mp4"))
    assert len(saved) == 2
    import av

    for path in saved:
        with av.open(str(path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == LENGTH


def test_comfy_wan_animate2_template_runs_its_loop(engine, tiny):
    """ComfyUI's official (base) Wan Animate 2 template on the tiny files under its names, made smaller (32×32,
    2 steps, 5-frame segments): its loop runs two segments, the first with nothing on continue_motion (a
    ComfySwitchNode whose chosen branch is unconnected passes None on, with a warning) and the loop state
    carried as one mixed list (frames and a frame count: CreateList → GetItemFromList), with the lightx2v LoRA
    and the int8 pose cache; the saved videos hold both segments' frames."""
    import av

    from nodegraph.events import NodeWarning
    from tests.dit.template_runs import package_template_api, set_inputs
    from tests.dit.test_wan_vace import write_mp4
    from tests.dit.tiny_qwen import copy_as
    from tests.dit.tiny_wan import template_files
    from tests.dit.tiny_wan_animate2 import write_original_lora

    root = tiny[0].root
    template_files(root, {"wan_animate_2_int8_convrot.safetensors": FILE}, vae=False, clip_vision=True)
    copy_as(root, {"vae/tiny_wan_2.1_vae.safetensors": "vae/Wan2_1_VAE_bf16.safetensors"})
    (root / "models" / "loras").mkdir(exist_ok=True)
    write_original_lora(tiny[1], root / "models" / "loras" /
                        "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors")
    engine.images[0].save(engine.paths.input_dir / "pink_hair_mech_arms_ref.png")
    write_mp4(engine.paths.input_dir / "street_dance_drive.mp4", 7)
    api = package_template_api("video_wan_animate2", engine.registry)
    set_inputs(api, {"BasicScheduler": {"steps": 2}})
    for node in api.values():
        if node["class_type"] == "ResizeImageMaskNode" and node["inputs"].get("resize_type.width") == 482:
            node["inputs"].update({"resize_type.width": SIZE, "resize_type.height": SIZE})
        if node["class_type"] == "PrimitiveInt" and node["inputs"].get("value") == 81:
            node["inputs"]["value"] = LENGTH
    warnings: list = []
    result = engine.run(api, listeners=[lambda e: warnings.append(e) if isinstance(e, NodeWarning) else None])
    result.raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed if n in api]
    assert {"WanAnimate2Cache", "LoraLoaderModelOnly", "EndLoop", "SaveVideo"} <= set(executed), executed
    assert any("is not connected" in w.message and w.class_type == "ComfySwitchNode" for w in warnings)
    saved = sorted(engine.paths.output_dir.rglob("*.mp4"))
    frames = []
    for path in saved:
        with av.open(str(path)) as container:
            frames.append(sum(1 for _ in container.decode(video=0)))
    # two 5-frame segments, the second continuing the first's last frame: 9 frames, which the template's
    # RebatchImages (7 per batch) turns into a list of 7 and 2 — each of its two SaveVideo writes both
    assert frames == [7, 2, 7, 2], frames


def test_original_named_lora_reaches_every_layer(tiny, tmp_path):
    from safetensors.torch import load_file

    from nodegraph_nodes.dit.wan_animate2_lora import animate2_lora_patch
    from tests.dit.tiny_wan_animate2 import write_original_lora

    net = tiny[1]
    layers = write_original_lora(net, tmp_path / "lora.safetensors")
    patch = animate2_lora_patch(net, load_file(str(tmp_path / "lora.safetensors")), 1.0, "lora.safetensors")
    assert len(patch.deltas) == layers == 10 * (4 + 6 + 2) and not patch.unmatched
    assert "blocks.3.cross_attn.add_k_proj.weight" in patch.deltas


def test_continuation_reads_the_pose_video_on(engine):
    """A second segment (continue_motion: the first segment's frames, video_frame_offset: its output) starts one
    pose frame early (the repeated last frame: trim_image 1), marks that frame known in the mask, puts it first in
    the condition frames and reads the (7-frame) pose video on from frame 4, its last frame repeated past the
    end."""
    from nodegraph_nodes.dit.wan_animate2_nodes import pose_frames

    pose = engine.images[1]
    pose[0].save(engine.paths.input_dir / "pose7.tiff", save_all=True, append_images=pose[1:] + pose[:2])
    g = animate_graph()
    h = g.handles
    ext = g.node("WanAnimate2ToVideo", "ext", positive=h["anim"].out(0), negative=h["anim"].out(1), vae=h["vae"],
                 width=SIZE, height=SIZE, length=LENGTH, batch_size=1, reference_image=h["reference"],
                 pose_video=g.node("LoadImage", image="pose7.tiff").out(0), continue_motion=h["out"].out(0),
                 video_frame_offset=h["anim"].out(5),
                 pose_strength=1.0, pose_start_percent=0.0,
                 pose_end_percent=1.0, reference_image_strength=1.0)
    g.node("PreviewAny", source=ext)
    result = engine.run(g).raise_for_status()
    first, second = result.value("anim", 0)[0][1], result.value("ext", 0)[0][1]
    assert result.value("ext", 3) == 1 and result.value("ext", 4) == 1 and result.value("ext", 5) == 2 * LENGTH - 1
    assert torch.equal(first["concat_mask"][:, :, 1], torch.ones(1, 4, 4, 4))
    assert torch.equal(second["concat_mask"][:, :, 1], torch.zeros(1, 4, 4, 4))
    assert not torch.allclose(first["concat_latent_image"][:, :, 1], second["concat_latent_image"][:, :, 1])
    assert torch.equal(first["concat_latent_image"][:, :, 0], second["concat_latent_image"][:, :, 0])  # reference
    frames = torch.arange(LENGTH).float().view(LENGTH, 1, 1, 1)
    assert pose_frames(frames, LENGTH - 1, LENGTH).flatten().tolist() == [4, 4, 4, 4, 4]
    assert pose_frames(frames, 1, 3).flatten().tolist() == [1, 2, 3]
    assert not torch.equal(first["wan_animate2_pose"].latent, second["wan_animate2_pose"].latent)


def test_both_file_layouts_load_as_wan_animate2(engine, tiny):
    """Comfy-Org's layout (Wan 2.1 I2V names + the ``animate2`` metadata) and Wan-AI's (wrapped blocks) load the same
    network; without the metadata the Comfy-Org file is an ordinary Wan 2.1 I2V file."""
    from safetensors.torch import load_file, save_file

    from nodegraph_nodes.dit.wan import WanModel
    from nodegraph_nodes.dit.wan_animate2 import WanAnimate2Model
    from tests.dit.tiny_wan_animate2 import OFFICIAL_FILE

    folder = tiny[0].root / "models" / "diffusion_models"
    save_file(load_file(str(folder / FILE)), str(folder / "tiny_wan_animate2_no_metadata.safetensors"))
    g = Graph()
    for name in (FILE, OFFICIAL_FILE, "tiny_wan_animate2_no_metadata.safetensors"):
        g.node("PreviewAny", source=g.node("UNETLoader", name, unet_name=name, weight_dtype="default"))
    result = engine.run(g).raise_for_status()
    comfy, official, plain = (result.value(n) for n in (FILE, OFFICIAL_FILE,
                                                          "tiny_wan_animate2_no_metadata.safetensors"))
    assert isinstance(comfy, WanAnimate2Model) and isinstance(official, WanAnimate2Model)
    assert isinstance(plain, WanModel) and not isinstance(plain, WanAnimate2Model)
    assert comfy.model_sampling.schedule.shift == 5.0 and plain.model_sampling.schedule.shift == 8.0  # ComfyUI's
    a, b = comfy.handle.get().state_dict(), official.handle.get().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], v) for k, v in tiny[1].state_dict().items())


def test_two_segments_match_the_diffusers_pipeline(engine, tiny):
    """A 9-frame driving video in 5-frame segments: the graph's second WanAnimate2ToVideo (continue_motion: the first
    segment's frames, video_frame_offset: its output) and its frames after the repeated one equal the pipeline's
    second segment (it conditions on the first's decoded last frame and reads the driving video from frame 4);
    each segment's noise from its sampler's seed on both sides."""
    rng = np.random.default_rng(8)
    pose = engine.images[1] + [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
                               for _ in range(4)]
    pose[0].save(engine.paths.input_dir / "pose9.tiff", save_all=True, append_images=pose[1:])
    g = animate_graph(pose_file="pose9.tiff")
    h = g.handles
    ext = g.node("WanAnimate2ToVideo", "ext", positive=h["pos"], negative=h["neg"], vae=h["vae"], width=SIZE,
                 height=SIZE, length=LENGTH, batch_size=1, reference_image=h["reference"], pose_video=h["pose"],
                 clip_vision_output=h["cv_ref"], positive_pose=h["pose_text"], clip_vision_output_pose=h["cv_pose"],
                 continue_motion=h["out"].out(0), video_frame_offset=h["anim"].out(5), pose_strength=1.0,
                 pose_start_percent=0.0, pose_end_percent=1.0, reference_image_strength=1.0)
    ks = g.node("KSampler", model=h["model"], seed=SEED + 1, steps=STEPS, cfg=CFG, sampler_name="euler",
                scheduler="normal", positive=ext.out(0), negative=ext.out(1), latent_image=ext.out(2), denoise=1.0)
    dec = g.node("VAEDecode", samples=g.node("TrimVideoLatent", samples=ks, trim_amount=ext.out(3)), vae=h["vae"])
    tail = g.node("ImageFromBatch", "tail", image=dec, batch_index=ext.out(4), length=4096)
    g.node("PreviewAny", source=tail)
    result = engine.run(g).raise_for_status()
    frames = torch.cat([result.value("out"), result.value("tail")])
    vision = (result.value("cv_ref").penultimate_hidden_states, result.value("cv_pose").penultimate_hidden_states)
    ref = pipeline_frames(tiny, tiny[1], (engine.images[0], pose), vision, CFG, False, [SEED, SEED + 1])
    assert frames.shape == ref.shape == (9, SIZE, SIZE, 3)
    assert (frames - ref).abs().max() < 1e-4, float((frames - ref).abs().max())
