"""ComfyUI's V3 image nodes (nodes/image/{resize,batch,layout,color}.py): /object_info against ComfyUI's
specs (written out below, tooltips left aside), each node called with a test context with its shapes and
pixel values checked, the stricter errors, and a chain run through the engine from an API prompt with
ComfyUI's flat DynamicCombo / autogrow input names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nodegraph.builder import Graph
from nodegraph.errors import ValidationFailed
from nodegraph.node import NodeResult
from nodegraph.registry import default_registry
from nodegraph.workflow.api_to_ui import api_to_ui
from nodegraph.workflow.loader import load_workflow_data
from nodegraph.workflow.ui_format import ui_to_api
from nodegraph_nodes.image import batch, color, layout, resize
from nodegraph_nodes.image.operations import lanczos

MAX = 16384
SCALE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
RESIZE_TYPES = ["scale dimensions", "scale by multiplier", "scale longer dimension", "scale shorter dimension",
                "scale width", "scale height", "scale total pixels", "match size", "scale to multiple"]

# name → (required, optional, outputs, output names, output_is_list, category, display name)
COMFY_SPECS = {
    "ResizeImageMaskNode": (
        {"input": ["IMAGE,MASK", {}], "resize_type": [RESIZE_TYPES, {"default": "scale dimensions"}],
         "scale_method": [SCALE, {"default": "area"}]},
        {"resize_type.width": ["INT", {"default": 512, "min": 0, "max": MAX, "step": 1}],
         "resize_type.height": ["INT", {"default": 512, "min": 0, "max": MAX, "step": 1}],
         "resize_type.crop": [["disabled", "center"], {"default": "center"}],
         "resize_type.multiplier": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}],
         "resize_type.longer_size": ["INT", {"default": 512, "min": 0, "max": MAX, "step": 1}],
         "resize_type.shorter_size": ["INT", {"default": 512, "min": 0, "max": MAX, "step": 1}],
         "resize_type.megapixels": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}],
         "resize_type.match": ["IMAGE,MASK", {}],
         "resize_type.multiple": ["INT", {"default": 8, "min": 1, "max": MAX, "step": 1}]},
        ["IMAGE,MASK"], ["resized"], [False], "transform", "Resize Image/Mask"),
    "ResizeAndPadImage": (
        {"image": ["IMAGE", {}], "target_width": ["INT", {"default": 512, "min": 1, "max": MAX, "step": 1}],
         "target_height": ["INT", {"default": 512, "min": 1, "max": MAX, "step": 1}],
         "padding_color": [["white", "black"], {"default": "white"}],
         "interpolation": [["area", "bicubic", "nearest-exact", "bilinear", "lanczos"], {"default": "area"}]},
        {}, ["IMAGE"], ["IMAGE"], [False], "image/transform", "Resize And Pad Image"),
    "ImageScaleToMaxDimension": (
        {"image": ["IMAGE", {}],
         "upscale_method": [["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"],
                            {"default": "area"}],
         "largest_size": ["INT", {"default": 512, "min": 0, "max": MAX, "step": 1}]},
        {}, ["IMAGE"], ["IMAGE"], [False], "image/upscaling", "Scale Image to Max Dimension"),
    "ImageStitch": (
        {"image1": ["IMAGE", {}], "direction": [["right", "down", "left", "up"], {"default": "right"}],
         "match_image_size": ["BOOLEAN", {"default": True}],
         "spacing_width": ["INT", {"default": 0, "min": 0, "max": 1024, "step": 2}],
         "spacing_color": [["white", "black", "red", "green", "blue"], {"default": "white"}]},
        {"image2": ["IMAGE", {}]}, ["IMAGE"], ["IMAGE"], [False], "image/transform", "Stitch Images"),
    "ImageFromBatch": (
        {"image": ["IMAGE", {}], "batch_index": ["INT", {"default": 0, "min": -MAX, "max": MAX}],
         "length": ["INT", {"default": 1, "min": 1, "max": 4096}]},
        {}, ["IMAGE"], ["IMAGE"], [False], "image/batch", "Get Image from Batch"),
    "BatchImagesNode": (
        {"images.image0": ["IMAGE", {}]},                  # ComfyUI: image1 required too (see batch.py)
        {f"images.image{i}": ["IMAGE", {}] for i in range(1, 50)},
        ["IMAGE"], ["IMAGE"], [False], "image", "Batch Images"),
    "RepeatImageBatch": (
        {"image": ["IMAGE", {}], "amount": ["INT", {"default": 1, "min": 1, "max": 4096}]},
        {}, ["IMAGE"], ["IMAGE"], [False], "image/batch", "Repeat Image Batch"),
    "RebatchImages": (
        {"images": ["IMAGE", {}], "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]},
        {}, ["IMAGE"], ["IMAGE"], [True], "image/batch", "Rebatch Images"),
    "ImageCropV2": (
        {"image": ["IMAGE", {}], "crop_region": ["*", {}]},
        {}, ["IMAGE"], ["IMAGE"], [False], "image/transform", "Crop Image"),
    "ImageCropToMask": (
        {"images": ["IMAGE", {}], "masks": ["MASK", {}],
         "width": ["INT", {"default": 1024, "min": 64, "max": 4096, "step": 8}],
         "height": ["INT", {"default": 1024, "min": 64, "max": 4096, "step": 8}],
         "pad_factor": ["FLOAT", {"default": 1.0, "min": 1.0, "max": 2.0, "step": 0.01}],
         "grow_mask": ["INT", {"default": 0, "min": -32, "max": 32, "step": 1}],
         "background": ["STRING", {"default": "#000000"}]},
        {}, ["IMAGE"], ["images"], [False], "image/transform", "Crop Image to Mask"),
    "ImageRemoveAlpha": ({"image": ["IMAGE", {}]}, {}, ["IMAGE"], ["IMAGE"], [False], "image",
                         "Image Remove Alpha"),
    "ColorTransfer": (
        {"image_target": ["IMAGE", {}], "method": [["reinhard_lab", "mkl_lab", "histogram"],
                                                    {"default": "reinhard_lab"}],
         "source_stats": [["per_frame", "uniform", "target_frame"], {"default": "per_frame"}],
         "source_stats.target_index": ["INT", {"default": 0, "min": 0, "max": 10000}],
         "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}]},
        {"image_ref": ["IMAGE", {}]},
        ["IMAGE"], ["image"], [False], "image/postprocessing", "ColorTransfer"),
}


def _no_tooltips(inputs: dict) -> dict:
    return {name: [spec[0], {k: v for k, v in spec[1].items() if k != "tooltip"}] for name, spec in inputs.items()}


@pytest.mark.parametrize("name", sorted(COMFY_SPECS))
def test_object_info_matches_comfyui(name):
    required, optional, output, names, is_list, category, display = COMFY_SPECS[name]
    info = default_registry(packs=False).object_info(name)[name]
    assert _no_tooltips(info["input"]["required"]) == required
    assert _no_tooltips(info["input"].get("optional", {})) == optional
    assert info["input_order"]["required"] == list(required)
    assert info["output"] == output and info["output_name"] == names and info["output_is_list"] == is_list
    assert info["category"] == category and info["display_name"] == display


# -- direct calls -----------------------------------------------------------------------------------

def ramp(b: int = 1, h: int = 4, w: int = 6, c: int = 3) -> torch.Tensor:
    """A batch whose every value is distinct, to see where pixels go."""
    return torch.arange(b * h * w * c, dtype=torch.float32).reshape(b, h, w, c) / (b * h * w * c)


def solid(rgb, b: int = 1, h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).expand(b, h, w, len(rgb)).clone()


def resize_node(make, value, kind, method="nearest-exact", **fields):
    return make(resize.ResizeImageMaskNode).execute(value, kind, method,
                                                    **{f"resize_type.{k}": v for k, v in fields.items()})[0]


def test_resize_by_multiplier_and_dimensions_move_pixels_like_interpolate(make):
    image = ramp(2, 2, 3)
    doubled = resize_node(make, image, "scale by multiplier", multiplier=2.0)
    assert doubled.shape == (2, 4, 6, 3)
    assert torch.equal(doubled[:, ::2, ::2], image) and torch.equal(doubled[:, 1::2, 1::2], image)
    mask = image[..., 0]
    masked = resize_node(make, mask, "scale by multiplier", multiplier=2.0)
    assert masked.shape == (2, 4, 6) and torch.equal(masked, doubled[..., 0])       # a MASK stays 3-D
    wide = resize_node(make, ramp(1, 4, 8), "scale dimensions", "bilinear", width=4, height=0, crop="disabled")
    expected = F.interpolate(ramp(1, 4, 8).movedim(-1, 1), size=(2, 4), mode="bilinear").movedim(1, -1)
    assert wide.shape == (1, 2, 4, 3) and torch.allclose(wide, expected)
    unchanged = resize_node(make, image, "scale dimensions", width=0, height=0, crop="center")
    assert unchanged is image
    cropped = resize_node(make, ramp(1, 4, 8), "scale dimensions", width=4, height=4, crop="center")
    assert torch.equal(cropped, ramp(1, 4, 8)[:, :, 2:6])                           # centre 4×4, same size


def test_resize_sides_total_pixels_and_match(make):
    image = ramp(1, 6, 10)
    assert resize_node(make, image, "scale longer dimension", longer_size=20).shape == (1, 12, 20, 3)
    assert resize_node(make, image, "scale shorter dimension", shorter_size=3).shape == (1, 3, 5, 3)
    assert resize_node(make, image, "scale width", width=5).shape == (1, 3, 5, 3)
    assert resize_node(make, image, "scale height", height=12).shape == (1, 12, 20, 3)
    total = resize_node(make, image, "scale total pixels", megapixels=0.01)
    scale = (int(0.01 * 1024 * 1024) / 60) ** 0.5                                  # ComfyUI's rounding
    assert total.shape == (1, round(6 * scale), round(10 * scale), 3)
    matched = resize_node(make, image, "match size", match=torch.zeros(3, 7), crop="disabled")
    assert matched.shape == (1, 3, 7, 3)                                            # a MASK as the reference


def test_resize_to_multiple_covers_then_centre_crops(make):
    image = ramp(1, 6, 10)
    out = resize_node(make, image, "scale to multiple", "bilinear", multiple=4)
    # the 8×4 target is covered by scaling to 8×5 (ceil(6·0.8)), then the middle 4 rows are kept
    cover = F.interpolate(image.movedim(-1, 1), size=(5, 8), mode="bilinear").movedim(1, -1)
    assert out.shape == (1, 4, 8, 3) and torch.allclose(out, cover[:, 0:4])
    already = ramp(1, 8, 8)
    assert resize_node(make, already, "scale to multiple", multiple=4) is already


def test_resize_errors_name_node_and_input(make):
    image = ramp(1, 6, 10)
    with pytest.raises(ValueError, match="ResizeImageMaskNode: resize type 'match size' needs input 'resize_type.match'"):
        make(resize.ResizeImageMaskNode).execute(image, "match size", "area", **{"resize_type.crop": "center"})
    with pytest.raises(ValueError, match=r"new size 0×0 has no pixels; raise 'resize_type.multiplier'"):
        resize_node(make, image, "scale by multiplier", multiplier=0.01)
    with pytest.raises(ValueError, match=r"smaller than 'resize_type.multiple' \(8\)"):
        resize_node(make, image, "scale to multiple", multiple=8)
    with pytest.raises(ValueError, match=r"'resize_type.longer_size' is 20000; use a value from 0 to 16384"):
        resize_node(make, image, "scale longer dimension", longer_size=20000)       # a linked value
    with pytest.raises(ValueError, match="takes an IMAGE .* or a MASK"):
        resize_node(make, torch.zeros(5), "scale width", width=2)


def test_resize_and_pad_centres_the_fit(make):
    image = ramp(1, 2, 4)
    (out,) = make(resize.ResizeAndPadImage).execute(image, 8, 8, "black", "nearest-exact")
    assert out.shape == (1, 8, 8, 3)
    assert torch.all(out[:, :2] == 0) and torch.all(out[:, 6:] == 0)                # 8×4 fit, 2 rows each side
    assert torch.equal(out[:, 2:6:2, ::2], image)
    (white,) = make(resize.ResizeAndPadImage).execute(image, 4, 6, "white", "area")
    assert white.shape == (1, 6, 4, 3) and torch.all(white[:, :2] == 1) and torch.all(white[:, 4:] == 1)
    with pytest.raises(ValueError, match="ResizeAndPadImage: the new size 1×0 has no pixels"):
        make(resize.ResizeAndPadImage).execute(ramp(1, 2, 40), 1, 1, "white", "area")


def test_scale_to_max_dimension(make):
    (out,) = make(resize.ImageScaleToMaxDimension).execute(ramp(1, 6, 10), "bilinear", 5)
    assert out.shape == (1, 3, 5, 3)
    (tall,) = make(resize.ImageScaleToMaxDimension).execute(ramp(1, 10, 4), "nearest-exact", 20)
    assert tall.shape == (1, 20, 8, 3) and torch.equal(tall[:, ::2, ::2], ramp(1, 10, 4))
    with pytest.raises(ValueError, match="ImageScaleToMaxDimension: the new size 0×0 has no pixels"):
        make(resize.ImageScaleToMaxDimension).execute(ramp(), "area", 0)


def test_image_from_batch(make):
    images = ramp(4, 2, 2)
    (two,) = make(batch.ImageFromBatch).execute(images, -2, 2)
    assert torch.equal(two, images[2:])
    (one,) = make(batch.ImageFromBatch).execute(images, 1, 1)
    assert torch.equal(one, images[1:2])
    with pytest.raises(ValueError, match=r"ImageFromBatch: input 'batch_index' is 4, outside the batch of 4; use -4 to 3"):
        make(batch.ImageFromBatch).execute(images, 4, 1)
    (rest,) = make(batch.ImageFromBatch).execute(images, 1, 4096)      # templates' "the rest of the batch"
    assert torch.equal(rest, images[1:])
    with pytest.raises(ValueError, match=r"input 'batch_index' is -5, outside the batch of 4"):
        make(batch.ImageFromBatch).execute(images, -5, 1)


def test_batch_images_pads_alpha_and_resizes_to_the_first(make):
    first = solid([0.2, 0.4, 0.6], 2, 4, 6)
    second = solid([1.0, 0.0, 0.5, 0.25], 1, 2, 3)
    third = solid([0.1, 0.1, 0.1], 1, 8, 12)
    (out,) = make(batch.BatchImagesNode).execute(**{"images.image0": first, "images.image1": second,
                                                    "images.image7": third})
    assert out.shape == (4, 4, 6, 4)
    assert torch.allclose(out[:2], F.pad(first, (0, 1), value=1.0))                 # RGB gets an opaque alpha
    assert torch.allclose(out[2], torch.tensor([1.0, 0.0, 0.5, 0.25]).expand(4, 6, 4))
    assert torch.allclose(out[3, ..., :3], torch.full((4, 6, 3), 0.1)) and torch.all(out[3, ..., 3] == 1)
    with pytest.raises(ValueError, match="mix 1-channel and colour images: 'images.image0' \\(3\\), 'images.image1' \\(1\\)"):
        make(batch.BatchImagesNode).execute(**{"images.image0": first, "images.image1": torch.zeros(1, 4, 6, 1)})
    (alone,) = make(batch.BatchImagesNode).execute(**{"images.image0": first, "images.image1": None})
    assert torch.equal(alone, first)                      # templates connect only image0: a batch as it is
    with pytest.raises(ValueError, match="connect an image to 'images.image0'"):
        make(batch.BatchImagesNode).execute(**{"images.image0": None})


def test_repeat_and_rebatch(make):
    images = ramp(2, 2, 2)
    (repeated,) = make(batch.RepeatImageBatch).execute(images, 3)
    assert repeated.shape == (6, 2, 2, 3)
    assert all(torch.equal(repeated[i], images[i % 2]) for i in range(6))
    more = ramp(3, 2, 2) + 1
    (groups,) = make(batch.RebatchImages).execute([images, more], [2])
    assert [g.shape[0] for g in groups] == [2, 2, 1]
    flat = torch.cat(groups)
    assert torch.equal(flat, torch.cat([images, more]))
    with pytest.raises(ValueError, match=r"RebatchImages: images 0..1 have different sizes"):
        make(batch.RebatchImages).execute([ramp(1, 2, 2), ramp(1, 3, 3)], [2])


def test_stitch_without_matching_pads_and_spaces(make):
    left = solid([0.5, 0.5, 0.5], 1, 4, 3)
    right = solid([0.0, 0.0, 1.0], 1, 2, 2)
    (out,) = make(layout.ImageStitch).execute(left, "right", False, 2, "red", right)
    assert out.shape == (1, 4, 3 + 2 + 2, 3)
    assert torch.all(out[0, :, :3] == 0.5)
    assert torch.equal(out[0, :, 3:5], torch.tensor([1.0, 0.0, 0.0]).expand(4, 2, 3))   # red spacing
    assert torch.all(out[0, 1:3, 5:] == torch.tensor([0.0, 0.0, 1.0]))                  # centred: rows 1..2
    assert torch.all(out[0, 0, 5:] == 0) and torch.all(out[0, 3, 5:] == 0)              # padded with 0 (red)
    (up,) = make(layout.ImageStitch).execute(left, "up", False, 1, "white", right)      # odd spacing: 2
    assert up.shape == (1, 2 + 2 + 4, 3, 3)
    assert torch.all(up[0, :2, :2] == torch.tensor([0.0, 0.0, 1.0]))                    # image2 first, then
    assert torch.all(up[0, :2, 2] == 1)                                                 # its white pad (1 column)
    assert torch.all(up[0, 2:4] == 1) and torch.all(up[0, 4:] == 0.5)


def test_stitch_matching_size_alpha_and_batches(make):
    image1 = ramp(2, 4, 6)
    image2 = solid([0.0, 1.0, 0.0, 1.0], 1, 2, 4)
    (out,) = make(layout.ImageStitch).execute(image1, "left", True, 0, "white", image2)
    # image2 (aspect 2) matched to height 4 → 8 wide, lanczos; image1 gets an opaque alpha; image2 is first
    assert out.shape == (2, 4, 14, 4)
    assert torch.allclose(out[:, :, 8:, :3], image1) and torch.all(out[:, :, 8:, 3] == 1)
    assert torch.allclose(out[:, :, :8], torch.tensor([0.0, 1.0, 0.0, 1.0]).expand(2, 4, 8, 4))
    assert make(layout.ImageStitch).execute(image1, "down", True, 0, "white", None)[0] is image1
    with pytest.raises(ValueError, match="ImageStitch: input 'image1' has a batch of 2 and 'image2' a batch of 3"):
        make(layout.ImageStitch).execute(image1, "down", True, 0, "white", ramp(3))


def test_crop_v2_slices_and_previews(make, paths):
    image = ramp(2, 5, 6)
    result = make(layout.ImageCropV2).execute(image, {"x": 2, "y": 1, "width": 3, "height": 100})
    assert isinstance(result, NodeResult)
    (cropped,) = result.outputs
    assert torch.equal(cropped, image[:, 1:, 2:5])                                   # stops at the bottom edge
    assert len(result.ui["images"]) == 2 and all((paths.temp_dir / r["filename"]).is_file()
                                                   for r in result.ui["images"])
    with pytest.raises(ValueError, match=r"ImageCropV2: input 'crop_region' starts at \(6, 0\), outside the 6×5"):
        make(layout.ImageCropV2).execute(image, {"x": 6, "y": 0, "width": 1, "height": 1})
    with pytest.raises(ValueError, match="unknown field\\(s\\) 'w'"):
        make(layout.ImageCropV2).execute(image, {"x": 0, "y": 0, "w": 1})
    with pytest.raises(ValueError, match="'crop_region.width' is 0"):
        make(layout.ImageCropV2).execute(image, {"x": 0, "y": 0, "width": 0, "height": 1})


def subject_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A 16×16 grey image with a red 8×4 subject at rows 4..7, columns 4..11, and its mask."""
    image = solid([0.5, 0.5, 0.5], 1, 16, 16)
    image[0, 4:8, 4:12] = torch.tensor([1.0, 0.0, 0.0])
    mask = torch.zeros(1, 16, 16)
    mask[0, 4:8, 4:12] = 1.0
    return image, mask


