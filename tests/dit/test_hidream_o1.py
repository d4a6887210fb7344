"""HiDream-O1-Image on a tiny random model built from transformers' Qwen3-VL classes and saved as the
all-in-one checkpoint: the engine's samples equal the official code's (recorded in
tests/data/hidream_o1_official, see its README) for text-to-image, one reference (edit) and two references;
ComfyUI's dev template runs end to end; the four nodes' behaviour."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from nodegraph.registry import default_registry

from tests.dit.tiny_hidream_o1 import build_hidream_o1
from tests.helpers.engines import make_engine

OFFICIAL = Path(__file__).resolve().parents[1] / "data" / "hidream_o1_official" / "official_outputs.safetensors"
CKPT = "hidream_o1_image_bf16.safetensors"


@pytest.fixture(scope="module")
def o1_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hidream_o1_models")
    build_hidream_o1(root)
    return root


@pytest.fixture
def engine(o1_root, tmp_path):
    eng = make_engine(o1_root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def _reference_images(folder: Path) -> list[str]:
    """The README's two reference images, written into the engine's input folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(folder / "ref.png")
    Image.fromarray(rng.integers(0, 255, (100, 60, 3), dtype=np.uint8)).save(folder / "ref2.png")
    return ["ref.png", "ref2.png"]


