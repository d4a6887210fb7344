"""ComfyUI's official LTX-2 templates (the installed ``comfyui_workflow_templates_json`` package) run end to end
on the tiny LTX-2 files saved under the templates' file names, and the LTX templates' validation status (a
known, shrinking list of missing node types; one template shipped with a dangling subgraph link)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.dit.template_runs import set_inputs, set_primitive_ints
from tests.dit.test_ltx2 import ltx2_engine, tiny_ltx2  # noqa: F401 (fixtures)
from tests.dit.tiny_ltx2 import CHECKPOINT, GEMMA_FILE, UPSAMPLER
from tests.helpers.package_templates import package_templates


def _template_api(name: str, registry) -> dict:
    """The installed package's template ``name`` as an API prompt (the test skipped where the package lacks it)."""
    from nodegraph.workflow.loader import load_workflow_data

    found = package_templates(lambda n: n == f"{name}.json")
    if not found:
        pytest.skip(f"template {name} not in the installed package")
    return load_workflow_data(json.loads(found[0].read_text()), registry).api


def _files(tiny, checkpoint: str, gemma: str, upsampler: str | None = None) -> None:
    from tests.dit.tiny_qwen import copy_as

    pairs = {f"checkpoints/{CHECKPOINT}": f"checkpoints/{checkpoint}",
             f"text_encoders/{GEMMA_FILE}": f"text_encoders/{gemma}"}
    if upsampler:
        pairs[f"latent_upscale_models/{UPSAMPLER}"] = f"latent_upscale_models/{upsampler}"
    copy_as(tiny.root, pairs)


def _run(engine, api: dict, kinds: tuple[str, ...]):
    """Runs ``api``; each of ``kinds`` must have run and the one saved video must have 9 frames and sound. The
    result and the class types that ran."""
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    for kind in kinds:
        assert kind in executed
    frames, samples = _saved_video(engine)
    assert frames == 9
    assert samples > 0
    return result, executed


def _saved_video(engine):
    import av

    saved = list(engine.paths.output_dir.rglob("*.mp4"))
    assert len(saved) == 1
    with av.open(str(saved[0])) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(saved[0])) as container:
        audio = [s for s in container.streams if s.type == "audio"]
        samples = sum(f.samples for f in container.decode(audio=0)) if audio else 0
    return frames, samples


def test_comfy_ltx2_t2v_distilled_template_runs(ltx2_engine, tiny_ltx2):
    """``video_ltx2_t2v_distilled``: two stages (half size, LTXVLatentUpsampler ×2, refine from sigma 0.909 with
    the first stage's audio), euler_ancestral, CFG 1, VAEDecodeTiled, LTXVAudioVAEDecode, CreateVideo, SaveVideo.
    Made smaller: 128×128 before the ×0.5 (latent 2×2, upscaled to 4×4) and 9 frames instead of 121."""
    _files(tiny_ltx2, "ltx-2-19b-distilled.safetensors", "gemma_3_12B_it_fp4_mixed.safetensors",
           "ltx-2-spatial-upscaler-x2-1.0.safetensors")
    api = _template_api("video_ltx2_t2v_distilled", ltx2_engine.registry)
    set_inputs(api, {"EmptyImage": dict(width=128, height=128)})
    set_primitive_ints(api, {121: 9})
    _, executed = _run(ltx2_engine, api,
                       ("LTXVLatentUpsampler", "LTXVAudioVAEDecode", "VAEDecodeTiled", "SaveVideo"))
    assert executed.count("SamplerCustomAdvanced") == 2


def test_ltx2_latent_upsampler_equals_diffusers(ltx2_engine, tiny_ltx2):
    """LTXVLatentUpsampler = the VAE's statistics undone, LTX2LatentUpsamplerModel, statistics redone."""
    from nodegraph.builder import Graph

    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    up = g.node("LatentUpscaleModelLoader", model_name=UPSAMPLER)
    lat = g.node("EmptyLTXVLatentVideo", width=64, height=64, length=9, batch_size=1)
    out = g.node("LTXVLatentUpsampler", "up", samples=lat, upscale_model=up, vae=ck.out(2))
    g.node("PreviewAny", source=out)
    # the empty latent's zeros un-normalize to the VAE's (random) mean
    result = ltx2_engine.run(g).raise_for_status().value("up")["samples"]
    vae, model = tiny_ltx2.vae, tiny_ltx2.upsampler
    mean, std = vae.latents_mean.view(1, -1, 1, 1, 1), vae.latents_std.view(1, -1, 1, 1, 1)
    with torch.no_grad():
        ref = (model(torch.zeros(1, 128, 2, 2, 2) * std + mean) - mean) / std
    assert result.shape == (1, 128, 2, 4, 4)
    assert torch.allclose(result, ref, atol=1e-5)


