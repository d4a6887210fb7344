"""SCAIL-2 (and the first SCAIL) behind UNETLoader: detection of the file, its weights converted for
:class:`~nodegraph_nodes.dit.wan_scail_model.WanSCAIL2Transformer`, the MODEL value and its runner.

Files: Comfy-Org's ``wan2.1_14B_SCAIL_2_*.safetensors`` (fp16, fp8_scaled, ``int8_convrot``: every quantised
format is dequantised as the file is read, :mod:`nodegraph_nodes.diffusion.quantized`) keep Wan's original names
(bare or under ``model.diffusion_model.``) of a Wan 2.1 I2V transformer with 20 input channels, plus
``patch_embedding_pose`` (20 channels) and ``patch_embedding_mask`` (28 channels, SCAIL-2's marker; the first
SCAIL's files have no mask convolution). The Wan part goes through diffusers' Wan converter; the two
convolutions keep their names. The config comes from the shapes (heads of 128 as other Wan files).

Runner (ComfyUI's ``WAN21_SCAIL2`` conditions, WanSCAILToVideo's): ``reference_latents`` (the first the primary
reference, the others additional views, put in front of it), ``ref_mask_28ch`` ``[1, refs + T, 28, h, w]`` and
``driving_mask_28ch`` ``[1, T, 28, h/2, w/2]`` (frames second), ``pose_video_latent`` (on the steps of its
timestep range), ``ref_mask_flag`` (false: Replacement Mode), ``clip_vision_output`` (required, as the official
model). A first-SCAIL model takes the references and the pose only, in Animation Mode (ComfyUI's ``WAN21_SCAIL``). A noise mask (WanSCAILToVideo's ``previous_frames``): the kept frames go in as the clean latent at every
step (ComfyUI's ``scale_latent_inpaint``) and ``1 - mask`` is the 4-channel history mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.model import _rows
from nodegraph_nodes.dit.qwen_image import open_runner
from nodegraph_nodes.dit.runner_common import NetRunner
from nodegraph_nodes.dit.wan import WanModel
from nodegraph_nodes.dit.wan_variant import build_variant, latent_in, load_variant, original_prefix, wan_base_config
from nodegraph_nodes.dit.wan_scail_model import ScailInputs
from nodegraph_nodes.sampling.model import CondPart

MASK_MARKER = "patch_embedding_mask.weight"
POSE_MARKER = "patch_embedding_pose.weight"
OWN = ("patch_embedding_pose.", "patch_embedding_mask.")


def detect_prefix(keys) -> str | None:
    """The key prefix of a SCAIL / SCAIL-2 file (Wan's original layout with a pose convolution), else ``None``."""
    return original_prefix(keys, (POSE_MARKER,))


def convert(sd: dict) -> dict:
    """Original-layout SCAIL-2 weights → :class:`WanSCAIL2Transformer`'s names."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    out = convert_wan_transformer_to_diffusers({k: v for k, v in sd.items() if not k.startswith(OWN)})
    out.update({k: v for k, v in sd.items() if k.startswith(OWN)})
    return out


def transformer_config(sd: dict) -> dict:
    """The :class:`WanSCAIL2Transformer` config from converted weights' shapes."""
    from nodegraph_nodes.dit.wan import transformer_config as wan_config

    base = wan_config(sd)
    if "image_dim" not in base:
        raise ModelFileError("the SCAIL weights lack the image embedder (img_emb.*) of a Wan 2.1 I2V model")
    mask = sd.get(MASK_MARKER)
    return wan_base_config(base, ("image_dim",)) | {"mask_channels": int(mask.shape[1]) if mask is not None else 0}


def build_transformer(sd: dict, dtype: torch.dtype):
    from nodegraph_nodes.dit.wan_scail_model import WanSCAIL2Transformer

    return build_variant(sd, dtype, "SCAIL-2 transformer", convert, transformer_config, WanSCAIL2Transformer)


def load_transformer(path: Path, prefix: str, manager, device: str, weight_dtype: str = "default") -> "WanScailModel":
    """UNETLoader for a SCAIL-2 file."""
    return load_variant(path, prefix, manager, device, weight_dtype, build_transformer, WanScailModel)


@dataclass(frozen=True, eq=False)
class WanScailModel(WanModel):
    """MODEL: a SCAIL-2 transformer (Wan 2.1 latents, reference / pose / identity-mask conditioning)."""

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, WanScailRunner)


def _frames_second(value: torch.Tensor | None, rows: int, device, dtype) -> torch.Tensor | None:
    """WanSCAILToVideo's 28-channel masks ``[B, frames, 28, h, w]`` → ``[rows, 28, frames, h, w]``."""
    return None if value is None else _rows(value.movedim(1, 2).float(), rows).to(device, dtype)


def scail_inputs(extras: dict, rows: int, device, dtype, history: torch.Tensor | None = None,
                 masks: bool = True) -> ScailInputs:
    """A conditioning entry's SCAIL-2 inputs (see the module's docstring); ``masks`` false (a first-SCAIL model):
    without the identity masks and in Animation Mode."""
    output = extras.get("clip_vision_output")
    if output is None:
        raise ValueError("SCAIL-2 needs the reference image's CLIP vision output: connect CLIPVisionEncode to "
                         "WanSCAILToVideo.clip_vision_output")
    refs = list(extras.get("reference_latents") or ())
    reference = None
    if refs:
        reference = torch.cat([latent_in(r, rows, device, dtype) for r in refs[1:] + refs[:1]], dim=2)
    pose = extras.get("pose_video_latent")
    image = _rows(output.penultimate_hidden_states.to(device, dtype), rows)
    pose = latent_in(pose, rows, device, dtype) if pose is not None else None
    if not masks:
        return ScailInputs(image=image, reference=reference, pose=pose, history=history)
    return ScailInputs(image=image, reference=reference, pose=pose,
                       reference_mask=_frames_second(extras.get("ref_mask_28ch"), rows, device, dtype),
                       pose_mask=_frames_second(extras.get("driving_mask_28ch"), rows, device, dtype),
                       history=history, replace=extras.get("ref_mask_flag") is False)


class WanScailRunner(NetRunner):
    """One run's calls of a :class:`WanSCAIL2Transformer`: one call per conditioning part."""

    latent_image = None
    mask = None

    def set_latent(self, latent_image: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        self.latent_image, self.mask = latent_image, mask

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        if x_in.ndim != 5:
            raise ValueError(f"SCAIL-2 samples video latents [B, 16, frames, h, w]; this latent is {list(x_in.shape)} "
                             "(make it with WanSCAILToVideo)")
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, torch.float32).reshape(-1).expand(x.shape[0])
        history = None
        if self.mask is not None:  # the kept (previous) frames go in clean; 1 - mask marks them
            mask = _rows(self.mask.to(self.device, self.dtype), x.shape[0])
            x = x * mask + _rows(self.latent_image.to(self.device, self.dtype), x.shape[0]) * (1 - mask)
            history = (1 - mask.mean(dim=1, keepdim=True)).expand(-1, 4, -1, -1, -1)
        masks = hasattr(self.net, "patch_embedding_mask")
        outs, row = [], 0
        for part in parts:
            n = part.rows
            inputs = scail_inputs(part.extras, n, self.device, self.dtype,
                                  history[row:row + n] if history is not None else None, masks)
            outs.append(self.net(x[row:row + n], t[row:row + n], _rows(part.cond.to(self.device, self.dtype), n),
                                 inputs))
            row += n
        return torch.cat(outs)
