"""ModelPatchLoader (ComfyUI's name): small networks from ``models/model_patches`` that patch a diffusion
transformer's blocks. The MODEL_PATCH value holds the file's network through the model manager.

Layouts (detected from the keys, as ComfyUI):

* **DiffSynth blockwise ControlNet for Qwen-Image** (``qwen_image_{canny,depth,inpaint}_diffsynth_controlnet``):
  ``img_in.{weight,bias}`` (``[dim, 64 + extra]``: 2×2 patches of the 16-channel control latent, plus for the
  inpaint model ``extra`` = 4 features, 2×2 patches of one mask channel) and per transformer block
  ``controlnet_blocks.N.{x_rms,y_rms}.weight`` (RMSNorm, eps 1e-6), ``….input_proj.{weight,bias}``,
  ``….output_proj.{weight,bias}``. Block ``N`` adds ``output_proj(gelu(input_proj(rms_x(img) + rms_y(c))))``
  (exact GELU) to the image tokens after transformer block ``N`` (:mod:`.model_patch_apply`).
* **Z-Image Fun ControlNet** (alibaba-pai ``Z-Image-Turbo-Fun-Controlnet-Union`` v1 and 2.x):
  ``control_all_x_embedder.2-1`` and ``control_layers.N`` / ``control_noise_refiner.N`` transformer blocks
  (:mod:`.model_patch_zimage`).

* **USO's SigLIP projector** (``uso-flux1-projector-v1``: ``feature_embedder.{high,mid,low}_…``) for
  USOStyleReference (:mod:`.uso`).

* **InfiniteTalk's audio adapter** for Wan 2.1 (``audio_proj.*``, ``blocks.N.{norm_x,audio_cross_attn}``) for
  WanInfiniteTalkToVideo (:mod:`.wan_infinitetalk`).

Other model patches ComfyUI loads (Anima's LLLite) are refused with an error naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.node import COMBO, Input, Node, Output

from nodegraph_nodes.diffusion.files import ModelFileError, file_identity, list_model_files, read_state_dict, resolve_model

MODEL_PATCH = "MODEL_PATCH"
FOLDER = "model_patches"
QWEN_MARKER = "controlnet_blocks.0.y_rms.weight"
ZIMAGE_MARKER = "control_all_x_embedder.2-1.weight"


class RMSNorm(torch.nn.Module):
    """``x / sqrt(mean(x²) + eps) · weight`` over the last axis."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class BlockwiseControlBlock(torch.nn.Module):
    """One DiffSynth control block: both inputs RMS-normalised, summed, then linear → GELU → linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.x_rms = RMSNorm(dim)
        self.y_rms = RMSNorm(dim)
        self.input_proj = torch.nn.Linear(dim, dim)
        self.output_proj = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.input_proj(self.x_rms(x) + self.y_rms(y))
        return self.output_proj(torch.nn.functional.gelu(h))


class QwenBlockwiseControlNet(torch.nn.Module):
    """The DiffSynth blockwise ControlNet of Qwen-Image: ``img_in`` and one control block per transformer
    block."""

    def __init__(self, num_layers: int, dim: int, in_features: int):
        super().__init__()
        self.additional_in_dim = in_features - 64
        self.img_in = torch.nn.Linear(in_features, dim)
        self.controlnet_blocks = torch.nn.ModuleList(BlockwiseControlBlock(dim) for _ in range(num_layers))

    def embed(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` (model-space latent channels, plus mask channels; even sides) → ``[B, h/2·w/2, dim]``."""
        from nodegraph_nodes.dit.model import pack_latents

        return self.img_in(pack_latents(latent))


def qwen_config(sd: dict) -> dict:
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("controlnet_blocks.")}
    if blocks != set(range(len(blocks))):
        raise ModelFileError(f"controlnet_blocks are not numbered 0..n-1 ({sorted(blocks)[:8]}…)")
    dim, in_features = sd["img_in.weight"].shape
    if in_features < 64:
        raise ModelFileError(f"img_in takes {in_features} features; a Qwen-Image control patch takes at least 64")
    return {"num_layers": len(blocks), "dim": int(dim), "in_features": int(in_features)}