def test_crop_to_mask_centres_the_subject_on_the_background(make):
    image, mask = subject_scene()
    (out,) = make(layout.ImageCropToMask).execute(image, mask, 64, 64, 1.0, 0, "#00ff00")
    # box 8 wide, 4 high → a square 8×8 crop from (3, 1) to (11, 9); the subject fills its rows 3..6
    crop = torch.zeros(1, 3, 8, 8)
    crop[:, 1] = 1.0                                                                 # green background
    crop[:, :, 3:7, 1:8] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    expected = lanczos(crop, 64, 64).movedim(1, -1)
    assert out.shape == (1, 64, 64, 3) and torch.allclose(out, expected, atol=1 / 255)
    assert torch.allclose(out[0, 40, 32], torch.tensor([1.0, 0.0, 0.0]), atol=0.06)  # lanczos rings a little
    assert torch.allclose(out[0, 4, 4], torch.tensor([0.0, 1.0, 0.0]), atol=0.06)
    square = torch.zeros(1, 16, 16)
    square[0, 5:11, 5:11] = 1.0               # background at the border, subject over half of the centre
    (straight,) = make(layout.ImageCropToMask).execute(image, square, 64, 64, 1.0, 0, "#00ff00")
    (inverted,) = make(layout.ImageCropToMask).execute(image, 1.0 - square, 64, 64, 1.0, 0, "#00ff00")
    assert torch.equal(inverted, straight)                                          # a background mask is turned round