def test_comfy_ltx2_i2v_distilled_template_runs(ltx2_engine, tiny_ltx2):
    """``video_ltx2_i2v_distilled``: LTXVPreprocess → LTXVImgToVideoInplace at half size, sampling with the
    first frame kept (noise mask), LTXVCropGuides, LTXVLatentUpsampler, LTXVImgToVideoInplace again, refine with
    gradient_estimation, VAEDecode + LTXVAudioVAEDecode → SaveVideo. Made smaller: the image resized to 128×128
    (64×64 sampled first), 9 frames instead of 121."""
    import numpy as np
    from PIL import Image

    _files(tiny_ltx2, "ltx-2-19b-distilled.safetensors", "gemma_3_12B_it_fp4_mixed.safetensors",
           "ltx-2-spatial-upscaler-x2-1.0.safetensors")
    ltx2_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (96, 120, 3), dtype=np.uint8), "RGB").save(
        ltx2_engine.paths.input_dir / "snow_bike_jump_crew.png")
    api = _template_api("video_ltx2_i2v_distilled", ltx2_engine.registry)
    set_inputs(api, {"ResizeImageMaskNode": {"resize_type.width": 128, "resize_type.height": 128,
                                             "resize_type.longer_size": 128}})
    set_primitive_ints(api, {121: 9})
    _run(ltx2_engine, api, ("LTXVPreprocess", "LTXVImgToVideoInplace", "LTXVCropGuides", "LTXVLatentUpsampler"))


def test_comfy_ltx2_3_flf2v_template_runs_on_ltx2(ltx2_engine, tiny_ltx2):
    """``video_ltx2_3_flf2v`` (first and last frame through two LTXVAddGuide at strength 0.7, LTXVCropGuides after
    sampling, SamplerEulerAncestral, VAEDecodeTiled) on the tiny LTX-2.0 files saved under the 2.3 template's names
    (the graph is the same for both model generations). Made smaller: 64×64, 1 second at 8 fps (9 frames)."""
    import numpy as np
    from PIL import Image

    _files(tiny_ltx2, "ltx-2.3-22b-distilled-fp8.safetensors", "gemma_3_12B_it_fp4_mixed.safetensors")
    ltx2_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("low_view_classic_car.png", "high_view_classic_car.png")):
        Image.fromarray(np.random.default_rng(30 + i).integers(0, 256, (72, 80, 3), dtype=np.uint8), "RGB").save(
            ltx2_engine.paths.input_dir / name)
    api = _template_api("video_ltx2_3_flf2v", ltx2_engine.registry)
    set_primitive_ints(api, {5: 1, 25: 8, 1280: 64, 720: 64})
    _, executed = _run(ltx2_engine, api, ("LTXVCropGuides",))
    assert executed.count("LTXVAddGuide") == 2


def test_comfy_ltx2_t2v_template_runs(ltx2_engine, tiny_ltx2):
    """``video_ltx2_t2v`` (dev model: LTXVScheduler on the audio-video latent, CFG 4; then the distilled LoRA through
    LoraLoaderModelOnly for the upscaled refine at CFG 1) on tiny files, the LoRA a small one in LTX's names
    under the template's LoRA name. Made smaller: 128×128 before the ×0.5, 9 frames, 3 steps instead of 20."""
    from tests.dit.tiny_ltx2 import save_lora

    _files(tiny_ltx2, "ltx-2-19b-dev-fp8.safetensors", "gemma_3_12B_it_fp4_mixed.safetensors",
           "ltx-2-spatial-upscaler-x2-1.0.safetensors")
    save_lora(tiny_ltx2.root, "ltx-2-19b-distilled-lora-384.safetensors")
    api = _template_api("video_ltx2_t2v", ltx2_engine.registry)
    set_inputs(api, {"EmptyImage": dict(width=128, height=128), "LTXVScheduler": {"steps": 3}})
    set_primitive_ints(api, {121: 9})
    _run(ltx2_engine, api, ("LTXVScheduler", "LoraLoaderModelOnly", "LTXVCropGuides", "LTXVLatentUpsampler"))


