"""SCAIL-2: the transformer built by UNETLoader's conversion from a tiny original-layout file equals the official
code's outputs recorded in tests/data/scail2_official (Animation / Replacement Mode, additional references, the
history mask), the first SCAIL's those in tests/data/scail_official; the loader's detection; WanSCAILToVideo's conditions; one sampler step is the transformer on them;
ComfyUI's SCAIL-2 templates (fp16 and int8_convrot files) run end to end on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit import wan_scail
from nodegraph_nodes.dit.wan_scail_model import ScailInputs
from tests.dit.tiny_wan import official_recording
from tests.dit.tiny_wan_scail import CONFIG, official_inputs, scail_original_layout, scail_transformer
from tests.helpers.engines import engine_fixture

DATA = Path(__file__).parent.parent / "data" / "scail2_official" / "official_outputs.safetensors"
FIRST_DATA = Path(__file__).parent.parent / "data" / "scail_official" / "official_outputs.safetensors"
#: case → (replacement mode, additional references, history mask)
CASES = {"animation": (False, False, False), "replacement": (True, False, False),
         "replacement_additional": (True, True, False), "animation_additional": (False, True, False),
         "animation_history": (False, False, True)}


@pytest.fixture(scope="module")
def recorded():
    sd = scail_original_layout(scail_transformer(), "model.diffusion_model.")
    weights = {k[len("model.diffusion_model."):]: v for k, v in sd.items()}
    return official_recording(DATA, official_inputs(), weights), wan_scail.build_transformer(weights, torch.float32), sd


def test_detection_and_config(recorded):
    _, net, sd = recorded
    assert wan_scail.detect_prefix(list(sd)) == "model.diffusion_model."
    assert wan_scail.detect_prefix([k for k in sd if "patch_embedding_pose" not in k]) is None
    for key, value in CONFIG.items():
        assert getattr(net.config, key) == value, key
    no_image = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if "img_emb" not in k}
    with pytest.raises(ModelFileError, match="image embedder"):
        wan_scail.build_transformer(no_image, torch.float32)


def test_first_scail_equals_the_official_transformer():
    """A file without ``patch_embedding_mask`` is the first SCAIL: one reference, the pose, Animation Mode's
    positions (recorded official outputs in tests/data/scail_official); the runner gives it no masks and no
    Replacement Mode."""
    from tests.dit.tiny_wan_scail import scail1_transformer

    weights = scail_original_layout(scail1_transformer(), "")
    data = official_recording(FIRST_DATA, official_inputs(), weights)
    net = wan_scail.build_transformer(weights, torch.float32)
    assert net.config.mask_channels == 0 and not hasattr(net, "patch_embedding_mask")
    context = torch.cat([data["context"], torch.zeros(512 - data["context"].shape[0], data["context"].shape[1])])
    with torch.no_grad():
        out = net(data["x"], data["timestep"], context[None],
                  ScailInputs(image=data["clip"], reference=data["reference"], pose=data["pose"]))
    assert (out - data["scail1"]).abs().max() < 1e-4
    clip = type("Clip", (), {"penultimate_hidden_states": data["clip"]})()
    extras = {"clip_vision_output": clip, "reference_latents": [data["reference"]], "ref_mask_flag": False,
              "ref_mask_28ch": torch.zeros(1, 4, 28, 16, 24), "driving_mask_28ch": torch.zeros(1, 3, 28, 8, 12)}
    inputs = wan_scail.scail_inputs(extras, 1, "cpu", torch.float32, masks=False)
    assert inputs.reference_mask is None and inputs.pose_mask is None and inputs.replace is False
    assert wan_scail.scail_inputs(extras, 1, "cpu", torch.float32).replace is True


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_the_official_transformer(recorded, case):
    data, net, _ = recorded
    replace, additional, history = CASES[case]
    reference, mask = data["reference"], data["reference_mask"]
    if additional:  # additional references first, the primary next to the video
        reference = torch.cat([data["additional"], reference], dim=2)
        mask = torch.cat([data["additional_mask"], mask], dim=2)
    mask = torch.cat([mask, torch.zeros(1, 28, 3, 16, 24)], dim=2)
    context = torch.cat([data["context"], torch.zeros(512 - data["context"].shape[0], data["context"].shape[1])])
    inputs = ScailInputs(image=data["clip"], reference=reference, reference_mask=mask, pose=data["pose"],
                         pose_mask=data["pose_mask"], history=data["history"] if history else None, replace=replace)
    with torch.no_grad():
        out = net(data["x"], data["timestep"], context[None], inputs)
    assert out.shape == data[case].shape == (1, 16, 3, 16, 24)
    assert (out - data[case]).abs().max() < 1e-4


# -- WanSCAILToVideo --------------------------------------------------------------------------------

def test_mask_to_28ch_classes_frames_and_threshold():
    """7 colour classes per pixel (a channel is on above 225/255), area-downsampled 8×; the first frame fills the
    first latent frame's 4 slots, frames 1–4 the next one's."""
    from nodegraph_nodes.dit.wan_scail_nodes import mask_to_28ch

    video = torch.zeros(5, 16, 24, 3)
    video[0] = 1.0  # white
    video[1, :8, :8] = torch.tensor([0.9, 0.0, 0.0])  # red (0.9 · 255 = 229.5 > 225)
    video[2, :8, :8] = torch.tensor([0.88, 0.0, 0.0])  # 224.4: off
    video[3, 8:, :4] = torch.tensor([1.0, 1.0, 0.0])  # yellow on half of an 8×8 cell
    video[4, :, 16:] = torch.tensor([0.0, 1.0, 1.0])  # cyan
    out = mask_to_28ch(video)
    assert out.shape == (1, 2, 28, 2, 3)
    first = out[0, 0].reshape(4, 7, 2, 3)
    assert torch.equal(first[:, 0], torch.ones(4, 2, 3)) and first[:, 1:].sum() == 0
    second = out[0, 1].reshape(4, 7, 2, 3)
    assert second[0, 1, 0, 0] == 1 and second[0].sum() == 1  # frame 1: red, one cell
    assert second[1].sum() == 0  # frame 2: below the threshold
    assert second[2, 4, 1, 0] == 0.5 and second[2].sum() == 0.5  # frame 3: yellow, area-averaged
    assert torch.equal(second[3, 6], torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))  # frame 4: cyan
    with pytest.raises(ValueError, match="4k \\+ 1"):
        mask_to_28ch(video[:3])


def test_values_in_a_timestep_range_split_the_entry():
    from nodegraph_nodes.dit.wan_scail_nodes import RANGE_EPS, set_values_in_range

    cond = [[torch.zeros(1), {"a": 1}]]
    assert set_values_in_range(cond, {"p": 2}, 0.0, 1.0) == [[cond[0][0], {"a": 1, "p": 2}]]
    out = set_values_in_range(cond, {"p": 2}, 0.2, 0.6)
    assert [e[1] for e in out] == [{"a": 1, "start_percent": 0.0, "end_percent": 0.2 - RANGE_EPS},
                                   {"a": 1, "p": 2, "start_percent": 0.2, "end_percent": 0.6},
                                   {"a": 1, "start_percent": 0.6 + RANGE_EPS, "end_percent": 1.0}]
    ranged = [[cond[0][0], {"start_percent": 0.7, "end_percent": 0.9}]]
    assert set_values_in_range(ranged, {"p": 2}, 0.2, 0.6) == ranged  # no overlap: unchanged


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """The tiny Wan text encoder, tokenizer, VAE and CLIP vision tower (tests/dit/tiny_wan.py, the tower also as
    clip_vision_h.safetensors) and the tiny SCAIL-2 file for its 32-wide states."""
    from tests.dit.tiny_wan import build_wan, template_files
    from tests.dit.tiny_wan_scail import write_scail

    root = tmp_path_factory.mktemp("wan_scail_models")
    tiny = build_wan(root)
    tiny.scail = write_scail(root / "models")
    template_files(root, {}, vae=False, clip_vision=True)
    return tiny


engine = engine_fixture()


def _images(seed: int, frames: int, h: int, w: int) -> torch.Tensor:
    return torch.rand(frames, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _encode(vae, frames: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.encode(frames.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mode()


def test_scail_to_video_conditions(engine, tiny_env):
    """Replacement Mode, two reference images with one mask each, a pose video and mask past the offset, the
    previous chunk's last frame, the pose on part of the schedule."""
    from nodegraph_nodes.dit.wan_scail_nodes import WanSCAILToVideo, mask_to_28ch
    from nodegraph_nodes.langvision.vision import ClipVisionOutput

    vae = engine_vae(engine)
    refs = _images(1, 2, 64, 64)
    ref_masks = torch.zeros(2, 64, 64, 3)
    ref_masks[0, 8:40, 8:40] = torch.tensor([0.0, 0.0, 1.0])
    ref_masks[1, 30:, :] = torch.tensor([1.0, 0.0, 0.0])
    pose = _images(2, 14, 64, 64)
    pose_mask = torch.ones(13, 64, 64, 3)
    previous = _images(3, 3, 64, 64)
    clip = ClipVisionOutput.__new__(ClipVisionOutput)
    node = WanSCAILToVideo(engine_context(engine))
    pos, neg, latent, offset = node.execute(
        [[torch.zeros(1, 4, 32), {}]], [[torch.ones(1, 4, 32), {}]], vae, 64, 64, 9, 1, pose_strength=0.5,
        pose_start=0.0, pose_end=0.5, video_frame_offset=8, previous_frame_count=1, replacement_mode=True,
        pose_video=pose, pose_video_mask=pose_mask, reference_image=refs, reference_image_mask=ref_masks,
        clip_vision_output=clip, previous_frames=previous)
    assert offset == 7 + 9  # the offset goes back by the one anchored frame
    assert len(pos) == 2 and pos[0][1]["end_percent"] == 0.5 and "pose_video_latent" not in pos[1][1]
    extras = pos[0][1]
    assert extras["ref_mask_flag"] is False and extras["clip_vision_output"] is clip
    assert neg[0][1]["ref_mask_flag"] is False and torch.equal(neg[0][0], torch.ones(1, 4, 32))
    handle = vae.handle.get().vae
    blacked = refs * (ref_masks.amax(dim=-1, keepdim=True) > 0.1)
    for i in range(2):  # each reference blacked out off its mask and encoded alone
        assert torch.allclose(extras["reference_latents"][i], _encode(handle, blacked[i:i + 1]), atol=1e-5)
    # pose frames 7..11 (4k + 1 of the 7 past the offset, at most the length), half size, times the strength
    half = torch.nn.functional.interpolate(pose[7:12].permute(0, 3, 1, 2), size=(32, 32), mode="area")
    assert torch.allclose(extras["pose_video_latent"], _encode(handle, half.permute(0, 2, 3, 1)) * 0.5, atol=1e-5)
    assert torch.equal(extras["driving_mask_28ch"], mask_to_28ch(torch.ones(5, 32, 32, 3)))
    ref_mask = extras["ref_mask_28ch"]  # the additional reference's mask, the primary's, zeros for 3 frames
    assert ref_mask.shape == (1, 5, 28, 8, 8)
    assert torch.equal(ref_mask[0, 0], mask_to_28ch(ref_masks[1:2])[0, 0])
    assert torch.equal(ref_mask[0, 1], mask_to_28ch(ref_masks[:1])[0, 0]) and ref_mask[0, 2:].sum() == 0
    assert ref_mask[0, 1, 3, 1:5, 1:5].sum() == 16  # blue over the primary's box
    samples = latent["samples"]
    assert samples.shape == (1, 16, 3, 8, 8) and samples[:, :, 1:].abs().sum() == 0
    assert torch.allclose(samples[:, :, :1], _encode(handle, previous[-1:]), atol=1e-5)
    assert torch.equal(latent["noise_mask"][0, 0, :, 0, 0], torch.tensor([0.0, 1.0, 1.0]))