def test_crop_to_mask_batches_and_errors(make):
    image, mask = subject_scene()
    two = torch.cat([image, image])
    (out,) = make(layout.ImageCropToMask).execute(two, mask, 64, 128, 1.5, 2, "#000000")
    assert out.shape == (2, 128, 64, 3) and torch.equal(out[0], out[1])             # one mask for both
    with pytest.raises(ValueError, match="ImageCropToMask: input 'masks' has a batch of 3 and 'images' a batch of 2"):
        make(layout.ImageCropToMask).execute(two, mask.expand(3, -1, -1), 64, 64, 1.0, 0, "#000000")
    with pytest.raises(ValueError, match="input 'background' is 'red'; write a colour as #RRGGBB"):
        make(layout.ImageCropToMask).execute(image, mask, 64, 64, 1.0, 0, "red")


def test_remove_alpha(make):
    rgba = ramp(2, 3, 3, 4)
    (rgb,) = make(layout.ImageRemoveAlpha).execute(rgba)
    assert torch.equal(rgb, rgba[..., :3])
    plain = ramp()
    assert make(layout.ImageRemoveAlpha).execute(plain)[0] is plain


# -- ColorTransfer ----------------------------------------------------------------------------------

def test_lab_conversion_known_values_and_round_trip():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    lab = color.rgb_to_lab(rgb)[..., 0, 0]
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(lab[1], torch.tensor([0.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.05)   # sRGB red, D65
    random_rgb = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(color.lab_to_rgb(color.rgb_to_lab(random_rgb)), random_rgb, atol=1e-4)


def test_lab_conversion_equals_kornia_where_installed():
    kornia = pytest.importorskip("kornia")                       # not a dependency: ComfyUI's converter
    rgb = torch.rand(3, 3, 9, 11, generator=torch.Generator().manual_seed(8))
    assert torch.allclose(color.rgb_to_lab(rgb), kornia.color.rgb_to_lab(rgb), atol=1e-5)
    lab = kornia.color.rgb_to_lab(rgb) + 20 * torch.randn(3, 3, 9, 11, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(color.lab_to_rgb(lab), kornia.color.lab_to_rgb(lab), atol=1e-6)


def _lab_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = color.rgb_to_lab(images.permute(0, 3, 1, 2)).permute(1, 0, 2, 3).reshape(3, -1)
    return flat.mean(dim=1), flat


def test_reinhard_and_mkl_carry_the_reference_statistics(make):
    g = torch.Generator().manual_seed(3)
    target = 0.3 + 0.2 * torch.rand(2, 12, 12, 3, generator=g)
    ref = 0.5 + 0.2 * torch.rand(1, 12, 12, 3, generator=g) * torch.tensor([1.0, 0.5, 0.2])
    ref_mean, ref_flat = _lab_stats(ref)
    (reinhard,) = make(color.ColorTransfer).execute(target, "reinhard_lab", "per_frame", 1.0, ref)
    for frame in reinhard:
        mean, flat = _lab_stats(frame[None])
        assert torch.allclose(mean, ref_mean, atol=0.05)
        assert torch.allclose(flat.std(dim=1, unbiased=False), ref_flat.std(dim=1, unbiased=False), atol=0.05)
    (mkl,) = make(color.ColorTransfer).execute(target, "mkl_lab", "uniform", 1.0, ref)
    mean, flat = _lab_stats(mkl)
    cov = torch.cov(flat, correction=0)
    assert torch.allclose(mean, ref_mean, atol=0.05)
    assert torch.allclose(cov, torch.cov(ref_flat, correction=0), atol=0.1)
    (half,) = make(color.ColorTransfer).execute(target, "reinhard_lab", "per_frame", 0.5, ref)
    half_mean, _ = _lab_stats(half[:1])
    assert torch.allclose(half_mean, (_lab_stats(target[:1])[0] + ref_mean) / 2, atol=0.05)   # lerp in Lab


def test_target_frame_applies_one_transform_to_every_frame(make):
    g = torch.Generator().manual_seed(5)
    target = 0.3 + 0.3 * torch.rand(2, 8, 8, 3, generator=g)
    ref = 0.2 + 0.3 * torch.rand(1, 8, 8, 3, generator=g)
    (out,) = make(color.ColorTransfer).execute(target, "reinhard_lab", "target_frame", 1.0, ref,
                                               **{"source_stats.target_index": 1})
    assert torch.allclose(_lab_stats(out[1:])[0], _lab_stats(ref)[0], atol=0.05)     # the chosen frame matches
    (alone,) = make(color.ColorTransfer).execute(target[1:], "reinhard_lab", "per_frame", 1.0, ref)
    assert torch.allclose(out[1], alone[0], atol=1e-5)


def test_histogram_matching(make):
    g = torch.Generator().manual_seed(7)
    image = torch.rand(1, 8, 8, 3, generator=g)
    (same,) = make(color.ColorTransfer).execute(image, "histogram", "per_frame", 1.0, image)
    assert torch.allclose(same, torch.floor(image * 255) / 255)                      # own histogram: bin values
    dark = image * 0.5
    (matched,) = make(color.ColorTransfer).execute(dark, "histogram", "uniform", 1.0, image)
    assert torch.allclose(matched.sort(dim=1).values.mean(), (torch.floor(image * 255) / 255).mean(), atol=0.02)
    assert abs(matched.mean() - image.mean()) < 0.02 < abs(dark.mean() - image.mean())
    (rgba,) = make(color.ColorTransfer).execute(ramp(1, 4, 4, 4), "histogram", "per_frame", 1.0, ramp(1, 4, 4, 4))
    assert rgba.shape == (1, 4, 4, 4)


def test_color_transfer_skips_and_errors(make):
    image = ramp(2)
    assert make(color.ColorTransfer).execute(image, "mkl_lab", "per_frame", 1.0, None)[0] is image
    assert make(color.ColorTransfer).execute(image, "mkl_lab", "per_frame", 0.0, ramp(1))[0] is image
    with pytest.raises(ValueError, match="ColorTransfer: input 'source_stats.target_index' is 2, outside the batch of 2"):
        make(color.ColorTransfer).execute(image, "reinhard_lab", "target_frame", 1.0, ramp(1),
                                          **{"source_stats.target_index": 2})
    with pytest.raises(ValueError, match="with per_frame give one reference or one per frame"):
        make(color.ColorTransfer).execute(image, "reinhard_lab", "per_frame", 1.0, ramp(3))
    with pytest.raises(ValueError, match="method 'mkl_lab' works in Lab colour and needs RGB images"):
        make(color.ColorTransfer).execute(ramp(1, 4, 4, 4), "mkl_lab", "per_frame", 1.0, ramp(1, 4, 4, 4))


# -- through the engine -----------------------------------------------------------------------------

def test_v3_image_chain_runs_from_an_api_prompt(engine):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 2, "color": 0x0000FF}},
        "3": {"class_type": "BatchImagesNode", "inputs": {"images.image0": ["1", 0], "images.image1": ["2", 0]}},
        "4": {"class_type": "ResizeImageMaskNode",
              "inputs": {"input": ["3", 0], "resize_type": "scale dimensions", "resize_type.width": 4,
                         "resize_type.height": 3, "resize_type.crop": "center", "scale_method": "nearest-exact"}},
        "5": {"class_type": "ImageStitch", "inputs": {"image1": ["4", 0], "direction": "down",
                                                      "match_image_size": False, "spacing_width": 0,
                                                      "spacing_color": "white", "image2": ["4", 0]}},
        "6": {"class_type": "ImageFromBatch", "inputs": {"image": ["5", 0], "batch_index": -1, "length": 1}},
        "7": {"class_type": "ColorTransfer", "inputs": {"image_target": ["6", 0], "image_ref": ["1", 0],
                                                        "method": "histogram", "source_stats": "uniform",
                                                        "strength": 1.0}},
        "8": {"class_type": "Sink", "inputs": {"value": ["7", 0]}},
    }
    result = engine.run(Graph.from_api(prompt))
    assert result.ok, result.failure
    assert result.value("3").shape == (3, 6, 8, 3)
    stitched = result.value("6")
    assert stitched.shape == (1, 6, 4, 3) and torch.all(stitched[0, ..., 2] == 1)   # a blue (resized) image
    assert torch.allclose(result.value("7"), torch.tensor([1.0, 0.0, 0.0]).expand(1, 6, 4, 3))


