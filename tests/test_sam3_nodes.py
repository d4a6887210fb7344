"""SAM 3 (nodes/mask/sam3_*.py) on a tiny random SAM 3 detector from transformers' real ``Sam3Model``, saved in
the Meta layout of ComfyUI's ``sam3.1_multiplex_fp16.safetensors`` (tests/helpers/tiny_sam3.py):
CheckpointLoaderSimple reads it into the same weights; CLIPTextEncode + SAM3_Detect give the masks, boxes and
scores of transformers' Sam3Model + Sam3Processor post-processing; the video nodes track, select and preview;
ComfyUI's utility_image_segment_sam3 template runs end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nodegraph.registry import default_registry
from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.mask import sam3_loading
from nodegraph_nodes.mask.sam3_track import Sam3TrackData, _Tracker, selected_objects
from tests.helpers.engines import make_engine
from tests.helpers.tiny_sam3 import build_sam3

CKPT = "sam3.1_multiplex_fp16.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_sam3(tmp_path_factory.mktemp("sam3"))


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny.models_dir.parent, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def _image(seed: int = 1, size: int = 1008) -> torch.Tensor:
    """An IMAGE ``[1, size, size, 3]`` of 8-bit values (so the processor's uint8 path sees the same pixels)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (1, 3, 9, 9), generator=g).float()
    return (torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear").round() / 255).movedim(1, -1)


@dataclass
class Reference:
    scores: torch.Tensor
    boxes: torch.Tensor
    #: the processor's rule: sigmoid, resize, over 0.5
    masks: torch.Tensor
    #: ComfyUI's rule on the same logits: resize, over 0 (differs only where the two resizes disagree)
    comfy_masks: torch.Tensor
    probs: torch.Tensor


def _reference(tiny, image: torch.Tensor, text: str, threshold: float, keep: int):
    """transformers' Sam3Model on the Sam3Processor's inputs, post-processed as its
    ``post_process_instance_segmentation`` does (sigmoid scores over ``threshold``; sigmoid masks resized
    bilinearly to the image, over 0.5; boxes scaled to pixels), scored as ComfyUI's SAM3_Detect does (the
    query score alone, no presence factor), best ``keep`` first. (Sam3ImageProcessor itself needs torchvision,
    which this environment lacks: its steps for an image already 1008 x 1008 are the rescale to 0..1 and the
    0.5 / 0.5 normalisation written here; the tokenizer pads to 32 as Sam3Processor asks.)"""
    pixels = ((image.movedim(-1, 1) * 255).round() / 255 - 0.5) / 0.5
    tokens = tiny.tokenizer(text, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = tiny.model(pixel_values=pixels, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    probs = out.pred_logits[0].sigmoid()
    h, w = image.shape[1:3]
    kept = torch.nonzero(probs > threshold).flatten()
    kept = kept[probs[kept].argsort(descending=True)][:keep]
    boxes = out.pred_boxes[0, kept] * torch.tensor([w, h, w, h])
    logits = out.pred_masks[0, kept]
    resize = lambda m: torch.nn.functional.interpolate(m[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    masks = (resize(logits.sigmoid()) > 0.5).float() if len(kept) else logits
    comfy = (resize(logits) > 0).float() if len(kept) else logits
    return Reference(probs[kept], boxes, masks, comfy, probs)


def _values(result, node: str) -> tuple:
    """A node's outputs in a run (one call: each output's single item)."""
    return tuple(items[0] for items in result.values[node])


def _run_detect(engine, text: str, threshold: float, individual: bool, image: torch.Tensor, paths_input: Path):
    from PIL import Image

    paths_input.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(paths_input / "in.png")
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "4": {"class_type": "SAM3_Detect", "inputs": {"model": ["1", 0], "image": ["3", 0], "conditioning": ["2", 0],
                                                      "threshold": threshold, "refine_iterations": 0,
                                                      "individual_masks": individual}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
        "6": {"class_type": "MaskPreview", "inputs": {"mask": ["4", 0]}},
    }
    return _values(engine.run(api).raise_for_status(), "4")


@pytest.mark.parametrize("multiplex", [False, True], ids=["sam3", "sam3.1"])
def test_checkpoint_layout_loads_the_same_weights(tmp_path, multiplex):
    tiny = build_sam3(tmp_path, multiplex=multiplex)
    sd = load_file(str(tiny.checkpoint))
    assert sam3_loading.is_checkpoint(sd) and (sam3_loading.SAM31_KEY in sd) == multiplex
    model = sam3_loading.build_model(sd, torch.float32)
    ref, got = tiny.model.state_dict(), model.state_dict()
    assert set(ref) == set(got)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_checkpoint_with_unknown_or_missing_weights_is_refused(tiny):
    sd = load_file(str(tiny.checkpoint))
    with pytest.raises(ModelFileError, match="not understood"):
        sam3_loading.build_model({**sd, "detector.transformer.decoder.bogus.weight": torch.zeros(2)}, torch.float32)
    del sd["detector.transformer.decoder.norm.weight"]
    with pytest.raises(ModelFileError, match="missing"):
        sam3_loading.build_model(sd, torch.float32)


def test_parse_prompts_as_comfyui():
    assert sam3_loading.parse_prompts("eye:2, window panels:4") == [("eye", 2), ("window panels", 4)]
    assert sam3_loading.parse_prompts("(guitar)") == [("guitar", 1)]
    assert sam3_loading.parse_prompts("cat: 2.6,, dog") == [("cat", 3), ("dog", 1)]


@pytest.mark.parametrize("individual", [True, False])
def test_detect_equals_transformers(tiny, engine, tmp_path, individual):
    image = _image()
    probs = _reference(tiny, image, "red fox", 0.0, 200).probs
    threshold = float(probs.sort(descending=True).values[3:5].mean())  # three queries pass
    ref = _reference(tiny, image, "red fox", threshold, 3)
    assert len(ref.scores) == 3 and ref.masks.sum() > 0
    out_masks, out_boxes = _run_detect(engine, "red fox:3", threshold, individual, image, tmp_path / "input")
    got = out_boxes[0]
    assert [b["score"] for b in got] == pytest.approx(ref.scores.tolist(), abs=1e-4)
    xyxy = [[b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]] for b in got]
    assert torch.tensor(xyxy) == pytest.approx(ref.boxes, abs=1e-3)
    for masks, tolerance in ((ref.comfy_masks, 1e-5), (ref.masks, 1e-4)):  # share of pixels that differ
        expected = masks if individual else masks.amax(0, keepdim=True)
        assert out_masks.shape == expected.shape
        assert (out_masks - expected).abs().mean() <= tolerance


def test_detect_keeps_one_detection_per_plain_prompt(tiny, engine, tmp_path):
    image = _image(seed=2)
    probs = _reference(tiny, image, "cat", 0.0, 200).probs
    threshold = float(probs.sort(descending=True).values[3:5].mean())
    ref = _reference(tiny, image, "cat", threshold, 1)
    out_masks, out_boxes = _run_detect(engine, "cat", threshold, True, image, tmp_path / "input")
    assert len(out_boxes[0]) == 1 and out_boxes[0][0]["score"] == pytest.approx(float(ref.scores[0]), abs=1e-4)
    assert (out_masks - ref.comfy_masks).abs().mean() <= 1e-5


def test_tracker_matches_detections_by_iou():
    tracker = _Tracker(3, 4, 4, cap=3)
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[:2, :2] = True
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[2:, 2:] = True
    tracker.seed(a[None])
    tracker.update(0, torch.stack([b, a]), torch.tensor([0.9, 0.8]))  # a continues the seed, b is new
    tracker.update(1, torch.stack([a]), torch.tensor([0.7]))  # b lost on frame 1
    tracker.carry(2)
    data = tracker.result()
    assert data.masks.shape == (3, 2, 4, 4) and data.scores == (1.0, pytest.approx(0.9))
    assert torch.equal(data.masks[:, 0], torch.stack([a, a, a]))
    assert torch.equal(data.masks[:, 1], torch.stack([b, torch.zeros_like(b), torch.zeros_like(b)]))
    assert selected_objects("1, x, 7", 2) == [1] and selected_objects("", 2) == [0, 1]


def test_video_track_to_mask_and_preview(tiny, engine, tmp_path):
    (tmp_path / "input").mkdir(exist_ok=True)
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "red fox", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 112, "height": 112, "batch_size": 3, "color": 0}},
        "4": {"class_type": "SAM3_VideoTrack", "inputs": {"images": ["3", 0], "model": ["1", 0],
                                                          "conditioning": ["2", 0],
                                                          "detection_threshold": 0.0, "max_objects": 2,
                                                          "detect_interval": 2}},
        "5": {"class_type": "SAM3_TrackToMask", "inputs": {"track_data": ["4", 0], "object_indices": "1"}},
        "6": {"class_type": "MaskPreview", "inputs": {"mask": ["5", 0]}},
        "7": {"class_type": "SAM3_TrackPreview", "inputs": {"track_data": ["4", 0], "images": ["3", 0],
                                                            "opacity": 0.5, "fps": 8.0}},
    }
    result = engine.run(api).raise_for_status()
    data = _values(result, "4")[0]
    assert isinstance(data, Sam3TrackData) and data.masks.shape == (3, 2, 112, 112)  # threshold 0: capped at 2
    assert torch.equal(data.masks[1], data.masks[0])  # frame 1 carries frame 0 (detect_interval 2)
    assert torch.equal(data.masks[2], data.masks[0])  # the same frame again: each detection continues its object
    assert data.masks[0, 0].any() and data.masks[0, 1].any()
    mask = _values(result, "5")[0]
    assert torch.equal(mask, data.masks[:, 1].float())
    ui = result.outputs["7"]
    video = tmp_path / "temp" / ui["images"][0]["filename"]
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3


def test_image_segment_template_runs(tiny, engine, tmp_path):
    """ComfyUI's utility_image_segment_sam3 (CheckpointLoaderSimple → CLIPTextEncode → SAM3_Detect → masks,
    JoinImageWithAlpha, previews) on the tiny file."""
    from PIL import Image

    from tests.dit.template_runs import package_template_api, run_template

    api = package_template_api("utility_image_segment_sam3", default_registry(packs=False))
    (tmp_path / "input").mkdir(exist_ok=True)
    Image.fromarray((_image(seed=4, size=96)[0].numpy() * 255).astype(np.uint8)).save(tmp_path / "input" / "in.png")
    result = run_template(engine, api, {"LoadImage": {"image": "in.png"}, "SAM3_Detect": {"threshold": 0.0}})
    detect = next(i for i, n in api.items() if n["class_type"] == "SAM3_Detect")
    masks, boxes = _values(result, detect)
    assert masks.shape == (1, 96, 96) and len(boxes[0]) == 1  # "guitar": one detection kept
    assert json.dumps(boxes)


def test_wan_vace_inpainting_template_runs(tmp_path_factory, tmp_path):
    """ComfyUI's video_wan_vace_inpainting: SAM3_Detect ("cat") masks the frames of a clip, GrowMask, the masked
    frames and masks go to WanVaceToVideo; on the tiny Wan 2.1 VACE files (tests/dit/tiny_wan_vace.py) and the
    tiny SAM 3 file in one models folder. Made smaller: 32 x 32 frames (the template's two 720 primitives), 5 of
    them (ImageFromBatch's 81); detection threshold 0 so the mask is not empty."""
    from PIL import Image

    from tests.dit.template_runs import package_template_api, saved_video_frames, set_inputs
    from tests.dit.test_wan_vace import write_mp4, write_original_lora
    from tests.dit.tiny_qwen import copy_as
    from tests.dit.tiny_wan_vace import VACE_FILE, build_wan_vace

    wan = build_wan_vace(tmp_path_factory.mktemp("wan_vace_sam3"))
    build_sam3(wan.root)
    copy_as(wan.root, {
        f"diffusion_models/{VACE_FILE}": "diffusion_models/wan2.1_vace_14B_fp16.safetensors",
        "text_encoders/tiny_umt5_xxl.safetensors": "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "vae/tiny_wan_2.1_vae.safetensors": "vae/wan_2.1_vae.safetensors"})
    loras = wan.root / "models" / "loras"
    loras.mkdir(exist_ok=True)
    write_original_lora(wan.transformer, loras / "Wan21_CausVid_14B_T2V_lora_rank32.safetensors")
    engine = make_engine(wan.root, tmp_path, default_registry(packs=False))
    try:
        engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
        write_mp4(engine.paths.input_dir / "video_wan_vace_inpainting_input_video.mp4", 6)
        Image.fromarray(np.random.default_rng(8).integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB").save(
            engine.paths.input_dir / "api_bfl_flux_1_kontext_multiple_images_input_dog.jpg")
        api = package_template_api("video_wan_vace_inpainting", engine.registry)
        for n in api.values():
            if n["class_type"] == "PrimitiveInt" and n["inputs"]["value"] == 720:
                n["inputs"]["value"] = 32
            if n["class_type"] == "ImageFromBatch" and n["inputs"]["length"] == 81:
                n["inputs"]["length"] = 5
        set_inputs(api, {"SAM3_Detect": {"threshold": 0.0}})
        result = engine.run(api).raise_for_status()
        executed = {api[n]["class_type"] for n in result.executed}
        assert {"SAM3_Detect", "GrowMask", "WanVaceToVideo", "KSampler", "SaveVideo"} <= executed  # lazy switches
        detect = next(i for i, n in api.items() if n["class_type"] == "SAM3_Detect")
        masks = _values(result, detect)[0]
        assert masks.shape == (5, 32, 32) and masks.any()
        assert saved_video_frames(engine.paths.output_dir) == 5
    finally:
        engine.close()


#: the utility templates that load a SAM 3 file, and the node types of theirs nodegraph does not have yet
SAM3_TEMPLATES = ("utility_image_segment_sam3", "utility_video_segment_sam3", "utility_void_video_inpainting",
                  "utility_sam3d_body")
MISSING_NODE_TYPES = {
    "BuildPoseFile", "MoGeGeometryToFOV", "OpticalFlowLoader", "RTDETR_detect",
    "SAM3DBody_FaceExpression", "SAM3DBody_Loader", "SAM3DBody_Predict", "SAM3DBody_Render", "SAM3DBody_Smooth",
    "Save3DAdvanced", "VOIDInpaintConditioning", "VOIDSampler", "VOIDWarpedNoise", "VOIDWarpedNoiseSource",
}


def test_sam3_templates_validate_with_file_errors_only():
    from tests.helpers.package_templates import check_templates, package_templates

    paths = package_templates(lambda n: n[:-len(".json")] in SAM3_TEMPLATES)
    assert len(paths) == len(SAM3_TEMPLATES)
    check = check_templates(paths, default_registry(packs=False))
    check.assert_missing(MISSING_NODE_TYPES)
    assert sorted(check.clean) == ["utility_image_segment_sam3.json", "utility_video_segment_sam3.json"]


def test_detect_runs_each_comma_separated_prompt(tiny, engine, tmp_path):
    """``"red fox:2, cat"``: two prompts (ComfyUI's sam3_multi_cond), each detected on its own, in order."""
    image = _image(seed=5)
    threshold = float(_reference(tiny, image, "cat", 0.0, 200).probs.sort(descending=True).values[4])
    refs = [_reference(tiny, image, "red fox", threshold, 2), _reference(tiny, image, "cat", threshold, 1)]
    out_masks, out_boxes = _run_detect(engine, "red fox:2, cat", threshold, True, image, tmp_path / "input")
    expected = torch.cat([r.scores for r in refs]).tolist()
    assert len(expected) >= 2
    assert [b["score"] for b in out_boxes[0]] == pytest.approx(expected, abs=1e-4)
    assert (out_masks - torch.cat([r.comfy_masks for r in refs])).abs().mean() <= 1e-5
