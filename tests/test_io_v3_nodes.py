"""ComfyUI's V3 file nodes (nodes/io/{compare,output_files,encoders}.py): ImageCompare, SaveImageAdvanced,
LoadImageOutput. /object_info against ComfyUI's specs, the files written read back (PNG 8/16-bit through
Pillow and OpenCV, EXR through a reader of the layout written out below, AVIF through Pillow), the output
folder's containment rules, and runs through the engine from API prompts."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.builder import Graph
from nodegraph.context import Paths
from nodegraph.errors import ValidationFailed
from nodegraph.pngmeta import read_png_text
from nodegraph.registry import default_registry
from nodegraph_nodes.io import compare, encoders, output_files

SAVE_OPTIONAL = {
    "format.bit_depth": [["8-bit", "16-bit", "32-bit float", "auto", "8-bit YUV420", "10-bit YUV420"],
                         {"default": "8-bit"}],
    "format.input_color_space": [["sRGB", "HDR", "linear", "HDR PQ"], {"default": "sRGB"}],
    "format.crf": ["INT", {"default": 18, "min": 1, "max": 63}],
    "format.save_mode": [["still images", "animated"], {"default": "still images"}],
    "format.save_mode.fps": ["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}],
    "format.save_mode.loop_count": ["INT", {"default": 0, "min": 0, "max": 1000}],
}


def _no_tooltips(inputs: dict) -> dict:
    return {name: [spec[0], {k: v for k, v in spec[1].items() if k != "tooltip"}] for name, spec in inputs.items()}


def test_object_info_matches_comfyui(tmp_path):
    registry = default_registry(packs=False)
    info = registry.object_info("ImageCompare")["ImageCompare"]
    assert info["input"] == {"required": {}, "optional": {"image_a": ["IMAGE", {}], "image_b": ["IMAGE", {}]}}
    assert info["output"] == [] and info["output_node"] and info["experimental"]
    assert info["category"] == "image" and info["display_name"] == "Image Compare"
    save = registry.object_info("SaveImageAdvanced")["SaveImageAdvanced"]
    assert _no_tooltips(save["input"]["required"]) == {
        "images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}],
        "format": [["png", "exr", "avif"], {"default": "png"}]}
    assert _no_tooltips(save["input"]["optional"]) == SAVE_OPTIONAL
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert save["output"] == ["IMAGE"] and save["output_name"] == ["images"] and save["output_node"]
    assert save["display_name"] == "Save Image (Advanced)" and save["category"] == "image"
    paths = Paths.under(tmp_path)
    paths.output_dir.mkdir(parents=True)
    Image.new("RGB", (2, 2)).save(paths.output_dir / "old.png")
    os.utime(paths.output_dir / "old.png", (1_000_000, 1_000_000))
    Image.new("RGB", (2, 2)).save(paths.output_dir / "new.png")
    (paths.output_dir / "notes.txt").write_text("x")
    load = registry.object_info("LoadImageOutput", paths=paths)["LoadImageOutput"]
    assert load["input"]["required"] == {"image": [["new.png [output]", "old.png [output]"],
                                                   {"default": "new.png [output]", "image_upload": True}]}
    assert load["output"] == ["IMAGE", "MASK"] and load["display_name"] == "Load Image (from Outputs)"
    assert load["category"] == "image" and load["experimental"]


def ramp(b: int = 1, h: int = 4, w: int = 6, c: int = 3) -> torch.Tensor:
    return torch.arange(b * h * w * c, dtype=torch.float32).reshape(b, h, w, c) / (b * h * w * c)


# -- ImageCompare -----------------------------------------------------------------------------------

def test_image_compare_sends_both_images_as_previews(make, paths):
    a, b = ramp(2), 1.0 - ramp(1)
    result = make(compare.ImageCompare).execute(a, b)
    assert result.outputs == () and set(result.ui) == {"a_images", "b_images"}
    assert len(result.ui["a_images"]) == 2 and len(result.ui["b_images"]) == 1
    for record, image in zip(result.ui["a_images"] + result.ui["b_images"], [a[0], a[1], b[0]]):
        assert record["type"] == "temp" and record["subfolder"] == ""
        assert record["filename"].startswith(("comfy.compare.a_temp_", "comfy.compare.b_temp_"))
        saved = np.asarray(Image.open(paths.temp_dir / record["filename"]))
        assert np.array_equal(saved, np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8))
    assert read_png_text(paths.temp_dir / result.ui["b_images"][0]["filename"]) == {}   # no metadata, as ComfyUI
    assert make(compare.ImageCompare).execute(None, None).ui == {"a_images": [], "b_images": []}


def test_image_compare_and_crop_v2_run_with_the_canvas_widget_values(engine):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageCompare", "inputs": {"image_a": ["1", 0], "image_b": ["2", 0],
                                                       "compare_view": ["", ""]}},   # the canvas's value
        "4": {"class_type": "ImageCropV2", "inputs": {"image": ["2", 0],
                                                      "crop_region": {"x": 1, "y": 1, "width": 2, "height": 9}}},
        "5": {"class_type": "Sink", "inputs": {"value": ["4", 0]}},
    }
    result = engine.run(Graph.from_api(prompt))
    assert result.ok, result.failure
    ui = result.outputs["3"]
    assert len(ui["a_images"]) == 1 and len(ui["b_images"]) == 1
    folder = engine.paths.temp_dir
    assert np.asarray(Image.open(folder / ui["b_images"][0]["filename"])).min() == 255
    assert result.value("4").shape == (1, 3, 2, 3) and torch.all(result.value("4") == 1)   # a BOUNDING_BOX dict
    assert len(list(folder.glob("ComfyUI_temp_*.png"))) == 1                                # its preview


# -- SaveImageAdvanced ------------------------------------------------------------------------------

def save(make, images, fmt, prompt=None, extra=None, prefix="adv/shot", **fields):
    return make(output_files.SaveImageAdvanced).execute(images, prefix, fmt, prompt, extra,
                                                        **{f"format.{k}": v for k, v in fields.items()})


def test_png_8_and_16_bit_with_metadata(make, paths):
    images = torch.rand(2, 5, 7, 3, generator=torch.Generator().manual_seed(2))
    result = save(make, images, "png", {"1": {"class_type": "X"}}, {"workflow": {"nodes": []}})
    assert result.outputs[0] is images
    assert [r["filename"] for r in result.ui["images"]] == ["shot_00001.png", "shot_00002.png"]
    assert all(r["subfolder"] == "adv" and r["type"] == "output" for r in result.ui["images"])
    eight = np.asarray(Image.open(paths.output_dir / "adv" / "shot_00002.png"))
    assert np.array_equal(eight, (images[1] * 255).clamp(0, 255).to(torch.int32).numpy().astype(np.uint8))
    assert read_png_text(paths.output_dir / "adv" / "shot_00001.png") == {
        "prompt": json.dumps({"1": {"class_type": "X"}}), "workflow": json.dumps({"nodes": []})}
    deep = save(make, images[:1], "png", bit_depth="16-bit")
    assert deep.ui["images"][0]["filename"] == "shot_00003.png"                     # the counter goes on
    read = read_png16(paths.output_dir / "adv" / "shot_00003.png")
    assert read.dtype == np.uint16 and read.shape == (5, 7, 3)
    expected = (images[0] * 65535).clamp(0, 65535).to(torch.int32).numpy()
    assert np.array_equal(read.astype(np.int64), expected)
    rgba = torch.rand(1, 3, 4, 4)
    save(make, rgba, "png", bit_depth="16-bit", prefix="alpha")
    read = read_png16(paths.output_dir / "alpha_00001.png")
    assert read.shape == (3, 4, 4) and np.array_equal(read[..., 3], (rgba[0, ..., 3] * 65535).to(torch.int32).numpy())
    grey = torch.rand(1, 3, 4, 1)
    save(make, grey, "png", prefix="grey")
    with Image.open(paths.output_dir / "grey_00001.png") as img:
        assert img.mode == "L" and np.array_equal(np.asarray(img), (grey[0, ..., 0] * 255).to(torch.uint8).numpy())


def read_png16(path: Path) -> np.ndarray:
    """A 16-bit RGB/RGBA PNG's pixels [H, W, C] as uint16, decoded here from the file's chunks (PNG spec:
    zlib stream of scanlines, each with a filter byte 0-4), independent of the encoder under test."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color_type, _, _, interlace = header
    assert depth == 16 and color_type in (2, 6) and interlace == 0
    channels = 3 if color_type == 2 else 4
    bpp, stride = 2 * channels, 2 * channels * width
    raw = zlib.decompress(idat)
    rows, prev = [], bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        kind, row = line[0], bytearray(line[1:])
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                row[i] = (row[i] + a) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + b) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(row))
        prev = row
    return np.frombuffer(b"".join(rows), dtype=">u2").reshape(height, width, channels).astype(np.uint16)