def test_a_misspelt_dynamic_combo_field_is_a_validation_error(engine):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ResizeImageMaskNode",
              "inputs": {"input": ["1", 0], "resize_type": "scale width", "resize_type.widht": 4,
                         "scale_method": "area"}},
        "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}},
    }
    with pytest.raises(ValidationFailed, match="resize_type.width"):
        engine.run(Graph.from_api(prompt))


def test_rebatch_list_and_mask_resize_run_in_the_engine(engine):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 3, "color": 0}},
        "2": {"class_type": "RebatchImages", "inputs": {"images": ["1", 0], "batch_size": 2}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},          # mapped over the list
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 6, "height": 4}},
        "6": {"class_type": "ResizeImageMaskNode",
              "inputs": {"input": ["5", 0], "resize_type": "scale longer dimension",
                         "resize_type.longer_size": 3, "scale_method": "area"}},
        "7": {"class_type": "MaskPreview", "inputs": {"mask": ["6", 0]}},            # IMAGE,MASK feeds a MASK
    }
    result = engine.run(Graph.from_api(prompt))
    assert result.ok, result.failure
    assert [t.shape[0] for t in result.value("2")] == [2, 1]
    assert len(result.outputs["4"]["images"]) == 3
    assert torch.allclose(result.value("6"), torch.full((1, 2, 3), 0.5))


