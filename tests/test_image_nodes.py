"""Tests of the image nodes (nodes/image/operations.py) and primitives, called directly with a test context."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from nodegraph.context import NodeContext, Paths, RunContext
from nodegraph.events import EventBus
from nodegraph.node import NodeResult
from nodegraph.registry import describe_node
from nodegraph_nodes.image import operations as img
from nodegraph_nodes.primitives import values as prim


@pytest.fixture
def run(tmp_path: Path) -> RunContext:
    return RunContext(prompt_id="t", bus=EventBus(), interrupt=threading.Event(), paths=Paths.under(tmp_path))


@pytest.fixture
def make(run: RunContext):
    def factory(cls):
        return cls(NodeContext(run, "1", cls.__name__))
    return factory


def ramp(b: int = 1, h: int = 4, w: int = 6, c: int = 3) -> torch.Tensor:
    """A batch whose every value is distinct, to see where pixels go."""
    return torch.arange(b * h * w * c, dtype=torch.float32).reshape(b, h, w, c) / (b * h * w * c)


# -- declarations -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, category, display", [
    (img.EmptyImage, "image", None), (img.ImageInvert, "image", "Invert Image"),
    (img.ImageFlip, "image/transform", None), (img.ImageRotate, "image/transform", None),
    (img.ImageBlend, "image/postprocessing", None), (img.ImageBlur, "image/postprocessing", None),
    (img.ImageSharpen, "image/postprocessing", None), (img.ImageAddNoise, "image", None),
    (img.ImageScale, "image/upscaling", "Upscale Image"),
    (img.ImageScaleBy, "image/upscaling", "Upscale Image By"),
    (img.ImageCrop, "image/transform", "Image Crop"), (img.ImageBatch, "image", "Batch Images"),
    (img.GetImageSize, "image", "Get Image Size"),
    (prim.PrimitiveInt, "utils/primitive", "Int"), (prim.PrimitiveFloat, "utils/primitive", "Float"),
    (prim.PrimitiveString, "utils/primitive", "String"),
    (prim.PrimitiveStringMultiline, "utils/primitive", "String (Multiline)"),
    (prim.PrimitiveBoolean, "utils/primitive", "Boolean"),
])
def test_category_and_display_name(cls, category, display):
    assert cls.category == category
    assert cls.display_name == display


def test_input_specs_match_comfyui():
    info = describe_node("ImageScale", img.ImageScale)
    assert info["input_order"]["required"] == ["image", "upscale_method", "width", "height", "crop"]
    assert info["input"]["required"]["upscale_method"][0] == ["nearest-exact", "bilinear", "area",
                                                              "bicubic", "lanczos"]
    assert info["input"]["required"]["width"] == ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}]
    noise = describe_node("ImageAddNoise", img.ImageAddNoise)["input"]["required"]["seed"][1]
    assert noise["max"] == 2**64 - 1 and noise["control_after_generate"] is True
    color = describe_node("EmptyImage", img.EmptyImage)["input"]["required"]["color"][1]
    assert color == {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}
    sharpen = describe_node("ImageSharpen", img.ImageSharpen)["input"]["required"]
    assert sharpen["sigma"][1]["step"] == 0.01 and sharpen["alpha"][1]["max"] == 5.0
    size = describe_node("GetImageSize", img.GetImageSize)
    assert size["output_name"] == ["width", "height", "batch_size"]
    assert size["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}


def test_primitive_specs():
    info = describe_node("PrimitiveInt", prim.PrimitiveInt)
    assert info["input"]["required"]["value"] == [
        "INT", {"min": -(2**63 - 1), "max": 2**63 - 1, "control_after_generate": True}]
    assert info["output_name"] == ["INT"]
    assert describe_node("PrimitiveStringMultiline", prim.PrimitiveStringMultiline)[
        "input"]["required"]["value"] == ["STRING", {"multiline": True}]
    assert describe_node("PrimitiveBoolean", prim.PrimitiveBoolean)["output"] == ["BOOLEAN"]


@pytest.mark.parametrize("cls, value", [(prim.PrimitiveInt, 2**63 - 1), (prim.PrimitiveFloat, 1.5),
                                        (prim.PrimitiveString, "a"), (prim.PrimitiveStringMultiline, "a\nb"),
                                        (prim.PrimitiveBoolean, False)])
def test_primitives_return_value(make, cls, value):
    assert make(cls).execute(value=value) == (value,)


# -- generation and pixel ops -----------------------------------------------------------------------

def test_empty_image_color_and_shape(make):
    (out,) = make(img.EmptyImage).execute(width=5, height=3, batch_size=2, color=0xFF8000)
    assert out.shape == (2, 3, 5, 3) and out.dtype == torch.float32
    assert torch.allclose(out[1, 2, 4], torch.tensor([1.0, 128 / 255, 0.0]))
    out[0, 0, 0, 0] = 0.5  # must be a real tensor, not a broadcast view
    assert out[1, 0, 0, 0] == 1.0


def test_invert_is_one_minus_x(make):
    x = ramp()
    (out,) = make(img.ImageInvert).execute(image=x)
    assert torch.allclose(out, 1 - x)


def test_flip_directions(make):
    x = ramp()
    (vertical,) = make(img.ImageFlip).execute(image=x, flip_method="x-axis: vertically")
    (horizontal,) = make(img.ImageFlip).execute(image=x, flip_method="y-axis: horizontally")
    assert torch.equal(vertical[0, 0], x[0, -1])            # top row came from the bottom
    assert torch.equal(horizontal[0, :, 0], x[0, :, -1])    # left column came from the right


def test_rotate_is_clockwise(make):
    x = ramp(h=2, w=3)
    node = make(img.ImageRotate)
    (r90,) = node.execute(image=x, rotation="90 degrees")
    assert r90.shape == (1, 3, 2, 3)
    # clockwise: the bottom-left pixel goes to the top-left, the top-left to the top-right
    assert torch.equal(r90[0, 0, 0], x[0, 1, 0])
    assert torch.equal(r90[0, 0, 1], x[0, 0, 0])
    (r180,) = node.execute(image=x, rotation="180 degrees")
    assert torch.equal(r180, torch.flip(x, dims=[1, 2]))
    (r270,) = node.execute(image=x, rotation="270 degrees")
    assert torch.equal(r270[0, 0, 0], x[0, 0, 2])
    (same,) = node.execute(image=x, rotation="none")
    assert torch.equal(same, x)


@pytest.mark.parametrize("mode, expected", [
    ("normal", lambda a, b: b), ("multiply", lambda a, b: a * b),
    ("screen", lambda a, b: 1 - (1 - a) * (1 - b)), ("difference", lambda a, b: (a - b).clamp(0, 1)),
])
def test_blend_modes_at_full_factor(make, mode, expected):
    a, b = torch.full((1, 2, 2, 3), 0.6), torch.full((1, 2, 2, 3), 0.3)
    (out,) = make(img.ImageBlend).execute(image1=a, image2=b, blend_factor=1.0, blend_mode=mode)
    assert torch.allclose(out, expected(a, b))


def test_blend_factor_mixes_and_resizes_image2(make):
    a, b = torch.zeros(1, 4, 4, 3), torch.ones(1, 8, 8, 3)
    (out,) = make(img.ImageBlend).execute(image1=a, image2=b, blend_factor=0.25, blend_mode="normal")
    assert out.shape == a.shape
    assert torch.allclose(out, torch.full_like(a, 0.25))


def test_overlay_and_soft_light_stay_in_range(make):
    a, b = torch.rand(1, 5, 5, 3, generator=torch.Generator().manual_seed(1)), torch.rand(1, 5, 5, 3)
    for mode in ("overlay", "soft_light"):
        (out,) = make(img.ImageBlend).execute(image1=a, image2=b, blend_factor=0.7, blend_mode=mode)
        assert out.min() >= 0 and out.max() <= 1


def test_blur_keeps_constant_image_and_smooths(make):
    flat = torch.full((1, 8, 8, 3), 0.4)
    (out,) = make(img.ImageBlur).execute(image=flat, blur_radius=3, sigma=1.0)
    assert out.shape == flat.shape
    assert torch.allclose(out, flat, atol=1e-6)
    dot = torch.zeros(1, 9, 9, 1)
    dot[0, 4, 4, 0] = 1.0
    (blurred,) = make(img.ImageBlur).execute(image=dot, blur_radius=2, sigma=1.0)
    assert blurred[0, 4, 4, 0] < 1.0 and blurred[0, 4, 5, 0] > 0
    assert torch.isclose(blurred.sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(blurred[0, 4, 3], blurred[0, 4, 5]) and torch.allclose(blurred[0, 3, 4], blurred[0, 5, 4])


def test_blur_works_on_images_smaller_than_radius(make):
    (out,) = make(img.ImageBlur).execute(image=torch.full((1, 2, 2, 3), 0.5), blur_radius=5, sigma=1.0)
    assert out.shape == (1, 2, 2, 3) and torch.allclose(out, torch.full_like(out, 0.5))


def test_sharpen_keeps_flat_image_and_raises_contrast(make):
    flat = torch.full((1, 6, 6, 3), 0.3)
    (out,) = make(img.ImageSharpen).execute(image=flat, sharpen_radius=1, sigma=1.0, alpha=1.0)
    assert torch.allclose(out, flat, atol=1e-5)
    edge = torch.zeros(1, 6, 6, 1)
    edge[:, :, 3:] = 0.5
    (sharp,) = make(img.ImageSharpen).execute(image=edge, sharpen_radius=1, sigma=1.0, alpha=1.0)
    assert sharp[0, 2, 2, 0] == 0.0 and sharp[0, 2, 3, 0] > 0.5


def test_add_noise_is_seeded_and_accepts_huge_seeds(make):
    x = torch.full((1, 4, 4, 3), 0.5)
    node = make(img.ImageAddNoise)
    (a,) = node.execute(image=x, seed=2**64 - 1, strength=0.5)
    (b,) = node.execute(image=x, seed=2**64 - 1, strength=0.5)
    (c,) = node.execute(image=x, seed=7, strength=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    torch.manual_seed(7)  # ComfyUI draws with torch.manual_seed(seed) on the CPU
    expected = torch.clamp(x + 0.5 * torch.randn(x.size()), 0, 1)
    assert torch.equal(c, expected)
    (zero,) = node.execute(image=x, seed=3, strength=0.0)
    assert torch.equal(zero, x)


# -- resizing, cropping, batching -------------------------------------------------------------------

@pytest.mark.parametrize("width, height, expected", [(0, 50, (50, 100)), (200, 0, (100, 200)),
                                                     (30, 40, (40, 30)), (0, 0, (80, 160))])
def test_scale_sizes_keep_aspect_when_one_side_is_zero(make, width, height, expected):
    x = torch.rand(2, 80, 160, 3)
    (out,) = make(img.ImageScale).execute(image=x, upscale_method="bilinear", width=width, height=height,
                                          crop="disabled")
    assert out.shape == (2, *expected, 3)


@pytest.mark.parametrize("method", img.UPSCALE_METHODS)
def test_every_upscale_method_resizes_and_keeps_constant(make, method):
    x = torch.full((2, 10, 12, 3), 0.6)
    (out,) = make(img.ImageScaleBy).execute(image=x, upscale_method=method, scale_by=1.5)
    assert out.shape == (2, 15, 18, 3) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, 0.6), atol=1 / 255)


def test_scale_center_crop_takes_the_middle(make):
    x = torch.zeros(1, 4, 12, 1)
    x[:, :, 4:8] = 1.0  # a bright middle third
    (out,) = make(img.ImageScale).execute(image=x, upscale_method="nearest-exact", width=4, height=4,
                                          crop="center")
    assert torch.all(out == 1.0)


def test_crop_region_and_clamping(make):
    x = ramp(h=10, w=10)
    node = make(img.ImageCrop)
    (out,) = node.execute(image=x, width=3, height=2, x=4, y=5)
    assert torch.equal(out, x[:, 5:7, 4:7])
    (edge,) = node.execute(image=x, width=512, height=512, x=100, y=100)
    assert edge.shape == (1, 1, 1, 3) and torch.equal(edge[0, 0, 0], x[0, 9, 9])


def test_batch_concatenates_and_resizes_second(make):
    a, b = torch.zeros(2, 8, 8, 3), torch.ones(1, 4, 6, 3)
    (out,) = make(img.ImageBatch).execute(image1=a, image2=b)
    assert out.shape == (3, 8, 8, 3)
    assert torch.allclose(out[2], torch.ones(8, 8, 3)) and torch.all(out[:2] == 0)


def test_batch_pads_missing_alpha(make):
    (out,) = make(img.ImageBatch).execute(image1=torch.zeros(1, 4, 4, 4), image2=torch.zeros(1, 4, 4, 3))
    assert out.shape == (2, 4, 4, 4) and torch.all(out[1, ..., 3] == 1.0)


def test_get_image_size_outputs_and_text(make):
    result = make(img.GetImageSize).execute(image=torch.zeros(3, 20, 30, 3), unique_id="1")
    assert isinstance(result, NodeResult)
    assert result.outputs == (30, 20, 3)
    assert all(type(v) is int for v in result.outputs)
    assert "width: 30" in result.ui["text"][0] and "height: 20" in result.ui["text"][0]
