"""PyTorch-format upscale models (``.pth``, ``.pt``, ``.safetensors``, ``.sft``) in ``models/upscale_models``,
built by spandrel (:mod:`nodegraph_nodes.upscale.spandrel_import`).

Reading never runs a file's code unless the engine allows pickle: safetensors are read directly,
``.pth``/``.pt`` with ``torch.load(weights_only=True)`` (tensors and plain containers). A file that needs
full unpickling (any other pickled class) is refused, or — with ``--allow-pickle``
(``ModelManager.allow_pickle``) — read with ``torch.load(weights_only=False)``. Wrappers (basicsr's
``params_ema``/``params``, ``state_dict``, …) are unwrapped and ``module.`` prefixes stripped, then
spandrel's registry, in its detection order, names the architecture (ESRGAN/RRDBNet, Compact, SwinIR,
SPAN, HAT, DAT, OmniSR, …) and builds it with hyper-parameters read from the tensors. Only single-image
models mapping RGB to RGB are taken. The network runs on the engine's device (fp16 autocast on CUDA
where spandrel says the architecture supports half precision), tile by tile with
:func:`nodegraph_nodes.upscale.tiling.upscale_image`, like the ncnn models. Every failure is an
:class:`~nodegraph_nodes.upscale.ncnn_upscaler.UpscaleModelError` naming the input and the file.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from nodegraph.context import Paths

from nodegraph_nodes.diffusion.files import list_model_files
from nodegraph_nodes.upscale.ncnn_upscaler import FOLDER, UpscaleModelError
from nodegraph_nodes.upscale.spandrel_import import import_spandrel, needs_torchvision

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

    @property
    def label(self) -> str:
        return f"{self.name!r} ({self.path})"


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
    bases = paths.model_dirs(FOLDER)  # nodegraph's folder, then an existing ComfyUI install's
    path = next((base / rel for base in bases if (base / rel).is_file()), None)
    if path is None:
        raise UpscaleModelError(f"input '{input_name}': there is no upscale model {name!r} in "
                                f"{' or '.join(str(base) for base in bases)}")
    return TorchModelFile(name, path)


def _unwrap(data: Any) -> Any:
    while isinstance(data, dict):
        inner = next((data[k] for k in WRAPPERS if isinstance(data.get(k), dict)), None)
        if inner is None:
            break
        data = inner
    return data


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _is_weights_only_refusal(exc: BaseException) -> bool:
    """torch's weights-only unpickler met a class it does not allow (not a damaged file)."""
    return isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower()