def test_comfy_ltx2_3_id_lora_template_runs_on_ltx2(ltx2_engine, tiny_ltx2):
    """``video_ltx2_3_id_lora`` (the distilled LoRA at 0.5, the ID-LoRA, LTXVReferenceAudio with identity guidance
    3 on a reference clip; two stages with LTXVImgToVideoInplace, LTXVLatentUpsampler, LTXVCropGuides) on the tiny
    LTX-2.0 files under the 2.3 template's names, tiny LoRAs under its LoRA names. Made smaller: 128×128 (64×64
    sampled first), 0.32 s at 25 fps (9 frames), the image's longer side 128."""
    import wave

    import numpy as np
    from PIL import Image

    from tests.dit.tiny_ltx2 import save_lora

    _files(tiny_ltx2, "ltx-2.3-22b-dev-fp8.safetensors", "gemma_3_12B_it_fp4_mixed.safetensors",
           "ltx-2.3-spatial-upscaler-x2-1.1.safetensors")
    for name in ("ltx_2.3_22b_distilled_1.1_lora_dynamic_fro09_avg_rank_111_bf16.safetensors",
                 "ltx-2.3-id-lora-talkvid-3k.safetensors"):
        save_lora(tiny_ltx2.root, name)
    inputs = ltx2_engine.paths.input_dir
    inputs.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (90, 70, 3), dtype=np.uint8), "RGB").save(
        inputs / "vintage_thinker.png")
    t = np.arange(8000) / 16000
    with wave.open(str(inputs / "ltx23_reference_audio.mp3"), "wb") as w:  # WAV data: decoded by content
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(2 * np.pi * 220 * t) * 9000).astype(np.int16).tobytes())
    api = _template_api("video_ltx2_3_id_lora", ltx2_engine.registry)
    set_primitive_ints(api, {1280: 128, 720: 128})
    for n in api.values():
        if n["class_type"] == "PrimitiveFloat" and n["inputs"].get("value") == 10:
            n["inputs"]["value"] = 0.32
        if n["class_type"] == "ResizeImageMaskNode" and n["inputs"]["resize_type"] == "scale longer dimension":
            n["inputs"]["resize_type.longer_size"] = 128
    _, executed = _run(ltx2_engine, api,
                       ("LTXVReferenceAudio", "LTXVLatentUpsampler", "LTXVCropGuides", "LTXVAudioVAEDecode"))
    assert executed.count("LoraLoaderModelOnly") == 2


def test_comfy_ltx2_3_ic_lora_ingredients_template_runs_on_ltx2(ltx2_engine, tiny_ltx2):
    """``template_ltx2_3_ic_lora_ingredients`` (the IC-LoRA through LoraLoaderModelOnly, GetICLoRAParameters →
    LTXVAddGuide with a repeated reference image as the guide video, KSampler euler_ancestral, LTXVCropGuides) on
    the tiny LTX-2.0 files under the 2.3 template's names, the IC-LoRA a tiny one whose metadata says
    ``reference_downscale_factor`` 2 (the guide dilated). Made smaller: 128×128, 9 frames at 9 fps, 2 steps."""
    import numpy as np
    from PIL import Image

    from tests.dit.tiny_ltx2 import save_lora

    _files(tiny_ltx2, "ltx-2.3-22b-distilled-fp8.safetensors", "gemma_3_12B_it_fp4_mixed.safetensors")
    save_lora(tiny_ltx2.root, "ltx-2.3-22b-ic-lora-ingredients-0.9.safetensors", {"reference_downscale_factor": "2"})
    # the prompt-enhancer branch's Gemma LoRA: validated, not run (ComfySwitchNode takes the written prompt)
    save_lora(tiny_ltx2.root, "gemma-3-12b-it-abliterated_lora_rank64_bf16.safetensors")
    ltx2_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (80, 100, 3), dtype=np.uint8), "RGB").save(
        ltx2_engine.paths.input_dir / "german_shepherd_news_anchor_ref.png")
    api = _template_api("template_ltx2_3_ic_lora_ingredients", ltx2_engine.registry)
    for n in api.values():  # the length (5 s × 25 fps) and rate primitives; others take links
        if n["class_type"] == "PrimitiveInt" and n["inputs"]["value"] in (5, 25):
            n["inputs"]["value"] = {5: 1, 25: 9}[n["inputs"]["value"]]
    set_inputs(api, {"ResizeAndPadImage": dict(target_width=128, target_height=128), "KSampler": {"steps": 2}})
    result, executed = _run(ltx2_engine, api, ("GetICLoRAParameters", "LTXVAddGuide", "LTXVCropGuides", "KSampler"))
    assert "TextGenerateLTX2Prompt" not in executed
    guide = next(n for n in result.executed if api[n]["class_type"] == "LTXVAddGuide")
    assert result.value(guide, 2)["samples"].shape == (1, 128, 4, 4, 4)  # 2 video + 2 dilated guide frames