def engine_vae(engine):
    from nodegraph_nodes.dit.wan_scail_nodes import WanSCAILToVideo  # noqa: F401  (registered)

    api = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny_wan_2.1_vae.safetensors"}},
           "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    return engine.run(api).raise_for_status().value("1", 0)


def engine_context(engine):
    import threading

    from nodegraph.context import NodeContext, RunContext
    from nodegraph.events import EventBus

    run = RunContext(prompt_id="t", bus=EventBus(), interrupt=threading.Event(), paths=engine.paths,
                     services={"models": engine.services["models"]}, device="cpu")
    return NodeContext(run, "1", "WanSCAILToVideo")


def _scail_graph(engine, previous: bool):
    """``ref.png`` and ``pose.mp4`` (9 frames) in the engine's input folder; UNETLoader (the tiny SCAIL-2 file) and
    WanSCAILToVideo ``scail`` (Animation Mode, 64×64, 9 frames; the pose video also as its mask, the reference as
    its own mask; with ``previous``: the pose video's frames as the previous chunk) → KSampler ``out`` (one euler
    step, cfg 1)."""
    import numpy as np
    from PIL import Image

    from nodegraph.builder import Graph
    from tests.dit.test_wan_vace import write_mp4

    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        engine.paths.input_dir / "ref.png")
    write_mp4(engine.paths.input_dir / "pose.mp4", 9, size=64)
    g = Graph()
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    ref = g.node("LoadImage", image="ref.png").out(0)
    frames = g.node("GetVideoComponents", video=g.node("LoadVideo", file="pose.mp4").out(0)).out(0)
    vision = g.node("CLIPVisionEncode", clip_vision=g.node("CLIPVisionLoader", clip_name="clip_vision_h.safetensors"
                                                           ).out(0), image=ref, crop="none").out(0)
    extra = {"previous_frames": frames, "previous_frame_count": 5} if previous else {}
    scail = g.node("WanSCAILToVideo", "scail", positive=g.node("CLIPTextEncode", text="a red fox", clip=clip),
                   negative=g.node("CLIPTextEncode", text="", clip=clip), vae=vae, width=64, height=64, length=9,
                   batch_size=1, pose_strength=1.0, pose_start=0.0, pose_end=1.0, video_frame_offset=0,
                   replacement_mode=False, pose_video=frames, pose_video_mask=frames, reference_image=ref,
                   reference_image_mask=ref, clip_vision_output=vision, **extra)
    model = g.node("UNETLoader", unet_name="tiny_wan2.1_scail2.safetensors", weight_dtype="default").out(0)
    out = g.node("KSampler", "out", model=model, seed=5, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                 positive=scail.out(0), negative=scail.out(1), latent_image=scail.out(2), denoise=1.0)
    g.node("PreviewAny", source=out)
    return g