def read_exr(path: Path) -> tuple[dict[str, tuple[str, bytes]], dict[str, np.ndarray]]:
    """Header attributes and FLOAT channels of an uncompressed scanline OpenEXR file (OpenEXR's
    "File Layout": magic, version, attributes up to a 0 byte, one offset per line, then per line
    y, size and each channel's row in channel-list order)."""
    data = path.read_bytes()
    assert data[:4] == b"\x76\x2f\x31\x01"
    pos, attributes = 8, {}
    while data[pos] != 0:
        name_end = data.index(b"\0", pos)
        kind_end = data.index(b"\0", name_end + 1)
        size = struct.unpack_from("<i", data, kind_end + 1)[0]
        attributes[data[pos:name_end].decode()] = (data[name_end + 1:kind_end].decode(),
                                                   data[kind_end + 5:kind_end + 5 + size])
        pos = kind_end + 5 + size
    chlist, names, cursor = attributes["channels"][1], [], 0
    while chlist[cursor] != 0:
        end = chlist.index(b"\0", cursor)
        names.append(chlist[cursor:end].decode())
        assert struct.unpack_from("<i", chlist, end + 1)[0] == 2                  # FLOAT
        cursor = end + 17
    x0, y0, x1, y1 = struct.unpack("<iiii", attributes["dataWindow"][1])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    offsets = struct.unpack_from(f"<{height}Q", data, pos + 1)
    planes = {name: np.zeros((height, width), np.float32) for name in names}
    for y, offset in enumerate(offsets):
        line_y, size = struct.unpack_from("<ii", data, offset)
        assert line_y == y and size == 4 * width * len(names)
        for index, name in enumerate(names):
            planes[name][y] = np.frombuffer(data, "<f4", width, offset + 8 + 4 * width * index)
    return attributes, planes