def test_comfy_ltx2_3_ic_lora_template_runs_on_ltx2(ltx2_engine, tiny_ltx2):
    """``video_ltx2_3_ic_lora`` (the union-control IC-LoRA; MoGe depth of the control video's frames as the guide
    video through LTXVAddGuide, the first image in place, KSampler, LTXVCropGuides) on the tiny LTX-2.0 files under
    the 2.3 template's names and the tiny MoGe-2 file (tests/helpers/tiny_moge.py). Made smaller: 128×128, a
    9-frame 32×48 control video, MoGe at resolution level 0 (9 → 0), 2 steps."""
    import av
    import numpy as np
    from PIL import Image

    from tests.dit.tiny_ltx2 import save_lora
    from tests.helpers.tiny_moge import save_tiny_moge

    _files(tiny_ltx2, "ltx-2.3-22b-distilled-fp8.safetensors", "gemma_3_12B_it_fp4_mixed.safetensors")
    save_lora(tiny_ltx2.root, "ltx-2.3-22b-ic-lora-union-control-ref0.5.safetensors")
    save_lora(tiny_ltx2.root, "gemma-3-12b-it-abliterated_lora_rank64_bf16.safetensors")  # validated, not run
    save_tiny_moge(tiny_ltx2.root / "models" / "geometry_estimation", "moge_2_vitl_normal_fp16.safetensors")
    inputs = ltx2_engine.paths.input_dir
    inputs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8), "RGB").save(inputs / "the_forgotten_gate.png")
    with av.open(str(inputs / "stone_ruins.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        base = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
        for i in range(9):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    api = _template_api("video_ltx2_3_ic_lora", ltx2_engine.registry)
    set_primitive_ints(api, {1280: 128, 704: 128})
    set_inputs(api, {"MoGeInference": {"resolution_level": 0}, "KSampler": {"steps": 2}})
    result, executed = _run(ltx2_engine, api, ("LoadMoGeModel", "MoGeInference", "MoGeRender", "GetICLoRAParameters",
                                               "LTXVAddGuide", "LTXVCropGuides", "KSampler"))
    assert "TextGenerateLTX2Prompt" not in executed
    depth = next(n for n in result.executed if api[n]["class_type"] == "MoGeRender"
                 and api[n]["inputs"]["output"] == "depth")
    frames = result.value(depth, 0)
    assert frames.shape == (9, 32, 48, 3) and torch.equal(frames[..., 0], frames[..., 2])


#: node types of the package's LTX templates that nodegraph does not have yet
MISSING_NODE_TYPES: set[str] = set()
#: how many of them (BROKEN apart) validate with file errors only
MIN_CLEAN = 19
#: a template shipped broken: its subgraph's VIDEO output names link 265, which the subgraph's links lack, so
#: SaveVideo gets no video (ComfyUI's frontend drops the input the same way; see tests/test_ui_format.py)
BROKEN = "video_ltx2_i2v_lora.json"


def test_ltx_templates_validate_with_file_errors_only():
    from nodegraph.registry import default_registry
    from nodegraph.validation import validate
    from nodegraph.workflow.loader import load_workflow_data

    from tests.helpers.package_templates import check_templates

    paths = package_templates(lambda name: "ltx" in name.lower())
    assert len(paths) >= 20
    registry = default_registry(packs=False)
    check = check_templates([p for p in paths if p.name != BROKEN], registry)
    check.assert_missing(MISSING_NODE_TYPES)
    assert len(check.clean) >= MIN_CLEAN, check.clean
    broken = next(p for p in paths if p.name == BROKEN)
    data = json.loads(broken.read_text())
    sub = data["definitions"]["subgraphs"][0]
    assert 265 in sub["outputs"][0]["linkIds"] and all(link["id"] != 265 for link in sub["links"]), \
        "the template's subgraph output link is back: take it off BROKEN"
    from nodegraph.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as failed:
        validate(load_workflow_data(data, registry).api, registry)
    other = [str(e) for e in failed.value.errors if not any(s in str(e) for s in ("not one of its choices",
                                                                                   "not found in inputs"))]
    assert len(other) == 1 and "SaveVideo" in other[0] and "'video'" in other[0], other
