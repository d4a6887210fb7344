"""Tests of nodes/io/files.py: LoadImage, SaveImage, PreviewImage, PreviewAny and their folder rules."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.node import NodeResult
from nodegraph.pngmeta import read_png_text
from nodegraph.registry import describe_node
from nodegraph_nodes.io import files as nio

PROMPT = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "fox"}}}
EXTRA = {"workflow": {"nodes": [], "version": 0.4}}


def images(b: int = 1, h: int = 4, w: int = 6, value: float = 0.5) -> torch.Tensor:
    return torch.full((b, h, w, 3), value)


# -- LoadImage --------------------------------------------------------------------------------------

def test_load_rgba_gives_mask_one_minus_alpha(make, paths):
    rgba = np.zeros((3, 5, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    rgba[1, 1, 3] = 51
    Image.fromarray(rgba, "RGBA").save(paths.input_dir / "a.png")
    image, mask = make(nio.LoadImage).execute(image="a.png")
    assert image.shape == (1, 3, 5, 3) and image.dtype == torch.float32
    assert torch.allclose(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert mask.shape == (1, 3, 5)
    assert mask[0, 0, 0] == 1.0 and mask[0, 2, 2] == 0.0
    assert torch.isclose(mask[0, 1, 1], torch.tensor(0.8))


def test_load_without_alpha_gives_64x64_zero_mask(make, paths):
    Image.new("RGB", (7, 3), (0, 255, 0)).save(paths.input_dir / "g.jpg", quality=100)
    image, mask = make(nio.LoadImage).execute(image="g.jpg")
    assert image.shape == (1, 3, 7, 3) and image[0, 1, 1, 1] > 0.95
    assert mask.shape == (1, 64, 64) and torch.all(mask == 0)


def test_load_palette_transparency_and_subfolder(make, paths):
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    (paths.input_dir / "sub").mkdir()
    pal.save(paths.input_dir / "sub" / "p.png", transparency=0)
    _, mask = make(nio.LoadImage).execute(image="sub/p.png")
    assert mask[0, 0, 0] == 1.0 and mask[0, 0, 1] == 0.0


def test_load_animated_frames_become_a_batch(make, paths):
    frames = [Image.new("RGB", (4, 4), (v, v, v)) for v in (0, 128, 255)]
    frames[0].save(paths.input_dir / "anim.gif", save_all=True, append_images=frames[1:], duration=10)
    image, mask = make(nio.LoadImage).execute(image="anim.gif")
    assert image.shape == (3, 4, 4, 3)
    assert image[0].max() < 0.01 and image[2].min() > 0.99
    assert mask.shape[0] == 3


def test_load_from_output_annotation(make, paths):
    Image.new("RGB", (2, 2), (255, 255, 255)).save(paths.output_dir / "x.png")
    image, _ = make(nio.LoadImage).execute(image="x.png [output]")
    assert image.shape == (1, 2, 2, 3) and torch.all(image == 1.0)


def test_load_not_an_image_is_a_clear_error(make, paths):
    (paths.input_dir / "bad.png").write_bytes(b"hello")
    with pytest.raises(ValueError, match="cannot load image bad.png"):
        make(nio.LoadImage).execute(image="bad.png")


def test_choices_list_top_level_images_only(paths):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (paths.input_dir / name).write_bytes(b"x")
    (paths.input_dir / "sub").mkdir()
    (paths.input_dir / "sub" / "c.png").write_bytes(b"x")
    assert nio.LoadImage.INPUTS["image"].current_choices(paths) == ["a.JPG", "b.png"]
    spec = describe_node("LoadImage", nio.LoadImage, paths=paths)["input"]["required"]["image"]
    assert spec == [["a.JPG", "b.png"], {"default": "a.JPG", "image_upload": True}]


def test_validate_accepts_existing_files(paths):
    (paths.input_dir / "sub").mkdir()
    Image.new("RGB", (1, 1)).save(paths.input_dir / "sub" / "x.png")
    Image.new("RGB", (1, 1)).save(paths.output_dir / "o.png")
    assert nio.LoadImage.validate_inputs(image="sub/x.png", paths=paths) is True
    assert nio.LoadImage.validate_inputs(image="o.png [output]", paths=paths) is True
    assert "not found" in nio.LoadImage.validate_inputs(image="missing.png", paths=paths)
    assert isinstance(nio.LoadImage.validate_inputs(image="o.png", paths=paths), str)  # not in the input folder


@pytest.mark.parametrize("name, words", [("../secret.png", "'..'"), ("sub/../../secret.png", "'..'"),
                                         ("/etc/passwd", "absolute"), ("", "no file name"),
                                         ("link/secret.png", "outside")])
def test_traversal_is_refused(make, paths, name, words):
    secret = paths.input_dir.parent / "secret.png"
    Image.new("RGB", (1, 1)).save(secret)
    os.symlink(paths.input_dir.parent, paths.input_dir / "link")
    message = nio.LoadImage.validate_inputs(image=name, paths=paths)
    assert isinstance(message, str) and words in message
    with pytest.raises(ValueError, match=words):
        make(nio.LoadImage).execute(image=name)


def test_fingerprint_is_file_sha256(paths):
    path = paths.input_dir / "f.png"
    Image.new("RGB", (2, 2)).save(path)
    assert nio.LoadImage.fingerprint(image="f.png", paths=paths) == hashlib.sha256(path.read_bytes()).hexdigest()
    Image.new("RGB", (2, 2), (9, 9, 9)).save(path)
    assert nio.LoadImage.fingerprint(image="f.png", paths=paths) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert math.isnan(nio.LoadImage.fingerprint(image="gone.png", paths=paths))


# -- SaveImage --------------------------------------------------------------------------------------

def test_save_writes_png_with_metadata_and_ui(make, paths):
    batch = images(2)
    result = make(nio.SaveImage).execute(images=batch, filename_prefix="fox", prompt=PROMPT,
                                         extra_pnginfo=EXTRA)
    assert isinstance(result, NodeResult) and len(result.outputs) == 1 and result.outputs[0] is batch
    assert result.ui == {"images": [{"filename": "fox_00001_.png", "subfolder": "", "type": "output"},
                                    {"filename": "fox_00002_.png", "subfolder": "", "type": "output"}]}
    path = paths.output_dir / "fox_00001_.png"
    texts = read_png_text(path)
    assert json.loads(texts["prompt"]) == PROMPT and json.loads(texts["workflow"]) == EXTRA["workflow"]
    with Image.open(path) as im:
        assert im.size == (6, 4) and im.getpixel((0, 0)) == (127, 127, 127)


def test_save_without_metadata_has_no_text(make, paths):
    make(nio.SaveImage).execute(images=images(), filename_prefix="bare")
    assert read_png_text(paths.output_dir / "bare_00001_.png") == {}


def test_save_counter_follows_existing_files_and_never_overwrites(make, paths):
    (paths.output_dir / "fox_00007_.png").write_bytes(b"old")
    (paths.output_dir / "fox_extra.png").write_bytes(b"other")  # counter 0 (not digits)
    (paths.output_dir / "foxy_00050_.png").write_bytes(b"other stem")
    node = make(nio.SaveImage)
    first = node.execute(images=images(), filename_prefix="fox")
    assert first.ui["images"][0]["filename"] == "fox_00008_.png"
    second = node.execute(images=images(), filename_prefix="fox")
    assert second.ui["images"][0]["filename"] == "fox_00009_.png"
    assert (paths.output_dir / "fox_00007_.png").read_bytes() == b"old"


def test_save_bumps_counter_on_collision(paths):
    (paths.output_dir / "a_00003_.png").write_bytes(b"taken")
    name, counter = nio.write_new_file(paths.output_dir, "a", 3, b"new")
    assert (name, counter) == ("a_00004_.png", 4)
    assert (paths.output_dir / "a_00003_.png").read_bytes() == b"taken"


def test_concurrent_saves_get_distinct_files(make, paths):
    def save(i: int) -> list[str]:
        node = make(nio.SaveImage, str(i))
        return [r["filename"] for r in node.execute(images=images(2), filename_prefix="c").ui["images"]]
    with ThreadPoolExecutor(8) as pool:
        names = [n for batch in pool.map(save, range(16)) for n in batch]
    assert len(names) == len(set(names)) == 32
    assert len(list(paths.output_dir.glob("c_*_.png"))) == 32


def test_save_subfolder_and_variables(make, paths):
    result = make(nio.SaveImage).execute(images=images(h=4, w=6), filename_prefix="run/%width%x%height%_%year%")
    entry = result.ui["images"][0]
    year = time.localtime().tm_year
    assert entry == {"filename": f"6x4_{year}_00001_.png", "subfolder": "run", "type": "output"}
    assert (paths.output_dir / "run" / entry["filename"]).is_file()


def test_expand_prefix_vars_pads_two_digits():
    now = time.struct_time((2024, 3, 5, 7, 8, 9, 0, 0, -1))
    out = nio.expand_prefix_vars("%year%-%month%-%day% %hour%:%minute%:%second% %width%", 10, 20, now)
    assert out == "2024-03-05 07:08:09 10"


def test_batch_num_in_stem(make, paths):
    result = make(nio.SaveImage).execute(images=images(2), filename_prefix="b_%batch_num%")
    assert [r["filename"] for r in result.ui["images"]] == ["b_0_00001_.png", "b_1_00002_.png"]


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/tmp/escape"])
def test_save_refuses_escaping_the_output_dir(make, paths, prefix):
    with pytest.raises(ValueError, match="outside the output folder"):
        make(nio.SaveImage).execute(images=images(), filename_prefix=prefix)
    assert not list(paths.output_dir.parent.glob("escape*"))


def test_save_refuses_symlinked_subfolder_escape(make, paths, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, paths.output_dir / "link")
    with pytest.raises(ValueError, match="outside the output folder"):
        make(nio.SaveImage).execute(images=images(), filename_prefix="link/x")
    assert not list(outside.iterdir())


def test_save_declaration():
    info = describe_node("SaveImage", nio.SaveImage)
    assert info["output_node"] is True and info["display_name"] == "Save Image"
    # today's ComfyUI (nodes.py: RETURN_TYPES ("IMAGE",), RETURN_NAMES ("images",)) passes the images on
    assert info["output"] == ["IMAGE"] and info["output_name"] == ["images"]
    assert info["input"]["required"]["filename_prefix"][1]["default"] == "ComfyUI"
    assert info["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    preview = describe_node("PreviewImage", nio.PreviewImage)
    assert list(preview["input"]["required"]) == ["images"] and preview["output_node"] is True
    assert preview["output"] == ["IMAGE"] and preview["output_name"] == ["images"]


# -- PreviewImage / PreviewAny ----------------------------------------------------------------------

def test_preview_writes_to_temp_with_random_suffix(make, paths):
    batch = images()
    result = make(nio.PreviewImage).execute(images=batch, prompt=PROMPT, extra_pnginfo=None)
    assert result.outputs[0] is batch
    entry = result.ui["images"][0]
    assert entry["type"] == "temp" and entry["subfolder"] == ""
    assert entry["filename"].startswith("ComfyUI_temp_") and entry["filename"].endswith("_00001_.png")
    assert len(entry["filename"]) == len("ComfyUI_temp_abcde_00001_.png")
    path = paths.temp_dir / entry["filename"]
    assert json.loads(read_png_text(path)["prompt"]) == PROMPT
    assert not list(paths.output_dir.iterdir())


@pytest.mark.parametrize("value, text", [("hi", "hi"), (3, "3"), (2.5, "2.5"), (True, "True"),
                                         (None, "None"), ({"a": [1, 2]}, '{\n    "a": [\n        1,\n        2\n    ]\n}')])
def test_preview_any_text(make, value, text):
    result = make(nio.PreviewAny).execute(source=value)
    # the shown text is also the node's STRING output (today's ComfyUI: "result": (value,))
    assert result.ui == {"text": [text]} and result.outputs == (text,)


def test_preview_any_falls_back_to_str(make):
    result = make(nio.PreviewAny).execute(source=torch.arange(20.0))
    text = result.ui["text"][0]
    assert text.startswith("tensor(") and "..." not in text  # 20 items: under torch's summary threshold
    big = make(nio.PreviewAny).execute(source=torch.arange(2000.0)).ui["text"][0]
    assert "..." in big and big.count("e+") == 12  # 6 items at each edge, as ComfyUI shows them
    info = describe_node("PreviewAny", nio.PreviewAny)
    assert info["input"]["required"]["source"] == ["*", {}]
    assert info["output"] == ["STRING"] and info["output_name"] == ["STRING"] and info["output_node"] is True


# -- pass-through outputs through the engine --------------------------------------------------------

def test_output_nodes_pass_their_values_on_in_a_run(engine):
    """Today's ComfyUI gives SaveImage/PreviewImage an IMAGE output and PreviewAny a STRING output, and
    its official templates link from them (ImageCompare.image_b ← SaveImage, StringConcatenate ←
    PreviewAny): such a graph validates and runs, each node still saving/showing its value."""
    from nodegraph.builder import Graph

    g = Graph()
    image = g.node("EmptyImage", width=6, height=4, batch_size=1, color=0x336699)
    saved = g.node("SaveImage", images=image, filename_prefix="pass")
    shown = g.node("PreviewImage", images=g.node("ImageInvert", image=saved))
    size = g.node("GetImageSize", image=shown)
    text = g.node("PreviewAny", source=size.out(0))
    joined = g.node("StringConcatenate", string_a=text, string_b="px", delimiter=" ")
    g.node("Sink", value=joined)
    result = engine.run(g)
    assert result.ok, result.failure
    assert torch.equal(result.value(saved.id), result.value(image.id))
    assert result.value(text.id) == "6" and result.value(joined.id) == "6 px"
    assert result.outputs[saved.id]["images"][0]["type"] == "output"
    assert result.outputs[shown.id]["images"][0]["type"] == "temp"
    assert result.outputs[text.id] == {"text": ["6"]}
