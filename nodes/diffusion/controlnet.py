"""ControlNet models (the ``CONTROL_NET`` socket) for the UNet families, and how their files are read.

A ControlNet is diffusers' ``ControlNetModel`` (SD 1.x / 2.x / SDXL). Files come from the ``controlnet``
model folders (:meth:`Paths.model_dirs <nodegraph.context.Paths.model_dirs>`, ComfyUI's
``t2i_adapter/`` subfolder included) in the layouts ComfyUI reads:

* the original single-file layout (lllyasviel's ``control_model.input_blocks…``, ``input_hint_block``,
  ``zero_convs``, ``middle_block_out``, with or without the ``control_model.`` prefix): the diffusers
  config is read off the tensor shapes (:func:`infer_controlnet_config`) and the weights are converted
  by diffusers' own ``convert_controlnet_checkpoint`` (plus SDXL's class embedding, which it leaves out);
  SDXL's time-id width has no weights: 256 for SDXL's 2816-wide class embedding, else DiffControlNetLoader's
  MODEL tells it;
* a single file in diffusers' key layout (``controlnet_cond_embedding.conv_in.weight`` …, how many SDXL
  ControlNets are shared), its config read off the shapes too (:func:`infer_diffusers_config`);
* a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

A *difference* ControlNet (a ``control_model.`` file with a ``difference`` tensor, DiffControlNetLoader)
stores its weights as offsets from a base UNet: the MODEL's UNet weights are added to every converted
tensor that the UNet has under the same name (LoRA patches on the MODEL are not included).

A file whose name ends in ``_shuffle`` (or ``_shuffle_fp16``) is a shuffle ControlNet, whose residuals are
averaged over the image (ComfyUI's rule; diffusers' ``global_pool_conditions``).

The values that ride on CONDITIONING entries (a hint image applied with a strength and a range of the
schedule, chained to the ControlNets applied before) are :class:`ControlHint` records; evaluating
them during sampling is :mod:`.control_run`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned

from nodegraph_nodes.diffusion import checkpoint as ck
from nodegraph_nodes.diffusion.files import ModelFileError, read_json, read_state_dict

CONTROL_NET = "CONTROL_NET"
FOLDER = "controlnet"
LDM_PREFIX = "control_model."
#: ComfyUI's union ControlNet types (comfy/cldm/control_types.py)
UNION_CONTROLNET_TYPES = {"openpose": 0, "depth": 1, "hed/pidi/scribble/ted": 2,
                          "canny/lineart/anime_lineart/mlsd": 3, "normal": 4, "segment": 5, "tile": 6,
                          "repaint": 7}
#: ControlNetModel config keys taken over from a UNet family template
_CONFIG_KEYS = ("act_fn", "downsample_padding", "flip_sin_to_cos", "freq_shift", "mid_block_scale_factor",
                "norm_eps", "norm_num_groups")


@dataclass(frozen=True, eq=False)
class ControlNet(ManagerOwned):
    """CONTROL_NET: a loaded ControlNet plus its options (SetUnionControlNetType's ``control_type``)."""

    handle: Any  # ManagedModel of a diffusers ControlNetModel / ControlNetUnionModel
    name: str
    family: str
    is_union: bool = False
    control_type: tuple[int, ...] = ()
    #: an inpainting ControlNet that takes the mask as an extra channel (ComfyUI's ``concat_mask``)
    concat_mask: bool = False

    def with_control_type(self, types: tuple[int, ...]) -> "ControlNet":
        return dataclasses.replace(self, control_type=tuple(types))


@dataclass(frozen=True, eq=False)
class ControlHint:
    """A ControlNet applied to conditioning: the hint image ``[B, C, H, W]`` (0..1), the strength, the
    part of the schedule it acts in (0 = first step, 1 = last) and the ControlNet applied before it on
    the same entry (``previous``: their residuals add up). Compared by identity, as ComfyUI's control
    objects: entries that share one hint share its network evaluation."""

    net: ControlNet
    image: torch.Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    vae: Any = None
    previous: "ControlHint | None" = None
    #: channels concatenated to the encoded hint (ControlNetInpaintingAliMamaApply's ``1 - mask``,
    #: ``[B, 1, H, W]``); an inpainting ControlNet without them gets ones
    extra_concat: tuple[torch.Tensor, ...] = ()

    def chain(self) -> list["ControlHint"]:
        """This hint and those before it, the earliest first."""
        out: list[ControlHint] = []
        node: ControlHint | None = self
        while node is not None:
            out.append(node)
            node = node.previous
        return out[::-1]


# -- reading files ---------------------------------------------------------------------------------

def is_controlnet_folder(path: Path) -> bool:
    """A diffusers ControlNet folder: ``config.json`` naming a ControlNet class."""
    cfg = path / "config.json"
    if not (path.is_dir() and cfg.is_file()):
        return False
    try:
        return "ControlNet" in str(read_json(cfg).get("_class_name", ""))
    except (OSError, ValueError):
        return False


def _strip_ldm(sd: dict[str, Any]) -> dict[str, Any] | None:
    """The control model's LDM keys without the ``control_model.`` prefix, or ``None`` if not LDM."""
    if LDM_PREFIX + "zero_convs.0.0.weight" in sd:
        return {k[len(LDM_PREFIX):]: v for k, v in sd.items() if k.startswith(LDM_PREFIX)}
    if "zero_convs.0.0.weight" in sd:
        return dict(sd)
    return None


def _hint_channels(sd: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
    """(image channels, conditioning_embedding_out_channels) of an LDM ``input_hint_block``."""
    convs = sorted(int(m.group(1)) for k in sd if (m := re.match(r"input_hint_block\.(\d+)\.weight$", k)))
    if len(convs) < 2:
        raise ModelFileError("the ControlNet has no input_hint_block (the hint image encoder)")
    channels = sd[f"input_hint_block.{convs[0]}.weight"].shape[1]
    # conv_in, then pairs of (same width, stride-2 wider) convs; the last conv maps to the UNet width
    outs = [int(sd[f"input_hint_block.{i}.weight"].shape[0]) for i in convs[:-1]]
    widths = [outs[0]] + [outs[i] for i in range(2, len(outs), 2)]
    if convs != list(range(0, 2 * len(convs), 2)) or len(outs) % 2 == 0:
        raise ModelFileError("the ControlNet's input_hint_block does not have the standard layout")
    return int(channels), tuple(widths)


def infer_controlnet_config(sd: dict[str, Any], time_embed_dim: int | None = None) -> tuple[str, dict]:
    """The family and diffusers ``ControlNetModel`` config of an LDM control model state dict (keys
    ``input_blocks…`` without prefix). ``time_embed_dim``: SDXL's ``addition_time_embed_dim`` when known
    (it has no weights of its own); otherwise 256 for SDXL's 2816-wide class embedding."""
    family = ck.detect_unet_family(sd)
    if family is None:
        raise ModelFileError("the ControlNet has no input_blocks.0.0.weight: not a UNet ControlNet")
    if family == "sdxl_refiner":
        raise ModelFileError("ControlNets for the SDXL refiner are not supported")
    template = ck.family_config(family, "unet.json")
    heads = ck.family_config(family, "family.json")["unet_heads"]
    levels = ck._unet_levels(sd)
    if not levels or any(lv["channels"] is None for lv in levels):
        raise ModelFileError("the ControlNet weights are incomplete (a resolution level has no blocks)")
    channels = [lv["channels"] for lv in levels]
    attn = [lv["depth"] > 0 for lv in levels]
    hint_channels, embed_widths = _hint_channels(sd)
    cfg: dict[str, Any] = {k: template[k] for k in _CONFIG_KEYS if k in template}
    depths = [max(lv["depth"], 1) for lv in levels]
    mid_depth = len(ck._block_ids(sd, "middle_block.1.transformer_blocks."))
    if mid_depth and mid_depth != depths[-1]:
        depths[-1] = mid_depth
    cfg.update(
        in_channels=int(sd["input_blocks.0.0.weight"].shape[1]),
        conditioning_channels=hint_channels,
        conditioning_embedding_out_channels=list(embed_widths),
        block_out_channels=channels,
        layers_per_block=levels[0]["resnets"],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        transformer_layers_per_block=depths[0] if len(set(depths)) == 1 else depths,
        use_linear_projection=bool(next((v.ndim == 2 for k, v in sd.items() if k.endswith("proj_in.weight")), False)),
    )
    if "middle_block.1.proj_in.weight" not in sd:
        cfg["mid_block_type"] = "UNetMidBlock2D" if "middle_block.0.in_layers.0.weight" in sd else None
    _set_attention(cfg, sd, heads, channels)
    if "label_emb.0.0.weight" in sd:
        adm = int(sd["label_emb.0.0.weight"].shape[1])
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=_time_dim(adm, time_embed_dim),
                   projection_class_embeddings_input_dim=adm)
    return family, cfg


def _set_attention(cfg: dict, sd: dict[str, Any], heads: dict, channels: list[int]) -> None:
    """Both layouts' attention settings: the cross-attention width (from any ``attn2.to_k``) and the head
    dimension (the family's fixed head count, or channels per head at each level)."""
    to_k = next((v for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    if to_k is not None:
        cfg["cross_attention_dim"] = int(to_k.shape[1])
    if "num_heads" in heads:
        cfg["attention_head_dim"] = heads["num_heads"]
    else:
        cfg["attention_head_dim"] = [max(1, c // heads["head_channels"]) for c in channels]


def _family_of_config(cfg: dict) -> str:
    if cfg.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if cfg.get("use_linear_projection") else "sd1"


def _diffusers_layout(sd: dict[str, Any]) -> bool:
    return "controlnet_cond_embedding.conv_in.weight" in sd


def _ids(sd: dict[str, Any], prefix: str) -> list[int]:
    return ck._block_ids(sd, prefix)


def infer_diffusers_config(sd: dict[str, Any], time_embed_dim: int | None = None) -> tuple[str, dict]:
    """The family and ``ControlNetModel`` config of a state dict in diffusers' key layout."""
    if "control_add_embedding.linear_1.weight" in sd or "task_embedding" in sd:
        raise ModelFileError("union ControlNets (ControlNet++ / ControlNetUnion) are not supported yet")
    levels = _ids(sd, "down_blocks.")
    if not levels or "conv_in.weight" not in sd:
        raise ModelFileError("the ControlNet weights are incomplete (no down blocks or conv_in)")
    channels = [int(sd[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in levels]
    attn = [bool(_ids(sd, f"down_blocks.{i}.attentions.")) for i in levels]
    depths = [max(1, len(_ids(sd, f"down_blocks.{i}.attentions.0.transformer_blocks."))) for i in levels]
    mid_depth = len(_ids(sd, "mid_block.attentions.0.transformer_blocks."))
    if mid_depth and mid_depth != depths[-1]:
        depths[-1] = mid_depth
    linear = bool(next((v.ndim == 2 for k, v in sd.items() if k.endswith("proj_in.weight")), False))
    family = "sdxl" if "add_embedding.linear_1.weight" in sd else ("sd2" if linear else "sd1")
    template = ck.family_config(family, "unet.json")
    heads = ck.family_config(family, "family.json")["unet_heads"]
    embed = [int(sd["controlnet_cond_embedding.conv_in.weight"].shape[0])]
    blocks = _ids(sd, "controlnet_cond_embedding.blocks.")
    embed += [int(sd[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]) for i in blocks if i % 2 == 1]
    cfg: dict[str, Any] = {k: template[k] for k in _CONFIG_KEYS if k in template}
    cfg.update(
        in_channels=int(sd["conv_in.weight"].shape[1]),
        conditioning_channels=int(sd["controlnet_cond_embedding.conv_in.weight"].shape[1]),
        conditioning_embedding_out_channels=embed,
        block_out_channels=channels,
        layers_per_block=len(_ids(sd, "down_blocks.0.resnets.")),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        transformer_layers_per_block=depths[0] if len(set(depths)) == 1 else depths,
        use_linear_projection=linear,
    )
    if not _ids(sd, "mid_block.attentions."):
        cfg["mid_block_type"] = "UNetMidBlock2D"
    _set_attention(cfg, sd, heads, channels)
    if family == "sdxl":
        adm = int(sd["add_embedding.linear_1.weight"].shape[1])
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=_time_dim(adm, time_embed_dim),
                   projection_class_embeddings_input_dim=adm)
    return family, cfg


def _time_dim(adm: int, known: int | None) -> int:
    if known is not None:
        return int(known)
    if adm != 2816:
        raise ModelFileError(f"cannot tell this SDXL ControlNet's time-id width (class embedding {adm} wide, "
                             "SDXL's is 2816); load it with DiffControlNetLoader and its MODEL, or as a diffusers "
                             "folder with its config.json")
    return 256


def convert_state_dict(sd: dict[str, Any], name: str, time_embed_dim: int | None = None
                       ) -> tuple[str, dict, dict[str, Any]]:
    """``(family, ControlNetModel config, diffusers-layout weights)`` of a single ControlNet file."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint

    if _diffusers_layout(sd):
        family, cfg = infer_diffusers_config(sd, time_embed_dim)
        return family, cfg, sd
    ldm = _strip_ldm(sd)
    if ldm is None:
        raise ModelFileError(f"{name} is not a ControlNet (no zero_convs.0.0.weight): it looks like "
                             f"{ck.describe_contents(sd)}; T2I-Adapters and ControlLoRA are not supported")
    family, cfg = infer_controlnet_config(ldm, time_embed_dim)
    converted = convert_controlnet_checkpoint({LDM_PREFIX + k: v for k, v in ldm.items()}, cfg)
    if cfg.get("addition_embed_type") == "text_time":  # diffusers' converter leaves SDXL's class embedding out
        for hf_key, ldm_key in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
            if ldm_key in ldm:
                converted[hf_key] = ldm[ldm_key]
    return family, cfg, {k: v for k, v in converted.items() if v is not None}


def build_controlnet(cfg: dict, weights: dict[str, Any], dtype: torch.dtype, what: str):
    from diffusers import ControlNetModel

    return ck._instantiate(ControlNetModel, cfg, weights, dtype, what)


def add_base_weights(weights: dict[str, Any], unet: torch.nn.Module) -> dict[str, Any]:
    """A difference ControlNet's weights plus the base UNet's weights of the same names."""
    base = unet.state_dict()
    out = {}
    for k, v in weights.items():
        if k in base and tuple(base[k].shape) == tuple(v.shape):
            out[k] = v.float() + base[k].detach().to("cpu", torch.float32)
        else:
            out[k] = v
    return out


def is_difference(sd: dict[str, Any]) -> bool:
    return "difference" in sd and LDM_PREFIX + "zero_convs.0.0.weight" in sd


def shuffle_name(path: Path) -> bool:
    stem = path.name[:-len(path.suffix)] if path.suffix else path.name
    return stem.endswith("_shuffle") or stem.endswith("_shuffle_fp16")


def load_controlnet_folder(folder: Path, dtype: torch.dtype, allow_pickle: bool):
    """A diffusers ControlNet folder → (family, module)."""
    from diffusers import ControlNetModel

    cfg = read_json(folder / "config.json")
    cls = ControlNetModel
    if cfg.get("_class_name") == "ControlNetUnionModel":
        from diffusers import ControlNetUnionModel

        cls = ControlNetUnionModel
    family = None
    if cfg.get("_class_name") == "QwenImageControlNetModel":  # Qwen-Image InstantX (nodegraph_nodes.dit)
        from diffusers import QwenImageControlNetModel

        cls, family = QwenImageControlNetModel, "qwen_image"
    variant = None  # a folder with only the fp16 weights (diffusion_pytorch_model.fp16.safetensors)
    if not any((folder / f"diffusion_pytorch_model.{ext}").is_file() for ext in ("safetensors", "bin")):
        variant = "fp16" if any(folder.glob("diffusion_pytorch_model.fp16.*")) else None
    try:
        module = cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True, variant=variant,
                                     use_safetensors=None if allow_pickle else True)
    except Exception as exc:
        raise ModelFileError(f"could not load the ControlNet folder {folder.name}: {exc}") from None
    return family or _family_of_config(dict(module.config)), module.eval().requires_grad_(False)


def read_controlnet_file(path: Path, allow_pickle: bool) -> dict[str, Any]:
    return read_state_dict(path, allow_pickle=allow_pickle)
