"""Loading steps the DiT families share (SD3/Flux, Chroma, Lumina 2, Flux.2, Qwen-Image / Z-Image, Wan):
a transformer file through the model manager (UNETLoader's ``weight_dtype``), a text encoder file through
it, and the sub-model loaders of a diffusers folder. Each family keeps its own detection and building; only these steps are here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from nodegraph_nodes.diffusion.components import _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError, read_state_dict
from nodegraph_nodes.dit.convert import dequantize_scaled_fp8, strip_prefix


def load_transformer_handle(path: Path, prefix: str, manager, device: str, weight_dtype: str, dtype: torch.dtype,
                            build: Callable[[dict, torch.dtype], torch.nn.Module]):
    """The manager's handle of the transformer in file ``path``: its keys without ``prefix``, ComfyUI's
    ``fp8_scaled`` weights dequantized, ``build(sd, storage dtype)`` the module, then UNETLoader's
    ``weight_dtype`` (fp8 storage) applied. With fp8 on a GPU the layerwise casting computes in bf16, so
    placing only moves the fp8 weights (no compute dtype)."""
    from nodegraph_nodes.dit.loading import _apply_weight_dtype, _fp8, _stored

    def loader():
        sd = dequantize_scaled_fp8(strip_prefix(read_state_dict(path, allow_pickle=manager.allow_pickle,
                                                                dtype=_dequantised(manager, dtype)), prefix))
        return _apply_weight_dtype(build(sd, _stored(manager, sd, dtype)), weight_dtype, device, dtype)

    compute = None if _fp8(weight_dtype) and device.startswith("cuda") else dtype
    return manager.load(_manager_key(path, f"transformer:{weight_dtype}", dtype), loader, compute_dtype=compute,
                        placed=True)


def load_encoder_handle(path: Path, kind: str, manager, dtype: torch.dtype,
                        build: Callable[[dict, torch.dtype], torch.nn.Module]):
    """The manager's handle of the text encoder in file ``path`` (CLIPLoader's files): its weights read
    (ComfyUI's ``fp8_scaled`` dequantized), ``build(sd, storage dtype)`` the module, computing in ``dtype``;
    ``kind`` names it in the manager's key."""
    from nodegraph_nodes.dit.loading import _stored

    def loader():
        sd = dequantize_scaled_fp8(read_state_dict(path, allow_pickle=manager.allow_pickle,
                                                   dtype=_dequantised(manager, dtype)))
        return build(sd, _stored(manager, sd, dtype))

    return manager.load(_manager_key(path, kind, dtype), loader, compute_dtype=dtype)


def _dequantised(manager, dtype: torch.dtype):
    """The dtype rule for a quantised file's weights: what :func:`~nodegraph_nodes.dit.loading._stored` would
    keep a file of the unquantised tensors' dtype in (that dtype when streaming or on a GPU, else ``dtype``)."""
    return lambda file_dtype: manager.storage_dtype(file_dtype, dtype)


def require_subfolders(folder: Path, parts: tuple[str, ...]) -> None:
    """A clear error when the diffusers ``folder`` lacks one of the subfolders ``parts``."""
    for part in parts:
        if not (folder / part).is_dir():
            raise ModelFileError(f"diffusers folder {folder.name} has no '{part}' subfolder")


def diffusers_sub_loader(folder: Path, manager, dtype: torch.dtype):
    """``sub_loader(cls, sub, wrap=None, placed=False)``: a manager loader of ``cls.from_pretrained`` on
    ``folder/sub`` (local files only; safetensors only unless the manager allows pickles), in eval mode
    without gradients, passed through ``wrap`` when given. ``placed``: stored in the folder's own dtype
    when the manager streams (see :func:`nodegraph_nodes.dit.loading._stored`), else in ``dtype``."""

    def sub_loader(cls, sub: str, wrap: Callable | None = None, placed: bool = False):
        def loader():
            from nodegraph.offload import safetensors_dtype

            store = manager.storage_dtype(safetensors_dtype(folder / sub), dtype) if placed else dtype
            try:
                net = cls.from_pretrained(str(folder / sub), torch_dtype=store, local_files_only=True,
                                          use_safetensors=None if manager.allow_pickle else True)
                net = net.eval().requires_grad_(False)
            except Exception as exc:
                raise ModelFileError(f"could not load {folder.name}/{sub}: {exc}") from None
            return wrap(net) if wrap else net
        return loader

    return sub_loader


class CheckpointWeights:
    """``sd()``: an all-in-one file's weights, read (ComfyUI's ``fp8_scaled`` dequantized) on the first call
    and kept for the next ones, so each part's loader reads the file at most once; ``clear()`` lets them go
    (a later reload reads the file again)."""

    def __init__(self, path: Path, manager):
        self.path = path
        self.manager = manager
        self._sd: dict | None = None

    def __call__(self) -> dict:
        if self._sd is None:
            self._sd = dequantize_scaled_fp8(read_state_dict(self.path, allow_pickle=self.manager.allow_pickle))
        return self._sd

    def clear(self) -> None:
        self._sd = None