def patch_kind(keys) -> str:
    keys = set(keys)
    if QWEN_MARKER in keys:
        return "qwen_blockwise_controlnet"
    if ZIMAGE_MARKER in keys:
        return "z_image_fun_controlnet"
    if "feature_embedder.high_projection.weight" in keys:
        return "uso_siglip_projector"
    from nodegraph_nodes.dit.wan_infinitetalk import is_infinitetalk

    if is_infinitetalk(keys):
        return "wan_infinitetalk"
    raise ModelFileError("not a model patch nodegraph knows (DiffSynth Qwen-Image ControlNet: "
                         f"'{QWEN_MARKER}'; Z-Image Fun ControlNet: '{ZIMAGE_MARKER}')")


def build_patch(kind: str, sd: dict, dtype: torch.dtype) -> torch.nn.Module:
    if kind == "qwen_blockwise_controlnet":
        net = QwenBlockwiseControlNet(**qwen_config(sd))
    elif kind == "wan_infinitetalk":
        from nodegraph_nodes.dit.wan_infinitetalk import InfiniteTalkAdapter

        try:  # the head count is the patched model's, set when a run attaches it
            return InfiniteTalkAdapter.from_state_dict(sd, 1, dtype=dtype).eval().requires_grad_(False)
        except ValueError as exc:
            raise ModelFileError(str(exc)) from None
    elif kind == "uso_siglip_projector":
        from nodegraph_nodes.dit.uso import build_uso_projector

        net, sd = build_uso_projector(sd)
    else:
        from nodegraph_nodes.dit.model_patch_zimage import build_z_image_control

        net, sd = build_z_image_control(sd)
    missing, unexpected = net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    if missing or unexpected:
        raise ModelFileError(f"the {kind} weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net.to(dtype).eval().requires_grad_(False)


@dataclass(frozen=True, eq=False)
class ModelPatchValue:
    """MODEL_PATCH: ``kind`` (``qwen_blockwise_controlnet`` / ``z_image_fun_controlnet`` / ``uso_siglip_projector`` /
    ``wan_infinitetalk``), the manager's
    handle of the network and the file name."""

    kind: str
    handle: Any
    name: str

    def network(self) -> torch.nn.Module:
        return self.handle.get()


def load_model_patch(path: Path, name: str, manager, device: str) -> ModelPatchValue:
    from nodegraph_nodes.diffusion.components import _manager_key
    from nodegraph_nodes.dit.convert import dequantize_scaled_fp8
    from nodegraph_nodes.dit.loading import file_keys, flow_dtype

    dtype = flow_dtype(device)
    try:
        kind = patch_kind(file_keys(path, manager.allow_pickle))  # the names only; the weights load on first use
    except ModelFileError as exc:
        raise ModelFileError(f"input 'name': {name!r}: {exc}") from None

    def loader():
        state = dequantize_scaled_fp8(read_state_dict(path, allow_pickle=manager.allow_pickle))
        try:
            return build_patch(kind, state, dtype)
        except ModelFileError as exc:
            raise ModelFileError(f"input 'name': {name!r}: {exc}") from None

    handle = manager.load(_manager_key(path, f"model_patch:{kind}", dtype), loader)
    return ModelPatchValue(kind, handle, name)


def model_patch_choices(paths: Paths) -> list[str]:
    return list_model_files(paths, FOLDER)


class ModelPatchLoader(Node):
    """Load a model patch from models/model_patches: the DiffSynth blockwise ControlNets of Qwen-Image and
    the Z-Image Fun ControlNets (apply with QwenImageDiffsynthControlnet / ZImageFunControlnet), USO's style
    projector (USOStyleReference), InfiniteTalk's audio adapter (WanInfiniteTalkToVideo).

    Stricter than ComfyUI: other patch kinds (Anima LLLite) are refused with an error."""

    category = "advanced/loaders"
    display_name = "ModelPatchLoader"
    name = Input(COMBO, choices=model_patch_choices)
    outputs = (Output(MODEL_PATCH),)

    @classmethod
    def fingerprint(cls, paths: Paths | None = None, name: str | None = None, **_: Any) -> Any:
        try:
            return file_identity(resolve_model(paths or Paths(), FOLDER, name or ""))
        except ModelFileError:
            return ("missing", name)

    def execute(self, name: str) -> tuple:
        path = resolve_model(self.ctx.paths, FOLDER, name)
        return (load_model_patch(path, name, self.ctx.service("models"), self.ctx.device),)