# -- ComfyUI canvas files -----------------------------------------------------------------------------

def ui_node(node_id, type_, widgets, inputs=(), outputs=()):
    return {"id": node_id, "type": type_, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": node_id,
            "mode": 0, "inputs": list(inputs), "outputs": list(outputs), "properties": {},
            "widgets_values": widgets}


def test_comfyui_canvas_layout_of_dynamic_combos_converts(engine):
    """ComfyUI's canvas stores a DynamicCombo's value, then the chosen option's widgets, then the next
    widget (``["scale longer dimension", 1536, "lanczos"]``); a socket among the option's inputs
    (``resize_type.match``) stores nothing."""
    workflow = {
        "last_node_id": 8, "last_link_id": 8, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            ui_node(1, "EmptyImage", [8, 6, 1, 0xFF0000], outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1, 2]}]),
            ui_node(2, "ResizeImageMaskNode", ["scale longer dimension", 4, "nearest-exact"],
                    inputs=[{"name": "input", "type": "IMAGE,MASK", "link": 1}],
                    outputs=[{"name": "resized", "type": "IMAGE,MASK", "links": [3]}]),
            ui_node(3, "ResizeImageMaskNode", ["match size", "disabled", "bilinear"],
                    inputs=[{"name": "input", "type": "IMAGE,MASK", "link": 2},
                            {"name": "resize_type.match", "type": "IMAGE,MASK", "link": 3}],
                    outputs=[{"name": "resized", "type": "IMAGE,MASK", "links": [4, 7]}]),
            ui_node(4, "ColorTransfer", ["histogram", "target_frame", 0, 0.5],
                    inputs=[{"name": "image_target", "type": "IMAGE", "link": 4}],
                    outputs=[{"name": "image", "type": "IMAGE", "links": [5, 6]}]),
            ui_node(5, "SaveImageAdvanced", ["ui", "avif", "8-bit YUV420", "sRGB", 30, "animated", 12.0, 2],
                    inputs=[{"name": "images", "type": "IMAGE", "link": 5}]),
            ui_node(6, "SaveImageAdvanced", ["ui16", "png", "16-bit", "sRGB"],
                    inputs=[{"name": "images", "type": "IMAGE", "link": 6}]),
            # the BOUNDING_BOX widget's value, then the 4 numbers its canvas component keeps
            ui_node(7, "ImageCropV2", [{"x": 1, "y": 0, "width": 2, "height": 2}, 0, 0, 512, 512],
                    inputs=[{"name": "image", "type": "IMAGE", "link": 7}],
                    outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [8]}]),
            ui_node(8, "PreviewImage", [], inputs=[{"name": "images", "type": "IMAGE", "link": 8}]),
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 0, 3, 0, "IMAGE"], [3, 2, 0, 3, 1, "IMAGE,MASK"],
                  [4, 3, 0, 4, 0, "IMAGE"], [5, 4, 0, 5, 0, "IMAGE"], [6, 4, 0, 6, 0, "IMAGE"],
                  [7, 3, 0, 7, 0, "IMAGE"], [8, 7, 0, 8, 0, "IMAGE"]],
    }
    api = load_workflow_data(workflow, engine.registry, "canvas").api
    assert api["2"]["inputs"]["resize_type"] == "scale longer dimension"
    assert api["2"]["inputs"]["resize_type.longer_size"] == 4 and api["2"]["inputs"]["scale_method"] == "nearest-exact"
    assert api["3"]["inputs"]["resize_type.crop"] == "disabled" and api["3"]["inputs"]["scale_method"] == "bilinear"
    assert api["3"]["inputs"]["resize_type.match"] == ["2", 0]
    assert api["4"]["inputs"]["source_stats.target_index"] == 0 and api["4"]["inputs"]["strength"] == 0.5
    save = api["5"]["inputs"]
    assert (save["format"], save["format.bit_depth"], save["format.crf"], save["format.save_mode"],
            save["format.save_mode.fps"], save["format.save_mode.loop_count"]) == ("avif", "8-bit YUV420", 30,
                                                                                    "animated", 12.0, 2)
    assert api["6"]["inputs"]["format.bit_depth"] == "16-bit"
    assert api["7"]["inputs"]["crop_region"] == {"x": 1, "y": 0, "width": 2, "height": 2}
    result = engine.run(Graph.from_api(api))
    assert result.ok, result.failure
    assert result.value("3").shape == (1, 3, 4, 3)
    assert [r["filename"] for r in result.outputs["6"]["images"]] == ["ui16_00001.png"]
    assert torch.equal(result.value("7"), result.value("3")[:, 0:2, 1:3])