def test_exr_is_scene_linear_float_with_metadata(make, paths):
    images = torch.rand(1, 4, 5, 4, generator=torch.Generator().manual_seed(4))
    images[0, 0, 0, 0] = 1.5                                                       # not clamped
    save(make, images, "exr", {"p": 1}, {"workflow": {"w": 2}}, bit_depth="32-bit float",
         input_color_space="linear", prefix="lin")
    attributes, planes = read_exr(paths.output_dir / "lin_00001.exr")
    assert sorted(planes) == ["A", "B", "G", "R"]
    for index, name in enumerate("RGBA"):
        assert np.array_equal(planes[name], images[0, ..., index].numpy())
    assert attributes["prompt"] == ("string", b'{"p": 1}') and attributes["workflow"] == ("string", b'{"w": 2}')
    assert struct.unpack("<8f", attributes["chromaticities"][1])[:2] == pytest.approx((0.64, 0.33))
    save(make, images[..., :3], "exr", input_color_space="sRGB", prefix="srgb")
    _, planes = read_exr(paths.output_dir / "srgb_00001.exr")
    x = images[0, ..., 0].double()
    linear = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    assert np.allclose(planes["R"], linear.numpy(), atol=1e-6)
    save(make, images[..., :3] * 0 + 0.25, "exr", input_color_space="HDR", prefix="hlg")
    attributes, planes = read_exr(paths.output_dir / "hlg_00001.exr")
    assert np.allclose(planes["G"], 0.25 ** 2 / 3)                                   # inverse HLG, sqrt branch
    assert struct.unpack("<8f", attributes["chromaticities"][1])[:2] == pytest.approx((0.708, 0.292))
    save(make, images[..., :1], "exr", prefix="grey")
    assert list(read_exr(paths.output_dir / "grey_00001.exr")[1]) == ["Y"]


def test_avif_still_and_animated(make, paths):
    images = torch.zeros(2, 16, 16, 3)
    images[0, ..., 0] = 0.8
    images[1, ..., 2] = 0.6
    result = save(make, images, "avif", {"a": 1}, None, prefix="clip")
    assert [r["filename"] for r in result.ui["images"]] == ["clip_00001.avif", "clip_00002.avif"]
    with Image.open(paths.output_dir / "clip_00001.avif") as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
        exif = img.getexif()
    assert pixels.shape == (16, 16, 3) and np.abs(pixels - images[0].numpy()).max() < 0.06   # lossy
    assert exif[0x0110] == 'prompt:{"a": 1}'
    animated = save(make, images, "avif", prefix="anim", save_mode="animated", **{"save_mode.fps": 4.0})
    assert animated.ui["animated"] == [True] and len(animated.ui["images"]) == 1
    with Image.open(paths.output_dir / "anim_00001.avif") as img:
        assert img.n_frames == 2
        img.seek(1)
        assert np.abs(np.asarray(img.convert("RGB"), dtype=np.float32) / 255 - images[1].numpy()).max() < 0.06


