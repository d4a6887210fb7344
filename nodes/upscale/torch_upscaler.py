"""PyTorch-format upscale models (``.pth``, ``.pt``, ``.safetensors``, ``.sft``) in ``models/upscale_models``.

Files are read without running code: safetensors directly, ``.pth``/``.pt`` only through
``torch.load(weights_only=True)`` (plain tensors and containers; a pickled object of any other class is
refused). basicsr's ``params_ema`` / ``params`` / ``state_dict`` wrappers are unwrapped and
``module.`` prefixes stripped; the architecture (RRDBNet/ESRGAN or SRVGGNetCompact) and its
hyper-parameters come from the tensors (:mod:`nodegraph_nodes.upscale.esrgan_arch`). The network runs on the engine's
device (fp16 autocast on CUDA only) tile by tile with :func:`nodegraph_nodes.upscale.tiling.upscale_image`, like the ncnn
models. Every failure is an :class:`~nodegraph_nodes.upscale.ncnn_upscaler.UpscaleModelError` naming the input and file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.context import Paths

from nodegraph_nodes.diffusion.files import list_model_files
from nodegraph_nodes.upscale.esrgan_arch import ArchError, ArchSpec, build
from nodegraph_nodes.upscale.ncnn_upscaler import FOLDER, UpscaleModelError

TORCH_EXTENSIONS = (".pth", ".pt", ".safetensors", ".sft")
SAFETENSORS = (".safetensors", ".sft")
WRAPPERS = ("params_ema", "params", "state_dict")


@dataclass(frozen=True)
class TorchModelFile:
    name: str   # the choice, relative to models/upscale_models
    path: Path

    def identity(self) -> tuple:
        st = self.path.stat()
        return ((str(self.path), st.st_size, st.st_mtime_ns),)


def is_torch_file(name: Any) -> bool:
    return isinstance(name, str) and name.lower().endswith(TORCH_EXTENSIONS)


def folder_choices(paths: Paths) -> list[str]:
    """PyTorch upscaler files under ``models/upscale_models`` (``/``-separated, sorted)."""
    return list_model_files(paths, FOLDER, extensions=frozenset(TORCH_EXTENSIONS))


def resolve(paths: Paths, name: str, input_name: str = "model_name") -> TorchModelFile:
    """The file of a PyTorch upscaler choice, or an :class:`UpscaleModelError` naming the input."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or "\0" in name:
        raise UpscaleModelError(f"input '{input_name}': {name!r} must be a path inside models/{FOLDER}")
    base = Path(paths.models_dir) / FOLDER
    path = base / rel
    if not path.is_file():
        raise UpscaleModelError(f"input '{input_name}': there is no upscale model {name!r} in {base}")
    return TorchModelFile(name, path)


def _unwrap(data: Any) -> Any:
    while isinstance(data, dict):
        inner = next((data[k] for k in WRAPPERS if isinstance(data.get(k), dict)), None)
        if inner is None:
            break
        data = inner
    return data


def read_state_dict(file: TorchModelFile, input_name: str = "model_name") -> dict[str, torch.Tensor]:
    """The file's tensors (CPU), unwrapped and without ``module.`` prefixes; never unpickles objects."""
    label = f"{file.name!r} ({file.path})"
    try:
        if file.path.suffix.lower() in SAFETENSORS:
            from safetensors.torch import load_file

            data: Any = load_file(str(file.path), device="cpu")
        else:
            data = torch.load(str(file.path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors' own errors, UnpicklingError, zip / EOF errors for truncated files
        detail = " ".join(str(exc).split())[:300]
        kind = "a .safetensors" if file.path.suffix.lower() in SAFETENSORS else "a plain-tensor PyTorch"
        raise UpscaleModelError(f"input '{input_name}': {label} cannot be read as {kind} file (corrupt, "
                                f"truncated, or holding pickled objects other than tensors): {detail}") from None
    data = _unwrap(data)
    if not isinstance(data, Mapping):
        raise UpscaleModelError(f"input '{input_name}': {label} holds a {type(data).__name__}, not a state dict")
    state = {}
    for key, value in data.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            state[key[len("module."):] if key.startswith("module.") else key] = value
    return state


class TorchUpscaler(nn.Module):
    """A loaded RRDBNet / SRVGGNetCompact and its scale; ``.to(device)`` moves it (the model manager does)."""

    def __init__(self, net: nn.Module, spec: ArchSpec, file: TorchModelFile) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.file = file

    @property
    def scale(self) -> int:
        return self.spec.scale

    @classmethod
    def load(cls, file: TorchModelFile, input_name: str = "model_name") -> "TorchUpscaler":
        state = read_state_dict(file, input_name)
        try:
            net, spec = build(state)
        except ArchError as exc:
            raise UpscaleModelError(f"input '{input_name}': {file.name!r} ({file.path}) is not a usable "
                                    f"upscale model: {exc}") from None
        if spec.in_channels != 3 or spec.out_channels != 3:
            raise UpscaleModelError(f"input '{input_name}': {file.name!r} ({file.path}) maps {spec.in_channels} "
                                    f"to {spec.out_channels} channels; only RGB (3 → 3) upscalers are supported")
        return cls(net, spec, file)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.inference_mode()
    def run(self, rgb: np.ndarray) -> np.ndarray:
        """``[3,h,w]`` float32 RGB 0..1 → ``[3,h·scale,w·scale]`` (not clamped)."""
        device = self.device
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))[None].to(device)
        height, width = x.shape[-2:]
        mod = self.spec.unshuffle  # pixel unshuffle needs sides divisible by it: pad, then crop the output
        pad_h, pad_w = -height % mod, -width % mod
        if pad_h or pad_w:
            mode = "reflect" if min(height, width) > max(pad_h, pad_w) else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            y = self.net(x)
        y = y[0, :, :height * self.scale, :width * self.scale]
        return y.float().cpu().numpy()

    def upscale(self, image: torch.Tensor, tile: int = 0, overlap: int = 0,
                on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """One IMAGE ``[H,W,C]`` (C = 1, 3 or 4) → ``[H·s,W·s,C]`` in 0..1 (:func:`nodegraph_nodes.upscale.tiling.upscale_image`)."""
        from nodegraph_nodes.upscale.tiling import upscale_image

        return upscale_image(image, self.run, self.scale, tile, overlap, on_tile)


__all__ = ["TORCH_EXTENSIONS", "TorchModelFile", "TorchUpscaler", "folder_choices", "is_torch_file",
           "read_state_dict", "resolve"]
