"""The mask family (nodes/mask/): /object_info entries against ComfyUI's specs (written out below), and
each node run through the engine or called with a test context."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.builder import Graph
from nodegraph.context import Paths
from nodegraph.errors import ValidationFailed
from nodegraph.node import NodeResult
from nodegraph.registry import default_registry
from nodegraph_nodes.mask import compositing as comp
from nodegraph_nodes.mask import files as mfiles
from nodegraph_nodes.mask import operations as ops

MAX = 16384
POS = {"default": 0, "min": 0, "max": MAX, "step": 1}
SIZE = {"default": 512, "min": 1, "max": MAX, "step": 1}

# name → (required inputs, optional inputs, outputs, output names), inputs as ComfyUI's /object_info
# writes them. LoadImageMask's image list depends on the input folder: checked in its own test.
COMFY_SPECS = {
    "MaskToImage": ({"mask": ["MASK", {}]}, {}, ["IMAGE"], ["IMAGE"]),
    "ImageToMask": ({"image": ["IMAGE", {}], "channel": [["red", "green", "blue", "alpha"], {"default": "red"}]},
                    {}, ["MASK"], ["MASK"]),
    "SolidMask": ({"value": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
                   "width": ["INT", SIZE], "height": ["INT", SIZE]}, {}, ["MASK"], ["MASK"]),
    "InvertMask": ({"mask": ["MASK", {}]}, {}, ["MASK"], ["MASK"]),
    "CropMask": ({"mask": ["MASK", {}], "x": ["INT", POS], "y": ["INT", POS], "width": ["INT", SIZE],
                  "height": ["INT", SIZE]}, {}, ["MASK"], ["MASK"]),
    "FeatherMask": ({"mask": ["MASK", {}], "left": ["INT", POS], "top": ["INT", POS], "right": ["INT", POS],
                     "bottom": ["INT", POS]}, {}, ["MASK"], ["MASK"]),
    "GrowMask": ({"mask": ["MASK", {}],
                  "expand": ["INT", {"default": 0, "min": -MAX, "max": MAX, "step": 1}],
                  "tapered_corners": ["BOOLEAN", {"default": True}]}, {}, ["MASK"], ["MASK"]),
    "ThresholdMask": ({"mask": ["MASK", {}],
                       "value": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}]},
                      {}, ["MASK"], ["MASK"]),
    "MaskComposite": ({"destination": ["MASK", {}], "source": ["MASK", {}], "x": ["INT", POS], "y": ["INT", POS],
                       "operation": [["multiply", "add", "subtract", "and", "or", "xor"], {"default": "multiply"}]},
                      {}, ["MASK"], ["MASK"]),
    "ImageCompositeMasked": ({"destination": ["IMAGE", {}], "source": ["IMAGE", {}], "x": ["INT", POS],
                              "y": ["INT", POS], "resize_source": ["BOOLEAN", {"default": False}]},
                             {"mask": ["MASK", {}]}, ["IMAGE"], ["IMAGE"]),
    "JoinImageWithAlpha": ({"image": ["IMAGE", {}], "alpha": ["MASK", {}]}, {}, ["IMAGE"], ["IMAGE"]),
    "SplitImageWithAlpha": ({"image": ["IMAGE", {}]}, {}, ["IMAGE", "MASK"], ["IMAGE", "MASK"]),
    # today's ComfyUI passes the mask through (comfy_extras/nodes_mask.py: IO.Mask.Output(display_name="mask"))
    "MaskPreview": ({"mask": ["MASK", {}]}, {}, ["MASK"], ["mask"]),
}


@pytest.mark.parametrize("name", sorted(COMFY_SPECS))
def test_object_info_matches_comfyui(name):
    required, optional, output, output_name = COMFY_SPECS[name]
    info = default_registry(packs=False).object_info(name)[name]
    assert info["input"]["required"] == required
    assert info["input"].get("optional", {}) == optional
    assert info["input_order"]["required"] == list(required)
    assert info["output"] == output and info["output_name"] == output_name
    assert info["category"] in ("mask", "mask/compositing", "image")


def test_load_image_mask_and_preview_specs(tmp_path):
    paths = Paths.under(tmp_path)
    paths.input_dir.mkdir(parents=True)
    Image.new("RGBA", (4, 4)).save(paths.input_dir / "b.png")
    Image.new("RGB", (4, 4)).save(paths.input_dir / "a.png")
    info = default_registry(packs=False).object_info("LoadImageMask", paths=paths)["LoadImageMask"]
    assert info["input"]["required"] == {
        "image": [["a.png", "b.png"], {"default": "a.png", "image_upload": True}],
        "channel": [["alpha", "red", "green", "blue"], {"default": "alpha"}]}
    assert info["output"] == ["MASK"] and info["display_name"] == "Load Image (as Mask)"
    preview = default_registry(packs=False).object_info("MaskPreview")["MaskPreview"]
    assert preview["output_node"] and preview["input"]["hidden"] == {"prompt": "PROMPT",
                                                                     "extra_pnginfo": "EXTRA_PNGINFO"}


# -- direct calls -----------------------------------------------------------------------------------

def ramp_mask(b: int = 1, h: int = 4, w: int = 5) -> torch.Tensor:
    return torch.arange(b * h * w, dtype=torch.float32).reshape(b, h, w) / (b * h * w)


def test_mask_image_conversions(make):
    mask = ramp_mask(2)
    (image,) = make(ops.MaskToImage).execute(mask)
    assert image.shape == (2, 4, 5, 3) and torch.equal(image[..., 1], mask)
    (single,) = make(ops.MaskToImage).execute(mask[0])                # [H,W] is a batch of one
    assert single.shape == (1, 4, 5, 3)
    rgba = torch.rand(1, 4, 5, 4)
    for index, channel in enumerate(["red", "green", "blue", "alpha"]):
        assert torch.equal(make(ops.ImageToMask).execute(rgba, channel)[0], rgba[..., index])
    with pytest.raises(ValueError, match="input 'channel' is 'alpha', but the image has 3"):
        make(ops.ImageToMask).execute(rgba[..., :3], "alpha")


def test_solid_invert_threshold(make):
    (solid,) = make(ops.SolidMask).execute(0.25, 6, 3)
    assert solid.shape == (1, 3, 6) and torch.all(solid == 0.25)
    assert torch.allclose(make(ops.InvertMask).execute(solid)[0], torch.full((1, 3, 6), 0.75))
    (binary,) = make(ops.ThresholdMask).execute(torch.tensor([[[0.2, 0.5, 0.51]]]), 0.5)
    assert binary.tolist() == [[[0.0, 0.0, 1.0]]]


def test_crop_mask(make):
    mask = ramp_mask(2)
    (crop,) = make(ops.CropMask).execute(mask, 1, 2, 3, 10)      # past the bottom: stops at the edge
    assert torch.equal(crop, mask[:, 2:4, 1:4])
    with pytest.raises(ValueError, match=r"inputs 'x', 'y' are \(5, 0\), outside the 5×4 mask"):
        make(ops.CropMask).execute(mask, 5, 0, 2, 2)


def test_feather_mask_ramps_mirror_each_other(make):
    ones = torch.ones(1, 4, 6)
    (out,) = make(ops.FeatherMask).execute(ones, 3, 0, 3, 2)
    row = [1 / 3, 2 / 3, 1.0, 1.0, 2 / 3, 1 / 3]
    assert torch.allclose(out[0, 0], torch.tensor(row))
    assert torch.allclose(out[0, 3], torch.tensor(row) * 0.5)      # bottom ramp over 2 rows: 1, then 1/2
    assert torch.allclose(out[0, :, 0], torch.tensor([1.0, 1.0, 1.0, 0.5]) / 3)
    (clamped,) = make(ops.FeatherMask).execute(ones, 100, 0, 0, 0)   # wider than the mask: the whole width
    assert torch.allclose(clamped[0, 0], torch.arange(1, 7) / 6)


@pytest.mark.parametrize("expand", [3, -2, 1])
@pytest.mark.parametrize("tapered", [True, False])
def test_grow_mask_matches_scipy_grey_morphology(make, expand, tapered):
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(4)
    mask = torch.from_numpy((rng.random((2, 9, 11)) > 0.7).astype(np.float32) * rng.random((2, 9, 11),
                                                                                            dtype=np.float32))
    (grown,) = make(ops.GrowMask).execute(mask, expand, tapered)
    c = 0 if tapered else 1
    footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    for index in range(2):
        expected = mask[index].numpy()
        for _ in range(abs(expand)):
            op = ndimage.grey_dilation if expand > 0 else ndimage.grey_erosion
            expected = op(expected, footprint=footprint)
        assert np.allclose(grown[index].numpy(), expected)
    assert torch.equal(make(ops.GrowMask).execute(mask, 0, tapered)[0], mask)


def test_mask_composite_operations(make):
    dest = torch.full((1, 4, 4), 0.5)
    src = torch.ones((1, 2, 3))
    expected = {"multiply": 0.5, "add": 1.0, "subtract": 0.0, "and": 0.0, "or": 1.0, "xor": 1.0}
    for operation, inside in expected.items():
        (out,) = make(ops.MaskComposite).execute(dest, src, 2, 1, operation)
        assert out.shape == (1, 4, 4)
        assert torch.allclose(out[0, 1:3, 2:4], torch.full((2, 2), inside)), operation  # clipped at the edge
        assert torch.all(out[0, 0] == 0.5) and torch.all(out[0, :, :2] == 0.5)   # outside: unchanged
    (two,) = make(ops.MaskComposite).execute(dest, torch.ones(2, 1, 1), 0, 0, "add")
    assert two.shape == (2, 4, 4)                         # one destination for a batch of two sources
    with pytest.raises(ValueError, match="outside the 4×4 destination"):
        make(ops.MaskComposite).execute(dest, src, 0, 4, "add")
    with pytest.raises(ValueError, match="input 'destination' has a batch of 2 and 'source' a batch of 3"):
        make(ops.MaskComposite).execute(torch.ones(2, 4, 4), torch.ones(3, 2, 2), 0, 0, "add")


def test_image_composite_masked(make):
    dest = torch.zeros(2, 4, 6, 3)
    src = torch.ones(1, 2, 2, 3)
    (out,) = make(comp.ImageCompositeMasked).execute(dest, src, 5, 3)
    assert out.shape == (2, 4, 6, 3)
    assert torch.all(out[:, 3:, 5:] == 1) and out.sum() == 2 * 1 * 1 * 3   # clipped to the visible corner
    mask = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])
    (masked,) = make(comp.ImageCompositeMasked).execute(dest, src, 0, 0, False, mask)
    assert masked[0, :2, :2, 0].tolist() == [[1.0, 0.0], [0.5, 0.0]]
    (resized,) = make(comp.ImageCompositeMasked).execute(dest, src, 0, 0, True)
    assert torch.all(resized == 1)
    rgba_dest = torch.zeros(1, 4, 6, 4)
    (kept,) = make(comp.ImageCompositeMasked).execute(rgba_dest, src, 0, 0)
    assert kept.shape[-1] == 4 and torch.all(kept[0, :2, :2] == 1)          # RGB source gets opaque alpha
    with pytest.raises(ValueError, match="outside the 6×4 destination"):
        make(comp.ImageCompositeMasked).execute(dest, src, 6, 0)
    with pytest.raises(ValueError, match="'mask' a batch of 3"):
        make(comp.ImageCompositeMasked).execute(dest, src, 0, 0, False, torch.ones(3, 2, 2))


def test_join_and_split_alpha_round_trip(make):
    images = torch.rand(4, 3, 5, 3)
    mask = torch.rand(1, 6, 10)                             # one mask, resized, for all four images
    (joined,) = make(comp.JoinImageWithAlpha).execute(images, mask)
    assert joined.shape == (4, 3, 5, 4)
    (rgb, back) = make(comp.SplitImageWithAlpha).execute(joined)
    assert torch.equal(rgb, images)
    expected = torch.nn.functional.interpolate(mask[:, None], size=(3, 5), mode="bilinear")[:, 0]
    assert torch.allclose(back, expected.expand(4, -1, -1), atol=1e-6)
    (_, no_alpha) = make(comp.SplitImageWithAlpha).execute(images)
    assert torch.all(no_alpha == 0) and no_alpha.shape == (4, 3, 5)
    with pytest.raises(ValueError, match="input 'image' has a batch of 4 and 'alpha' a batch of 2"):
        make(comp.JoinImageWithAlpha).execute(images, torch.rand(2, 3, 5))


def test_load_image_mask_channels(make, paths):
    pixels = np.zeros((3, 4, 4), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2], pixels[..., 3] = 255, 128, 0, 64
    Image.fromarray(pixels, "RGBA").save(paths.input_dir / "m.png")
    node = make(mfiles.LoadImageMask)
    assert torch.allclose(node.execute("m.png", "red")[0], torch.ones(1, 3, 4))
    assert torch.allclose(node.execute("m.png", "green")[0], torch.full((1, 3, 4), 128 / 255))
    assert torch.allclose(node.execute("m.png", "alpha")[0], torch.full((1, 3, 4), 1 - 64 / 255))
    Image.new("RGB", (2, 2), (10, 20, 30)).save(paths.input_dir / "rgb.png")
    assert torch.all(node.execute("rgb.png", "alpha")[0] == 0)            # no alpha: opaque → mask 0
    assert "not found" in mfiles.LoadImageMask.validate_inputs("gone.png", paths)
    assert mfiles.LoadImageMask.fingerprint(paths, image="m.png") != \
        mfiles.LoadImageMask.fingerprint(paths, image="rgb.png")


def test_mask_preview_writes_a_temp_png(make, paths):
    mask = torch.tensor([[[0.0, 1.0], [0.5, 1.0]]])
    result = make(mfiles.MaskPreview).execute(mask)
    assert isinstance(result, NodeResult) and result.outputs[0] is mask
    [record] = result.ui["images"]
    assert record["type"] == "temp" and record["filename"].startswith("ComfyUI_temp_")
    saved = np.asarray(Image.open(paths.temp_dir / record["filename"]))
    assert saved.shape == (2, 2, 3) and saved[0, 1, 0] == 255 and saved[0, 0, 2] == 0


# -- through the engine -----------------------------------------------------------------------------

def test_mask_chain_runs_in_the_engine(engine, tmp_path):
    g = Graph()
    solid = g.node("SolidMask", value=1.0, width=8, height=8)
    small = g.node("SolidMask", value=0.0, width=4, height=4)
    hole = g.node("MaskComposite", destination=solid, source=small, x=2, y=2, operation="multiply")
    grown = g.node("GrowMask", mask=g.node("InvertMask", mask=hole), expand=1, tapered_corners=False)
    image = g.node("MaskToImage", mask=grown)
    back = g.node("ImageToMask", image=image, channel="green")
    shown = g.node("MaskPreview", mask=g.node("ThresholdMask", mask=back, value=0.5))
    g.node("Sink", value=g.node("CropMask", mask=back, x=1, y=1, width=6, height=6))
    passed = g.node("InvertMask", mask=shown)  # templates link from the preview's pass-through output
    g.node("Sink", value=passed)
    result = engine.run(g)
    assert result.ok, result.failure
    assert torch.equal(result.value(passed.id), 1.0 - (result.value(back.id) > 0.5).float())
    out = result.value(back.id)
    assert out.shape == (1, 8, 8) and out[0, 1:7, 1:7].sum() == 36 and out.sum() == 36
    previews = [v for v in result.outputs.values() if "images" in v]
    assert previews and previews[0]["images"][0]["type"] == "temp"


def test_image_compositing_runs_in_the_engine(engine):
    g = Graph()
    dest = g.node("EmptyImage", width=8, height=8, batch_size=1, color=0)
    src = g.node("EmptyImage", width=4, height=4, batch_size=1, color=0xFFFFFF)
    mask = g.node("SolidMask", value=1.0, width=4, height=4)
    pasted = g.node("ImageCompositeMasked", destination=dest, source=src, x=4, y=4, resize_source=False,
                    mask=mask)
    joined = g.node("JoinImageWithAlpha", image=pasted, alpha=g.node("SolidMask", value=0.25, width=8, height=8))
    split = g.node("SplitImageWithAlpha", image=joined)
    g.node("Sink", value=split.out(1))
    result = engine.run(g)
    assert result.ok, result.failure
    assert result.value(pasted.id)[0, 4:, 4:].min() == 1 and result.value(pasted.id)[0, :4].max() == 0
    assert torch.allclose(result.value(split.id, 1), torch.full((1, 8, 8), 0.25))


def test_load_image_mask_missing_file_is_a_validation_error(engine):
    g = Graph()
    g.node("Sink", value=g.node("LoadImageMask", image="nowhere.png", channel="alpha"))
    with pytest.raises(ValidationFailed, match="Invalid image file"):
        engine.run(g)