def _load(file: TorchModelFile, allow_pickle: bool, input_name: str) -> Any:
    if file.path.suffix.lower() in SAFETENSORS:
        from safetensors.torch import load_file

        try:
            return load_file(str(file.path), device="cpu")
        except Exception as exc:  # safetensors' own error types, OSError, ValueError
            raise UpscaleModelError(f"input '{input_name}': {file.label} cannot be read as a .safetensors file "
                                    f"(corrupt or truncated): {_short(exc)}") from None
    try:
        return torch.load(str(file.path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, zip / EOF errors for truncated files
        if not _is_weights_only_refusal(exc):
            raise UpscaleModelError(f"input '{input_name}': {file.label} cannot be read as a PyTorch file "
                                    f"(corrupt or truncated): {_short(exc)}") from None
        if not allow_pickle:
            raise UpscaleModelError(
                f"input '{input_name}': {file.label} holds pickled objects other than tensors; pickle files can "
                "run arbitrary code when loaded, so they are refused. Convert it to .safetensors, or start the "
                f"engine with --allow-pickle if you trust the file ({_short(exc)})") from None
    try:
        return torch.load(str(file.path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UpscaleModelError(f"input '{input_name}': {file.label} cannot be read as a PyTorch file: "
                                f"{_short(exc)}") from None


def read_state_dict(file: TorchModelFile, allow_pickle: bool = False,
                    input_name: str = "model_name") -> dict[str, torch.Tensor]:
    """The file's tensors (CPU), unwrapped and without ``module.`` prefixes.

    Pickled objects other than tensors are only unpickled when ``allow_pickle`` is true."""
    data = _unwrap(_load(file, allow_pickle, input_name))
    if not isinstance(data, Mapping):
        raise UpscaleModelError(f"input '{input_name}': {file.label} holds a {type(data).__name__}, not a state dict")
    state = {}
    for key, value in data.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            state[key[len("module."):] if key.startswith("module.") else key] = value
    return state


def build(state: dict[str, torch.Tensor], file: TorchModelFile, input_name: str = "model_name") -> Any:
    """spandrel's ``ImageModelDescriptor`` for a state dict, or an :class:`UpscaleModelError` saying why not."""
    where = f"input '{input_name}': {file.label}"
    try:
        spandrel = import_spandrel()
    except ImportError as exc:
        raise UpscaleModelError(f"{where} cannot be loaded: {exc}") from None
    state = spandrel.canonicalize_state_dict(state)
    support = next((s for s in spandrel.MAIN_REGISTRY.architectures("detection") if s.detect(state)), None)
    if support is None:
        sample = ", ".join(repr(k) for k in list(state)[:3]) or "no tensors"
        raise UpscaleModelError(f"{where} is no upscale model spandrel {spandrel.__version__} knows: no "
                                f"architecture of its {len(spandrel.MAIN_REGISTRY)} (ESRGAN, SwinIR, SPAN, HAT, "
                                f"DAT, …) matches its tensors ({sample}, …)")
    arch = support.architecture
    if needs_torchvision(arch):
        raise UpscaleModelError(f"{where} is a {arch.name} model; spandrel runs that architecture with torchvision, "
                                "which nodegraph does not install")
    try:
        model = arch.load(state)
    except Exception as exc:  # shapes that do not fit what the keys announced
        raise UpscaleModelError(f"{where}: recognised a {arch.name} model, but it cannot be built from the file's "
                                f"tensors: {type(exc).__name__}: {_short(exc)}") from None
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise UpscaleModelError(f"{where} is a {arch.name} model for {model.purpose}, not a single-image model")
    if model.input_channels != 3 or model.output_channels != 3:
        raise UpscaleModelError(f"{where} ({arch.name}) maps {model.input_channels} to {model.output_channels} "
                                "channels; only RGB (3 → 3) models are supported")
    return model.eval()


class TorchUpscaler(nn.Module):
    """A spandrel model and its scale; ``.to(device)`` moves it (the model manager does)."""

    def __init__(self, descriptor: Any, file: TorchModelFile) -> None:
        super().__init__()
        self.descriptor = descriptor
        self.net = descriptor.model.requires_grad_(False)  # a submodule: .to() moves the descriptor's weights
        self.file = file

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.id)

    @classmethod
    def load(cls, file: TorchModelFile, allow_pickle: bool = False,
             input_name: str = "model_name") -> "TorchUpscaler":
        return cls(build(read_state_dict(file, allow_pickle, input_name), file, input_name), file)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.inference_mode()
    def run(self, rgb: np.ndarray) -> np.ndarray:
        """``[3,h,w]`` float32 RGB 0..1 → ``[3,h·scale,w·scale]`` in 0..1 (spandrel pads to the model's
        size requirements and crops back)."""
        device = self.device
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))[None].to(device)
        half = device.type == "cuda" and self.descriptor.supports_half
        with torch.autocast("cuda", dtype=torch.float16, enabled=half):
            y = self.descriptor(x)
        return y[0].float().cpu().numpy()

    def upscale(self, image: torch.Tensor, tile: int = 0, overlap: int = 0,
                on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """One IMAGE ``[H,W,C]`` (C = 1, 3 or 4) → ``[H·s,W·s,C]`` in 0..1 (:func:`nodegraph_nodes.upscale.tiling.upscale_image`)."""
        from nodegraph_nodes.upscale.tiling import upscale_image

        return upscale_image(image, self.run, self.scale, tile, overlap, on_tile)


__all__ = ["TORCH_EXTENSIONS", "TorchModelFile", "TorchUpscaler", "build", "folder_choices", "is_torch_file",
           "read_state_dict", "resolve"]
