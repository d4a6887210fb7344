"""Tests of nodegraph/pngmeta.py: ComfyUI-style tEXt chunks written, all text chunk kinds read."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from nodegraph.pngmeta import comfy_text_chunks, encode_png, iter_chunks, read_png_text, to_uint8

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "text": "café ☕"}}}
WORKFLOW = {"nodes": [], "links": [], "version": 0.4}


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def insert_after_ihdr(png: bytes, *chunks: bytes) -> bytes:
    cut = 8 + 25  # signature + IHDR chunk (13-byte payload + 12)
    return png[:cut] + b"".join(chunks) + png[cut:]


def test_round_trip_of_comfy_chunks():
    chunks = comfy_text_chunks(PROMPT, {"workflow": WORKFLOW})
    data = encode_png(np.zeros((4, 4, 3), np.uint8), chunks, compress_level=4)
    texts = read_png_text(data)
    assert json.loads(texts["prompt"]) == PROMPT
    assert json.loads(texts["workflow"]) == WORKFLOW
    assert texts["prompt"] == json.dumps(PROMPT)  # ensure_ascii, byte-identical to ComfyUI


def test_chunks_are_text_before_idat_in_order():
    chunks = comfy_text_chunks(PROMPT, {"workflow": WORKFLOW, "extra": 1})
    data = encode_png(np.zeros((2, 2, 3), np.uint8), chunks)
    kinds = [(kind, payload.split(b"\0")[0]) for kind, payload in iter_chunks(data)]
    text = [key for kind, key in kinds if kind == b"tEXt"]
    assert text == [b"prompt", b"workflow", b"extra"]
    first_idat = [kind for kind, _ in kinds].index(b"IDAT")
    assert all(i < first_idat for i, (kind, _) in enumerate(kinds) if kind == b"tEXt")
    assert "\\u2615" in read_png_text(data)["prompt"]  # non-ASCII escaped, so plain tEXt


def test_comfy_text_chunks_skips_missing_parts():
    assert comfy_text_chunks(None, None) == {}
    assert list(comfy_text_chunks(PROMPT, None)) == ["prompt"]


def test_pillow_sees_the_chunks_and_pixels():
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    data = encode_png(pixels, {"prompt": "{}"}, compress_level=1)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["prompt"] == "{}"
        assert np.array_equal(np.asarray(im), pixels)


def test_encode_accepts_float_tensors_and_pil():
    tensor = torch.tensor([[[1.0, 0.5, 0.0]]])
    with Image.open(io.BytesIO(encode_png(tensor))) as im:
        assert im.getpixel((0, 0)) == (255, 127, 0)
    pil = Image.new("RGBA", (3, 2), (1, 2, 3, 4))
    with Image.open(io.BytesIO(encode_png(pil, {"k": "v"}))) as im:
        assert im.mode == "RGBA" and im.size == (3, 2)


def test_to_uint8_clips_and_truncates():
    assert to_uint8(np.array([-1.0, 0.999, 2.0])).tolist() == [0, 254, 255]


def test_reads_ztxt_itxt_and_chunks_after_idat():
    info = PngInfo()
    info.add_text("plain", "a")
    info.add_text("packed", "b" * 1000, zip=True)
    info.add_itxt("unicode", "héllo ☕", lang="en", tkey="Unicode")
    info.add_itxt("unicode_z", "zipped ☕", zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    iend = data.rindex(b"IEND") - 4
    data = data[:iend] + chunk(b"tEXt", b"late\0after idat") + data[iend:]
    texts = read_png_text(data)
    assert texts == {"plain": "a", "packed": "b" * 1000, "unicode": "héllo ☕",
                     "unicode_z": "zipped ☕", "late": "after idat"}


def test_first_chunk_wins_on_duplicate_keywords():
    base = encode_png(np.zeros((1, 1, 3), np.uint8))
    data = insert_after_ihdr(base, chunk(b"tEXt", b"prompt\0one"), chunk(b"tEXt", b"prompt\0two"))
    assert read_png_text(data) == {"prompt": "one"}


def test_reads_from_a_path(tmp_path: Path):
    path = tmp_path / "a.png"
    path.write_bytes(encode_png(np.zeros((1, 1, 3), np.uint8), {"workflow": "{}"}))
    assert read_png_text(path) == {"workflow": "{}"}
    assert read_png_text(str(path)) == {"workflow": "{}"}


@pytest.mark.parametrize("damage, words", [
    (lambda d: d[: len(d) // 2], "truncated"),
    (lambda d: b"GIF89a" + d[6:], "not a PNG"),
    (lambda d: d[:40] + bytes([d[40] ^ 0xFF]) + d[41:], "corrupt"),
    (lambda d: d[:-12], "truncated"),
])
def test_damaged_files_raise_value_error_naming_the_file(tmp_path: Path, damage, words):
    good = encode_png(np.zeros((8, 8, 3), np.uint8), {"prompt": "x" * 50})
    path = tmp_path / "broken.png"
    path.write_bytes(damage(good))
    with pytest.raises(ValueError, match="broken.png") as err:
        read_png_text(path)
    assert words in str(err.value)


def test_missing_file_is_a_value_error(tmp_path: Path):
    with pytest.raises(ValueError, match="nope.png"):
        read_png_text(tmp_path / "nope.png")


def test_corrupt_compressed_text_is_reported():
    base = encode_png(np.zeros((1, 1, 3), np.uint8))
    data = insert_after_ihdr(base, chunk(b"zTXt", b"k\0\0not zlib data"))
    with pytest.raises(ValueError, match="compressed text chunk is corrupt"):
        read_png_text(data)


def test_bad_keyword_is_refused():
    with pytest.raises(ValueError, match="keyword"):
        encode_png(np.zeros((1, 1, 3), np.uint8), {"": "x"})
