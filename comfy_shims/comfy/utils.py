"""ComfyUI's ``comfy.utils`` for custom node packs: ``ProgressBar`` (our progress events),
``common_upscale`` / ``lanczos`` / ``bislerp``, ``load_torch_file`` (nodegraph's pickle policy),
``tiled_scale`` and the batch helpers. Other names are placeholders.

The resize functions are the node library's own (``nodegraph_nodes.image.operations``,
``nodegraph_nodes.sampling.lcm_upscale``), so a pack resizes exactly as our ImageScale does.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from nodegraph.comfy_compat.current import current_node
from .._attrs import missing_attribute

PROGRESS_BAR_ENABLED = True
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".pkl")


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def __getattr__(name: str) -> Any:
    return missing_attribute("comfy.utils", name)


class ProgressBar:
    """Progress of the node that made it: ``update(n)`` adds steps, ``update_absolute(value, total,
    preview)`` sets them; each update is a ``progress`` message for the prompt's client (and a point
    where an interrupt stops the node). ``preview``: ComfyUI's ``(format, PIL image, max size)``."""

    def __init__(self, total: int, node_id: str | None = None) -> None:
        self.total = total
        self.current = 0
        self.node_id = node_id
        self.ctx = current_node()

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        if value > self.total:
            value = self.total
        self.current = value
        ctx = self.ctx or current_node()
        if ctx is None:
            return
        if preview is not None:
            image = _preview_tensor(preview)
            if image is not None:
                ctx.preview(image)
        ctx.progress(self.current, self.total)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)


def _preview_tensor(preview: Any) -> torch.Tensor | None:
    """ComfyUI's preview tuple ``(format, PIL image, max size)`` → float ``[H,W,C]``; else None."""
    image = preview[1] if isinstance(preview, (tuple, list)) and len(preview) > 1 else preview
    if isinstance(image, torch.Tensor):
        return image.float()
    try:
        import numpy as np

        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except Exception:  # not an image: no preview, the progress still counts
        return None
    return torch.from_numpy(array)


def common_upscale(samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str) -> torch.Tensor:
    """Resize ``[B,C,H,W]`` (ComfyUI's methods: nearest-exact, bilinear, area, bicubic, lanczos,
    bislerp; ``crop="center"`` crops to the new aspect first)."""
    from nodegraph_nodes.image.operations import center_crop_to_aspect
    from nodegraph_nodes.image.operations import common_upscale as resize

    if upscale_method == "bislerp":
        from nodegraph_nodes.sampling.lcm_upscale import bislerp

        source = center_crop_to_aspect(samples, width, height) if crop == "center" else samples
        return bislerp(source, width, height)
    if samples.ndim == 5:  # [B,C,T,H,W] video latents: each frame
        frames = [common_upscale(samples[:, :, t], width, height, upscale_method, crop)
                  for t in range(samples.shape[2])]
        return torch.stack(frames, dim=2)
    return resize(samples, width, height, upscale_method, crop)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    from nodegraph_nodes.image.operations import lanczos as resize

    return resize(samples, width, height)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    from nodegraph_nodes.sampling.lcm_upscale import bislerp as resize

    return resize(samples, width, height)


def load_torch_file(ckpt: str, safe_load: bool = False, device: Any = None, return_metadata: bool = False) -> Any:
    """A checkpoint's tensors (and its metadata with ``return_metadata``). ``.safetensors`` / ``.sft``
    always load; pickle files (``.ckpt`` ``.pt`` ``.bin`` …) only when the engine allows them
    (``--allow-pickle``: they can run code), and then with ``torch.load(weights_only=True)``."""
    device = torch.device("cpu") if device is None else device
    lower = str(ckpt).lower()
    metadata = None
    if lower.endswith((".safetensors", ".sft")):
        from safetensors import safe_open

        with safe_open(str(ckpt), framework="pt", device=str(device)) as handle:
            sd = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() if return_metadata else None
    else:
        if not _pickle_allowed():
            raise PermissionError(f"{ckpt} is a pickle file, which can run code when loaded; nodegraph loads "
                                  "pickle model files only with --allow-pickle (or convert it to .safetensors)")
        loaded = torch.load(str(ckpt), map_location=device, weights_only=True)
        sd = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    return (sd, metadata) if return_metadata else sd


def _pickle_allowed() -> bool:
    ctx = current_node()
    models = ctx.run.services.get("models") if ctx is not None else None
    return bool(getattr(models, "allow_pickle", False))


def save_torch_file(sd: dict, ckpt: str, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file(sd, ckpt, metadata=metadata)


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        repeats = [1] * tensor.ndim
        repeats[dim] = math.ceil(batch_size / tensor.shape[dim])
        return tensor.repeat(repeats).narrow(dim, 0, batch_size)
    return tensor


def resize_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Pick (or spread) items so the batch has ``batch_size`` items, as ComfyUI does."""
    size = tensor.shape[0]
    if size == batch_size:
        return tensor
    if batch_size <= 1:
        return tensor[:batch_size]
    if batch_size < size:  # pick evenly, first and last kept
        scale = (size - 1) / (batch_size - 1)
        index = [min(round(i * scale), size - 1) for i in range(batch_size)]
    else:  # repeat each item in turn
        scale = size / batch_size
        index = [min(math.floor((i + 0.5) * scale), size - 1) for i in range(batch_size)]
    return tensor[index]


def get_tiled_scale_steps(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


@torch.inference_mode()
def tiled_scale(samples: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor], tile_x: int = 64,
                tile_y: int = 64, overlap: int = 8, upscale_amount: float = 4, out_channels: int = 3,
                output_device: Any = "cpu", pbar: ProgressBar | None = None) -> torch.Tensor:
    """Apply ``function`` (e.g. an upscaler) to overlapping tiles of ``[B,C,H,W]`` and blend the
    results with feathered edges; the output is ``upscale_amount`` times larger."""
    batch, _, height, width = samples.shape
    out_h, out_w = round(height * upscale_amount), round(width * upscale_amount)
    output = torch.empty((batch, out_channels, out_h, out_w), device=output_device)
    step_y, step_x = max(tile_y - overlap, 1), max(tile_x - overlap, 1)
    for b in range(batch):
        image = samples[b:b + 1]
        total = torch.zeros((1, out_channels, out_h, out_w), device=output_device)
        weight = torch.zeros_like(total)
        for y in range(0, max(height - overlap, 1), step_y):
            for x in range(0, max(width - overlap, 1), step_x):
                y0, x0 = min(y, max(height - tile_y, 0)), min(x, max(width - tile_x, 0))
                tile = image[:, :, y0:y0 + tile_y, x0:x0 + tile_x]
                result = function(tile).to(output_device)
                feather = round(overlap * upscale_amount)
                mask = torch.ones_like(result)
                for t in range(feather):
                    fade = (t + 1) / feather
                    mask[:, :, t, :] *= fade
                    mask[:, :, mask.shape[2] - 1 - t, :] *= fade
                    mask[:, :, :, t] *= fade
                    mask[:, :, :, mask.shape[3] - 1 - t] *= fade
                oy, ox = round(y0 * upscale_amount), round(x0 * upscale_amount)
                total[:, :, oy:oy + result.shape[2], ox:ox + result.shape[3]] += result * mask
                weight[:, :, oy:oy + result.shape[2], ox:ox + result.shape[3]] += mask
                if pbar is not None:
                    pbar.update(1)
        output[b:b + 1] = total / weight.clamp_min(1e-8)
    return output