@pytest.mark.parametrize("previous", [False, True])
def test_one_sampler_step_is_the_transformer_on_the_conditions(engine, tiny_env, previous):
    """UNETLoader → WanSCAILToVideo → KSampler (one euler step, cfg 1): the result is ``noise - velocity`` of the
    tiny transformer on the node's conditions (reference, pose latents in the model's space, the masks frames
    second, the CLIP states) at time 1000; with previous frames the kept latent frames go in clean, the history
    mask marks them and the result keeps them."""
    from nodegraph_nodes.dit.qwen_image import WAN21
    from tests.helpers.noise import engine_noise

    result = engine.run(_scail_graph(engine, previous).to_api()).raise_for_status()
    text, extras = result.value("scail", 0)[0]
    latent = result.value("scail", 2)
    assert ("noise_mask" in latent) == previous
    noise, _ = engine_noise((1, 16, 3, 8, 8), 5)
    clean = WAN21.process_in(latent["samples"])
    keep = torch.zeros(1, 1, 3, 8, 8)
    if previous:
        keep = 1.0 - latent["noise_mask"]
        assert torch.equal(keep[0, 0, :, 0, 0], torch.tensor([1.0, 1.0, 0.0]))  # 5 frames: 2 latent frames kept
    x = noise * (1 - keep) + clean * keep
    inputs = ScailInputs(image=extras["clip_vision_output"].penultimate_hidden_states,
                         reference=WAN21.process_in(extras["reference_latents"][0]),
                         reference_mask=extras["ref_mask_28ch"].movedim(1, 2),
                         pose=WAN21.process_in(extras["pose_video_latent"]),
                         pose_mask=extras["driving_mask_28ch"].movedim(1, 2),
                         history=keep.expand(1, 4, 3, 8, 8) if previous else None, replace=False)
    with torch.no_grad():
        velocity = tiny_env.scail(x, torch.tensor([1000.0]), text, inputs)
    expected = (x - velocity) * (1 - keep) + clean * keep
    got = result.value("out")["samples"]
    assert (got - WAN21.process_out(expected)).abs().max() < 1e-4