def test_save_advanced_errors_and_no_overwrite(make, paths):
    image = ramp()
    with pytest.raises(ValueError, match="SaveImageAdvanced: input 'format.bit_depth' is '16-bit', which exr does not offer"):
        save(make, image, "exr", bit_depth="16-bit")
    with pytest.raises(ValueError, match="'format.input_color_space' is 'HDR', which png does not offer"):
        save(make, image, "png", input_color_space="HDR")
    with pytest.raises(ValueError, match="SaveImageAdvanced: 10-bit and HDR AVIF need an SVT-AV1 encoder"):
        save(make, image, "avif", bit_depth="10-bit YUV420")
    with pytest.raises(ValueError, match="not RGBA"):
        save(make, ramp(c=4), "avif")
    with pytest.raises(ValueError, match="would save outside the output folder"):
        save(make, image, "png", prefix="../escape")
    (paths.output_dir / "taken_00001.png").write_bytes(b"keep")
    (paths.output_dir / "taken_00002_.png").write_bytes(b"keep too")              # SaveImage's naming
    result = save(make, image, "png", prefix="taken")
    assert result.ui["images"][0]["filename"] == "taken_00003.png"
    assert (paths.output_dir / "taken_00001.png").read_bytes() == b"keep"


# -- LoadImageOutput --------------------------------------------------------------------------------

def test_load_image_output_reads_the_output_folder(make, paths):
    pixels = (np.arange(4 * 5 * 4) % 256).astype(np.uint8).reshape(4, 5, 4)
    (paths.output_dir / "sub").mkdir()
    Image.fromarray(pixels, "RGBA").save(paths.output_dir / "sub" / "a.png")
    Image.fromarray(pixels[..., :3]).save(paths.output_dir / "b.png")
    for name in ("sub/a.png", "sub/a.png [output]"):
        image, mask = make(output_files.LoadImageOutput).execute(name)
        assert image.shape == (1, 4, 5, 3) and torch.equal(image[0], torch.from_numpy(pixels[..., :3] / 255.0).float())
        assert torch.allclose(mask[0], 1.0 - torch.from_numpy(pixels[..., 3] / 255.0).float())
    _, mask = make(output_files.LoadImageOutput).execute("b.png [output]")
    assert mask.shape == (1, 64, 64) and mask.sum() == 0
    assert output_files.LoadImageOutput.validate_inputs("b.png [output]", paths) is True
    assert "not found" in output_files.LoadImageOutput.validate_inputs("c.png [output]", paths)
    first = output_files.LoadImageOutput.fingerprint(paths, image="b.png [output]")
    assert first == output_files.LoadImageOutput.fingerprint(paths, image="b.png")
    assert first != output_files.LoadImageOutput.fingerprint(paths, image="sub/a.png")


def test_load_image_output_stays_inside_the_output_folder(make, paths, tmp_path):
    Image.new("RGB", (2, 2)).save(paths.input_dir / "in.png")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(outside)
    (paths.output_dir / "link.png").symlink_to(outside)
    for name, reason in [("in.png [input]", "names the input folder"), ("x.png [temp]", "names the temp folder"),
                         ("../secret.png", "uses '..'"), (str(outside), "is an absolute path"),
                         ("link.png", "leads outside the output folder")]:
        verdict = output_files.LoadImageOutput.validate_inputs(name, paths)
        assert verdict.startswith("Invalid image file") and reason in verdict, (name, verdict)
        with pytest.raises(ValueError, match=f"LoadImageOutput: input 'image': .*{reason}"):
            make(output_files.LoadImageOutput).execute(name)


def test_save_then_load_through_the_engine(engine):
    engine.paths.output_dir.mkdir(parents=True, exist_ok=True)
    first = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 6, "height": 4, "batch_size": 1, "color": 0x336699}},
        "2": {"class_type": "SaveImageAdvanced", "inputs": {"images": ["1", 0], "filename_prefix": "round",
                                                            "format": "png", "format.bit_depth": "16-bit"}},
    }
    result = engine.run(Graph.from_api(first))
    assert result.ok, result.failure
    assert result.outputs["2"]["images"] == [{"filename": "round_00001.png", "subfolder": "", "type": "output"}]
    second = {
        "1": {"class_type": "LoadImageOutput", "inputs": {"image": "round_00001.png [output]"}},
        "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
    }
    loaded = engine.run(Graph.from_api(second))
    assert loaded.ok, loaded.failure
    assert torch.allclose(loaded.value("1")[0, 0, 0], torch.tensor([0x33, 0x66, 0x99]) / 255.0, atol=1 / 255)
    missing = {"1": {"class_type": "LoadImageOutput", "inputs": {"image": "nope.png [output]"}},
               "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}}}
    with pytest.raises(ValidationFailed, match="Invalid image file"):
        engine.run(Graph.from_api(missing))


def test_exr_reads_back_through_the_openexr_library(make, paths):
    openexr = pytest.importorskip("OpenEXR")                     # not a dependency: runs where installed
    images = torch.rand(1, 5, 7, 4, generator=torch.Generator().manual_seed(6))
    save(make, images, "exr", {"p": 1}, None, input_color_space="linear", prefix="ref")
    with openexr.File(str(paths.output_dir / "ref_00001.exr")) as exr:
        assert exr.header()["prompt"] == '{"p": 1}'
        assert np.array_equal(exr.channels()["RGBA"].pixels, images[0].numpy())
