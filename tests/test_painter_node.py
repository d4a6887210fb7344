"""Painter (nodes/image/painter.py): the canvas's RGBA painting composited over a colour background or a base
image, its alpha as the mask, the Lanczos resize to the canvas, the preview, the fingerprint; and the node's
published spec (socketless painter widget, hidden size, COLOR background)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph_nodes.image.painter import Painter, hex_rgb


def write_painting(paths, name: str, size=(8, 4)) -> np.ndarray:
    """An RGBA painting in the input folder: a red stroke, half-transparent in its right half."""
    rgba = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    rgba[1:3, :, 0] = 255
    rgba[1:3, : size[0] // 2, 3] = 255
    rgba[1:3, size[0] // 2:, 3] = 128
    Image.fromarray(rgba, "RGBA").save(paths.input_dir / name)
    return rgba.astype(np.float32) / 255.0


def test_painter_on_a_colour_background(make, paths):
    painted = write_painting(paths, "painter-1.png")
    result = make(Painter).execute("painter-1.png [input]", 8, 4, "#0080ff")
    image, mask = result.outputs
    assert image.shape == (1, 4, 8, 3) and mask.shape == (1, 4, 8)
    bg = torch.tensor(hex_rgb("#0080ff"))
    alpha = torch.from_numpy(painted[..., 3:4])
    expected = torch.from_numpy(painted[..., :3]) * alpha + bg * (1 - alpha)
    assert torch.allclose(image[0], expected, atol=1e-6)
    assert torch.equal(mask[0], alpha[..., 0])
    assert torch.equal(image[0, 0, 0], bg)  # unpainted: the background
    preview = result.ui["images"][0]
    assert preview["type"] == "temp" and (paths.temp_dir / preview["subfolder"] / preview["filename"]).is_file()


def test_painter_over_an_image_resizes_the_painting(make, paths):
    write_painting(paths, "painter-2.png", size=(8, 4))
    base = torch.rand(2, 8, 16, 3, generator=torch.Generator().manual_seed(0))
    image, mask = make(Painter).execute("painter-2.png", 512, 512, "#000000", image=base).outputs
    assert image.shape == (1, 8, 16, 3) and mask.shape == (1, 8, 16)  # the first image's size, not width/height
    resized = np.asarray(Image.open(paths.input_dir / "painter-2.png").convert("RGBA").resize((16, 8), Image.LANCZOS),
                         dtype=np.float32) / 255.0
    alpha = torch.from_numpy(resized[..., 3:4])
    assert torch.allclose(image[0], torch.from_numpy(resized[..., :3]) * alpha + base[0] * (1 - alpha), atol=1e-6)
    assert torch.equal(mask[0], alpha[..., 0])


def test_painter_without_painting_and_errors(make, paths):
    image, mask = make(Painter).execute("", 64, 128, "#ff0000").outputs
    assert image.shape == (1, 128, 64, 3) and torch.equal(image[0, 5, 5], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(mask, torch.zeros(1, 128, 64))
    with pytest.raises(FileNotFoundError, match="Painter: input 'mask'"):
        make(Painter).execute("missing.png", 64, 64, "#000000")
    (paths.input_dir / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Painter: input 'mask': cannot read"):
        make(Painter).execute("broken.png", 64, 64, "#000000")
    assert Painter.fingerprint(paths, mask="") == ""
    write_painting(paths, "painter-3.png")
    first = Painter.fingerprint(paths, mask="painter-3.png [input]")
    write_painting(paths, "painter-3.png", size=(4, 4))
    assert first and Painter.fingerprint(paths, mask="painter-3.png [input]") != first


def test_painter_spec():
    spec = {i.name: i.spec() for i in Painter.INPUTS.values()}
    assert spec["mask"] == ["STRING", {"default": "", "image_upload": True, "socketless": True,
                                       "widgetType": "PAINTER"}]
    assert spec["width"][1] == {"default": 512, "min": 64, "max": 4096, "step": 64, "socketless": True,
                                "hidden": True}
    assert spec["bg_color"] == ["COLOR", {"default": "#000000"}]
    assert Painter.INPUTS["image"].optional and Painter.canvas_widgets == ("bg_color",)