def test_int8_convrot_file_loads_dequantised(tmp_path):
    """UNETLoader on a SCAIL-2 file quantised as Comfy-Org's ``*_int8_convrot`` releases: the layers come out as
    comfy-kitchen dequantises them (nodegraph_nodes.diffusion.quantized, on the file read) and the others as
    stored."""
    from nodegraph.registry import default_registry
    from tests.dit.tiny_wan_scail import FILE, write_scail
    from tests.helpers.comfy_quant import convrot_group, quantize_file
    from tests.helpers.engines import make_engine

    models = tmp_path / "root" / "models"
    net = write_scail(models)
    src = models / "diffusion_models" / FILE

    def pick(key, value):
        group = convrot_group(value.shape[-1]) if value.ndim == 2 else None
        return None if group is None else dict(convrot=True, convrot_groupsize=group)

    references = quantize_file(src, models / "diffusion_models" / "scail2_int8_convrot.safetensors",
                               "int8_tensorwise", pick)
    key = "model.diffusion_model.blocks.1.cross_attn.k_img.weight"
    assert key in references and len(references) > 20
    engine = make_engine(tmp_path / "root", tmp_path, default_registry(packs=False))
    try:
        api = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "scail2_int8_convrot.safetensors",
                                                            "weight_dtype": "default"}},
               "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
        model = engine.run(api).raise_for_status().value("1", 0)
        assert isinstance(model, wan_scail.WanScailModel)
        loaded = model.handle.get()
        assert torch.allclose(loaded.blocks[1].attn2.add_k_proj.weight.float(), references[key], atol=1e-6)
        assert not torch.equal(loaded.blocks[1].attn2.add_k_proj.weight, net.blocks[1].attn2.add_k_proj.weight)
        assert torch.equal(loaded.patch_embedding_mask.weight, net.patch_embedding_mask.weight)  # 5-D: not quantised
    finally:
        engine.close()