def test_our_canvas_layout_of_dynamic_combos_round_trips(engine):
    api = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ResizeImageMaskNode",
              "inputs": {"input": ["1", 0], "resize_type": "scale total pixels", "scale_method": "bicubic",
                         "resize_type.width": 64, "resize_type.height": 32, "resize_type.crop": "disabled",
                         "resize_type.multiplier": 2.0, "resize_type.longer_size": 9,
                         "resize_type.shorter_size": 7, "resize_type.megapixels": 0.5, "resize_type.multiple": 16}},
        "3": {"class_type": "ColorTransfer", "inputs": {"image_target": ["2", 0], "method": "mkl_lab",
                                                        "source_stats": "uniform", "source_stats.target_index": 2,
                                                        "strength": 0.25}},
        "5": {"class_type": "ImageCropV2", "inputs": {"image": ["3", 0],
                                                      "crop_region": {"x": 2, "y": 1, "width": 3, "height": 4}}},
        "4": {"class_type": "SaveImageAdvanced", "inputs": {"images": ["5", 0], "filename_prefix": "rt",
                                                            "format": "exr", "format.bit_depth": "32-bit float",
                                                            "format.input_color_space": "linear", "format.crf": 18,
                                                            "format.save_mode": "still images",
                                                            "format.save_mode.fps": 6.0,
                                                            "format.save_mode.loop_count": 0}},
    }
    back = ui_to_api(api_to_ui(api, engine.registry), engine.registry)
    assert {k: (v["class_type"], v["inputs"]) for k, v in back.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in api.items()}
