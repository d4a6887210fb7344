"""ComfyUI's official HunyuanVideo 1.5 templates (the installed ``comfyui_workflow_templates_json`` package):
both validate with file errors only (model files, the i2v input image), and both run end to end on the tiny
model saved under their file names."""

from __future__ import annotations

from nodegraph.registry import default_registry

from tests.dit.template_runs import package_template_api, run_template, saved_video_frames
from tests.dit.test_hunyuan_video15 import _start_image, hv15_engine, tiny_hv15  # noqa: F401 (fixtures)
from tests.helpers.package_templates import check_templates, package_templates

#: node types of the package's HunyuanVideo 1.5 templates that nodegraph does not have yet (the bypassed 1080p
#: super-resolution nodes of both templates are not counted: bypassed nodes leave the API prompt)
MISSING_NODE_TYPES: set[str] = set()
TEMPLATES = ("video_hunyuan_video_1.5_720p_t2v.json", "video_hunyuan_video_1.5_720p_i2v.json")


def test_hunyuan_video15_templates_validate_with_file_errors_only():
    paths = package_templates(lambda name: name in TEMPLATES)
    assert len(paths) == 2
    check = check_templates(paths, default_registry(packs=False))
    check.assert_missing(MISSING_NODE_TYPES)
    assert sorted(check.clean) == sorted(TEMPLATES), check.clean


def _template_files(tiny) -> None:
    from tests.dit.tiny_qwen import copy_as

    copy_as(tiny.root, {"diffusion_models/tiny_hv15_t2v.safetensors":
                        "diffusion_models/hunyuanvideo1.5_720p_t2v_fp16.safetensors",
                        "diffusion_models/tiny_hv15_i2v.safetensors":
                        "diffusion_models/hunyuanvideo1.5_720p_i2v_fp16.safetensors",
                        "text_encoders/tiny_qwen25vl.safetensors":
                        "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
                        "text_encoders/tiny_byt5.safetensors": "text_encoders/byt5_small_glyphxl_fp16.safetensors",
                        "vae/tiny_hv15_vae.safetensors": "vae/hunyuanvideo15_vae_fp16.safetensors",
                        "clip_vision/tiny_siglip.safetensors": "clip_vision/sigclip_vision_patch14_384.safetensors"})


def test_comfy_hunyuan_video15_t2v_template_runs(hv15_engine, tiny_hv15):
    """``video_hunyuan_video_1.5_720p_t2v`` (DualCLIPLoader hunyuan_video_15, UNETLoader, VAELoader,
    ModelSamplingSD3 7, CFGGuider 6, BasicScheduler simple, euler, SamplerCustomAdvanced, VAEDecode, CreateVideo,
    SaveVideo) on the tiny files under its names; made smaller: 32×32, 5 frames (1280×720, 121) and 2 steps
    (20)."""
    _template_files(tiny_hv15)
    api = package_template_api("video_hunyuan_video_1.5_720p_t2v", hv15_engine.registry)
    kinds = {n["class_type"] for n in api.values()}
    assert {"DualCLIPLoader", "EmptyHunyuanVideo15Latent", "SamplerCustomAdvanced", "SaveVideo"} <= kinds
    run_template(hv15_engine, api, {"EmptyHunyuanVideo15Latent": dict(width=32, height=32, length=5),
                                    "BasicScheduler": dict(steps=2)})
    assert saved_video_frames(hv15_engine.paths.output_dir) == 5


def test_comfy_hunyuan_video15_i2v_template_runs(hv15_engine, tiny_hv15):
    """``video_hunyuan_video_1.5_720p_i2v`` (LoadImage, CLIPVisionLoader + CLIPVisionEncode center, DualCLIPLoader,
    HunyuanVideo15ImageToVideo, the t2v template's sampling) on the tiny files and a 32×32 start image under its
    names; made smaller: 32×32, 5 frames (1280×720, 121) and 2 steps (20)."""
    _template_files(tiny_hv15)
    start = _start_image(hv15_engine.paths.input_dir)
    start.save(hv15_engine.paths.input_dir / "video_hunyuan_video_1.5_720p_i2v_input_image.png")
    api = package_template_api("video_hunyuan_video_1.5_720p_i2v", hv15_engine.registry)
    assert {"CLIPVisionEncode", "HunyuanVideo15ImageToVideo", "SaveVideo"} <= {n["class_type"] for n in api.values()}
    run_template(hv15_engine, api, {"HunyuanVideo15ImageToVideo": dict(width=32, height=32, length=5),
                                    "BasicScheduler": dict(steps=2)})
    assert saved_video_frames(hv15_engine.paths.output_dir) == 5