# -- ComfyUI's SCAIL-2 templates ----------------------------------------------------------------------

#: template → (its diffusion model file, its driving video, its reference image)
TEMPLATES = {
    "video_wan21_scail2_character_replacement": ("wan2.1_14B_SCAIL_2_fp16.safetensors", "driving_outdoor_dance.mp4",
                                                 "reference_streetwear_character.png"),
    "video_wan21_scail2_character_replacement_int8": ("wan2.1_14B_SCAIL_2_int8_convrot.safetensors",
                                                      "girl_eats_apple.mp4", "asian_model_in_white_clothes.png"),
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_scail2_templates_run(tmp_path_factory, tmp_path, name):
    """ComfyUI's SCAIL-2 character replacement templates (the installed comfyui_workflow_templates_json package,
    MIT): SAM 3 tracks "human" in the driving video and the reference, SCAIL2ColoredMask colours them,
    WanSCAILToVideo conditions the tiny SCAIL-2 file (the int8 template: the same file quantised as Comfy-Org's
    ``*_int8_convrot`` ones, dequantised as UNETLoader reads it), the lightx2v and DPO LoRAs (tiny LoRAs in Wan's
    original names) on it; the Base chunk, then the Extend chunk anchored on the Base chunk's last 5 frames.
    Made smaller: 64×64, chunks of 9 frames (the Extend chunk's pose video from frame 4), 2 steps, SAM 3's
    detection threshold 0 (the tiny detector's scores are low)."""
    import av
    import numpy as np
    from PIL import Image

    from nodegraph.registry import default_registry
    from tests.dit.template_runs import package_template_api, set_inputs
    from tests.dit.test_wan_vace import write_mp4, write_original_lora
    from tests.dit.tiny_qwen import copy_as
    from tests.dit.tiny_wan import build_wan, template_files
    from tests.dit.tiny_wan_scail import FILE, write_scail
    from tests.helpers.engines import make_engine
    from tests.helpers.tiny_sam3 import build_sam3

    unet, video, image = TEMPLATES[name]
    root = tmp_path_factory.mktemp("scail2_template")
    build_wan(root)
    net = write_scail(root / "models")
    build_sam3(root)
    models = root / "models"
    if "int8" in name:
        from tests.helpers.comfy_quant import int8_convrot_file

        assert int8_convrot_file(models / "diffusion_models" / FILE, models / "diffusion_models" / unet) > 0
    else:
        copy_as(root, {f"diffusion_models/{FILE}": f"diffusion_models/{unet}"})
    template_files(root, {}, vae=False, clip_vision=True)
    copy_as(root, {"vae/tiny_wan_2.1_vae.safetensors": "vae/Wan2_1_VAE_bf16.safetensors"})
    (models / "loras").mkdir(exist_ok=True)
    write_original_lora(net, models / "loras" / "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors")
    write_original_lora(net, models / "loras" / "wan2.1_SCAIL_2_DPO_lora_bf16.safetensors", seed=4)
    engine = make_engine(root, tmp_path, default_registry(packs=False))
    try:
        engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
        write_mp4(engine.paths.input_dir / video, 16, size=64)
        Image.fromarray(np.random.default_rng(9).integers(0, 256, (72, 56, 3), dtype=np.uint8)).save(
            engine.paths.input_dir / image)
        api = package_template_api(name, engine.registry)
        for n in api.values():
            inputs = n["inputs"]
            if n["class_type"] == "PrimitiveInt" and inputs["value"] in (896, 512):
                inputs["value"] = 64
            if n["class_type"] == "PrimitiveInt" and inputs["value"] == 6:  # the turbo preset's steps
                inputs["value"] = 2
            if n["class_type"] == "ImageFromBatch" and inputs.get("length") == 81:
                inputs["length"] = 9
            if n["class_type"] == "ComfyMathExpression" and inputs.get("values.b") == 81:
                inputs["values.b"] = 9
        set_inputs(api, {"SAM3_VideoTrack": {"detection_threshold": 0.0}})
        result = engine.run(api).raise_for_status()
        executed = [api[n]["class_type"] for n in result.executed]
        # the reference's SAM 3 track and the model chain (two LoRAs) are the same in both chunks: each runs once
        # (the cache's content signature)
        for node, count in (("WanSCAILToVideo", 2), ("SCAIL2ColoredMask", 2), ("SAM3_VideoTrack", 3),
                            ("SamplerCustom", 2), ("LoraLoaderModelOnly", 2), ("ColorTransfer", 1)):
            assert executed.count(node) == count, node
        scail = [n for n in result.executed if api[n]["class_type"] == "WanSCAILToVideo"]
        extends = [n for n in scail if api[n]["inputs"].get("previous_frames") is not None]
        assert len(extends) == 1
        extend = result.value(extends[0], 2)
        assert extend["samples"].shape == (1, 16, 3, 8, 8)
        assert torch.equal(extend["noise_mask"][0, 0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
        masks = [n for n in result.executed if api[n]["class_type"] == "SCAIL2ColoredMask"]
        pose_mask = result.value(masks[0], 0)
        assert pose_mask.shape == (9, 64, 64, 3) and (pose_mask < 1).any()  # something tracked on white
        saved = sorted(engine.paths.output_dir.rglob("*.mp4"))
        frames = []
        for path in saved:
            with av.open(str(path)) as container:
                frames.append(sum(1 for _ in container.decode(video=0)))
        assert sorted(frames) == [9, 9 + 4]  # the Base chunk; Base + Extend past its 5 anchored frames
    finally:
        engine.close()