def graph(prompt: str, seed: int, refs: list[str] = (), sigmas: str = "1.0, 0.75, 0.5, 0.25, 0",
          sampler: str = "euler", model_patch: dict | None = None, size: tuple[int, int] = (64, 96),
          cfg: float = 1.0, negative: str = "") -> dict:
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": prompt}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": negative}},
        "4": {"class_type": "EmptyHiDreamO1LatentImage",
              "inputs": {"width": size[0], "height": size[1], "batch_size": 1}},
        "5": {"class_type": "ModelNoiseScale", "inputs": {"model": ["1", 0], "noise_scale": 8.0}},
        "6": {"class_type": "ManualSigmas", "inputs": {"sigmas": sigmas}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "8": {"class_type": "SamplerCustom", "inputs": {"model": ["5", 0], "add_noise": True, "noise_seed": seed,
                                                       "cfg": cfg, "positive": ["2", 0], "negative": ["3", 0],
                                                       "sampler": ["7", 0], "sigmas": ["6", 0],
                                                       "latent_image": ["4", 0]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
    }
    if model_patch is not None:
        api["12"] = {"class_type": "HiDreamO1PatchSeamSmoothing", "inputs": {"model": ["5", 0], **model_patch}}
        api["8"]["inputs"]["model"] = ["12", 0]
    if refs:
        api["11"] = {"class_type": "HiDreamO1ReferenceImages", "inputs": {"positive": ["2", 0], "negative": ["3", 0]}}
        for i, name in enumerate(refs):
            api[f"2{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
            api["11"]["inputs"][f"images.image_{i + 1}"] = [f"2{i}", 0]
        api["8"]["inputs"].update(positive=["11", 0], negative=["11", 1])
    return api


@pytest.mark.parametrize("case,prompt,seed,count,cfg", [("t2i", "a red fox in snow", 41, 0, 1.0),
                                                        ("edit", "make the sky green", 7, 1, 1.0),
                                                        ("two_refs", "a photo of a cat", 3, 2, 1.0),
                                                        ("t2i_cfg3", "a red fox in snow", 11, 0, 3.0),
                                                        ("edit_cfg3", "make the sky green", 12, 1, 3.0)])
def test_samples_match_the_official_code(engine, tmp_path, case, prompt, seed, count, cfg):
    """The official pipeline's noise is ``randn(seed + 1)`` × the noise scale, so the engine's seed is one more;
    its unconditional prompt is " " (with the same reference images)."""
    refs = _reference_images(tmp_path / "input")[:count]
    result = engine.run(graph(prompt, seed + 1, refs, cfg=cfg, negative=" ")).raise_for_status()
    samples = result.value("8", 0)["samples"]
    official = load_file(str(OFFICIAL))[case]
    assert samples.shape == official.shape == (1, 3, 96, 64)
    assert torch.allclose(samples, official, atol=1e-4), float((samples - official).abs().max())
    image = result.value("9", 0)
    assert torch.allclose(image, ((official / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1), atol=1e-4)


def test_references_change_the_sample(engine, tmp_path):
    refs = _reference_images(tmp_path / "input")
    plain = engine.run(graph("make the sky green", 5)).raise_for_status().value("8", 0)["samples"]
    edited = engine.run(graph("make the sky green", 5, refs[:1])).raise_for_status().value("8", 0)["samples"]
    assert (plain - edited).abs().max() > 1e-2


def test_seam_smoothing_blends_the_last_step_inside_the_borders(engine):
    """Smoothing only at the last step (start 0.85 is sigma 0.35 with shift 3, so only the step at 0.25 → 0,
    whose result is that step's x0): the outer 32 pixels
    stay the plain prediction (the roll wraps there), the inside changes; strength 0 is the plain model."""
    size = (128, 128)
    plain = engine.run(graph("blue sky", 9, size=size)).raise_for_status().value("8", 0)["samples"]
    patch = dict(start_percent=0.85, end_percent=1.0, pattern="single_shift", passes="2", blend="average",
                 strength=1.0)
    smoothed = engine.run(graph("blue sky", 9, model_patch=patch, size=size)).raise_for_status()
    smoothed = smoothed.value("8", 0)["samples"]
    border = torch.ones(128, 128, dtype=torch.bool)
    border[33:-33, 33:-33] = False  # 32 pixels from each edge keep the plain prediction
    assert torch.equal(smoothed[..., border], plain[..., border])
    assert (smoothed[..., ~border] - plain[..., ~border]).abs().max() > 1e-3
    off = engine.run(graph("blue sky", 9, model_patch={**patch, "strength": 0.0}, size=size)).raise_for_status()
    assert torch.equal(off.value("8", 0)["samples"], plain)


@pytest.mark.parametrize("name,kinds,shape", [
    ("image_hidream_o1_dev", {"SamplerLCM"}, (64, 96, 3)),  # the edit: the loaded image's size floored to 32
    ("image_hidream_o1", {"HiDreamO1PatchSeamSmoothing", "KSamplerSelect"}, (64, 64, 3))])  # text-to-image
def test_templates_run_end_to_end(o1_root, engine, tmp_path, name, kinds, shape):
    """ComfyUI's image_hidream_o1_dev (edit of a loaded image, SamplerLCM with per-step noise,
    ModelNoiseScale 7.6, cfg 1; its switch set to edit a 100×70 image) and image_hidream_o1 (the base model,
    switch set to text-to-image: dpmpp_2m_sde_gpu, cfg 5, seam smoothing with median blend over the last 20 %) with the tiny checkpoint under their file names, 3 steps; the
    optional prompt enhancement (a Gemma 4 TextGenerate subgraph behind a switch set to off) is dropped."""
    from tests.dit.template_runs import package_template_api

    api = package_template_api(name, default_registry(packs=False))
    (tmp_path / "input").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 100, 3), dtype=np.uint8)).save(
        tmp_path / "input" / "noir_portrait.png")
    enhancer = [k for k in api if k.startswith("175:")]
    prompt_source = next(v["inputs"]["on_false"] for v in api.values()
                         if v["class_type"] == "ComfySwitchNode" and v["inputs"].get("on_true", [None])[0] in enhancer)
    for k in enhancer:
        del api[k]
    for v in api.values():
        if v["class_type"] == "ComfySwitchNode" and isinstance(v["inputs"].get("on_true"), list) \
                and v["inputs"]["on_true"][0] in enhancer:
            v["inputs"]["on_true"] = prompt_source
        if v["class_type"] == "BasicScheduler":
            v["inputs"]["steps"] = 3
        if v["class_type"] == "EmptyHiDreamO1LatentImage" and not isinstance(v["inputs"]["width"], list):
            v["inputs"].update(width=64, height=64)  # the unused text-to-image latent
    present = {v["class_type"] for v in api.values()}
    assert {"ModelNoiseScale", "HiDreamO1ReferenceImages", "EmptyHiDreamO1LatentImage"} | kinds <= present
    models = o1_root / "models" / "checkpoints"
    ckpt = next(v["inputs"]["ckpt_name"] for v in api.values() if v["class_type"] == "CheckpointLoaderSimple")
    if not (models / ckpt).exists():
        shutil.copy(models / CKPT, models / ckpt)
    engine.run(api).raise_for_status()
    saved = sorted((tmp_path / "output").rglob("*.png"))
    assert saved, "SaveImage wrote no file"
    image = np.asarray(Image.open(saved[-1]))
    assert image.shape == shape
    assert image.std() > 1.0


def test_empty_latent_and_reference_images_nodes():
    from nodegraph_nodes.dit.hidream_o1_nodes import EmptyHiDreamO1LatentImage, HiDreamO1ReferenceImages

    latent = EmptyHiDreamO1LatentImage(None).execute(width=96, height=64, batch_size=2)[0]["samples"]
    assert latent.shape == (2, 3, 64, 96) and not latent.any()
    pos, neg = [[torch.zeros(1, 3, 1), {"a": 1}]], [[torch.zeros(1, 2, 1), {"reference_latents": ["x"]}]]
    node = HiDreamO1ReferenceImages(None)
    assert node.execute(pos, neg) == (pos, neg)
    img1, img2 = torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3)
    p, n = node.execute(pos, neg, **{"images.image_2": img2, "images.image_1": img1})
    assert p[0][1]["reference_latents"] == [img1, img2] and p[0][1]["a"] == 1
    assert n[0][1]["reference_latents"] == ["x", img1, img2]


def test_model_noise_scale_scales_the_noise_of_flow_models_only(o1_root):
    from nodegraph.models import ModelManager
    from nodegraph_nodes.dit.hidream_o1_loading import load_checkpoint
    from nodegraph_nodes.dit.hidream_o1_nodes import ModelNoiseScale
    from nodegraph_nodes.sampling import model_sampling as msl

    models = o1_root / "models"
    model, _, _ = load_checkpoint(models / "checkpoints" / CKPT, ModelManager("cpu"), "cpu", models)
    assert model.model_sampling.noise_scale == 8.0
    scaled = ModelNoiseScale(None).execute(model, 7.5)[0]
    noise, latent = torch.randn(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    expected = 0.4 * 7.5 * noise + 0.6 * latent
    assert torch.allclose(scaled.model_sampling.noise_scaling(torch.tensor(0.4), noise, latent), expected)
    assert model.model_sampling.noise_scale == 8.0

    class Eps:
        model_sampling = msl.discrete("eps")

        def with_model_sampling(self, ms):
            return self

    with pytest.raises(ValueError, match="flow-matching"):
        ModelNoiseScale(None).execute(Eps(), 2.0)


def test_prefix_detection():
    from nodegraph_nodes.dit.hidream_o1_loading import MARKERS, detect_prefix

    for prefix in ("model.", "model.diffusion_model.", ""):
        assert detect_prefix([prefix + m for m in MARKERS] + ["lm_head.weight"]) == prefix
    assert detect_prefix(["model.language_model.embed_tokens.weight"]) is None


class _HalfDenoiser:
    """A stand-in denoiser (denoised = half the input) with flow sampling of the given noise scale."""

    def __init__(self, noise_scale: float):
        import dataclasses

        from nodegraph_nodes.sampling import model_sampling as msl

        self.model_sampling = dataclasses.replace(msl.sd3_flow(3.0), noise_scale=noise_scale)
        self.seed, self.uncond_denoised = 5, None

    def __call__(self, x, sigma):
        return x * 0.5


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "lcm"])
def test_noise_scale_scales_the_samplers_fresh_noise_once(name):
    """The stochastic samplers' fresh noise grows with the model's noise scale (their s_noise times it, as
    ComfyUI's); LCM re-noises through noise_scaling, which applies it once."""
    from nodegraph_nodes.sampling.samplers import sampler_object

    x, sigmas = torch.ones(1, 3, 4, 4), torch.tensor([0.9, 0.6, 0.3])
    plain = sampler_object(name, {"s_noise": 0.0}).run(_HalfDenoiser(1.0), x, sigmas)
    one = sampler_object(name).run(_HalfDenoiser(1.0), x, sigmas) - plain
    three = sampler_object(name).run(_HalfDenoiser(3.0), x, sigmas) - plain
    assert one.abs().max() > 1e-2
    assert torch.allclose(three, 3 * one, atol=1e-5), float((three - 3 * one).abs().max())


def test_budget_streams_blocks_and_keeps_the_image(o1_root, tmp_path_factory, tmp_path):
    """--vram-budget-gb: the checkpoint in fp16 runs on the CPU with a budget smaller than the model, which
    streams block by block; the materialised weights stay under the budget and the edit (one reference)
    equals the unbudgeted run's."""
    from nodegraph.builder import Graph

    from tests.dit.offload_runs import budgeted_run, fp16_copy, unbudgeted_run

    root = fp16_copy(o1_root, tmp_path_factory.mktemp("hidream_o1_fp16"), [f"checkpoints/{CKPT}"])
    for mode in ("whole", "budget"):
        _reference_images(tmp_path / mode / "input")

    def build() -> Graph:
        api = graph("make the sky green", 8, ["ref.png"], sigmas="1.0, 0.5, 0")
        api["out"] = api.pop("9")
        api["10"]["inputs"]["images"] = ["out", 0]
        return Graph.from_api(api)

    registry = default_registry(packs=False)
    base = unbudgeted_run(root, tmp_path, registry, build)
    budgeted_run(root, tmp_path, registry, build, base, "budget")
    assert base.image.std() > 0.01


def test_mxfp8_files_are_dequantised_on_load(o1_root, tmp_path):
    """Comfy-Org's ``*_mxfp8`` file layout (``comfy_quant`` markers, e8m0 block scales; the 2-D weights whose sides
    are multiples of 32 quantised by comfy-kitchen) loads through CheckpointLoaderSimple's loader: the network
    holds comfy-kitchen's dequantised weights."""
    from nodegraph.models import ModelManager
    from nodegraph_nodes.dit.hidream_o1_loading import load_checkpoint
    from tests.helpers.comfy_quant import quantize_file

    path = tmp_path / "hidream_o1_image_dev_mxfp8.safetensors"
    references = quantize_file(o1_root / "models" / "checkpoints" / CKPT, path, "mxfp8",
                               lambda k, v: {} if v.ndim == 2 and v.shape[0] % 32 == 0 == v.shape[1] % 32 else None)
    assert len(references) > 10
    model, _, _ = load_checkpoint(path, ModelManager("cpu"), "cpu", o1_root / "models")
    weights = model.handle.get().state_dict()
    for key, reference in references.items():  # the network keeps the file's names
        assert torch.equal(weights[key], reference.to(weights[key].dtype)), key


def test_pixel_latent_preview_is_the_image():
    from nodegraph_nodes.dit.hidream_o1 import PIXELS

    x = torch.rand(1, 3, 4, 4) * 2 - 1
    assert torch.allclose(PIXELS.preview(x), ((x[0] + 1) / 2).permute(1, 2, 0))
