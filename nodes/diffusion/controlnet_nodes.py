"""ControlNet nodes (ComfyUI's names, inputs and outputs): ControlNetLoader, DiffControlNetLoader,
ControlNetApply, ControlNetApplyAdvanced, ControlNetInpaintingAliMamaApply and SetUnionControlNetType.

The loaders list the ``controlnet`` model folders (files, and diffusers ControlNet folders holding a
``config.json``) and load through the engine's model manager (see :mod:`.controlnet` for the file
layouts). The apply nodes put a :class:`~nodegraph_nodes.diffusion.controlnet.ControlHint` on each
CONDITIONING entry (``extras["control"]``, chained to the entry's earlier ControlNet), which both
KSampler paths and SamplerCustomAdvanced evaluate inside the UNet call (:mod:`.control_run`) — or, for
Qwen-Image InstantX ControlNets, inside the Qwen-Image transformer call (``nodegraph_nodes.dit.qwen_controlnet``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.node import COMBO, FLOAT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, MASK, MODEL, VAE

from nodegraph_nodes.diffusion.components import compute_dtype
from nodegraph_nodes.diffusion.controlnet import (CONTROL_NET, FOLDER, UNION_CONTROLNET_TYPES, ControlHint, ControlNet,
                                                  add_base_weights, build_controlnet, convert_state_dict,
                                                  is_controlnet_folder, is_difference, load_controlnet_folder,
                                                  read_controlnet_file, shuffle_name)
from nodegraph_nodes.diffusion.files import MODEL_EXTENSIONS, ModelFileError, file_identity, read_json, resolve_model


def controlnet_choices(paths: Paths) -> list[str]:
    """ControlNet files and diffusers ControlNet folders in every ``controlnet`` folder."""
    found: set[str] = set()
    for base in paths.model_dirs(FOLDER):
        if not base.is_dir():
            continue
        for root, dirs, files in os.walk(base, followlinks=True):
            root_path = Path(root)
            if root_path != base and is_controlnet_folder(root_path):
                found.add(root_path.relative_to(base).as_posix())
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if Path(name).suffix.lower() in MODEL_EXTENSIONS and not name.startswith("."):
                    found.add((root_path / name).relative_to(base).as_posix())
    return sorted(found)


def _identity(path: Path) -> Any:
    if path.is_dir():
        return (str(path.resolve()), max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=0))
    return file_identity(path)


def _fingerprint(paths: Paths, name: str | None) -> Any:
    if not name:
        return None
    try:
        return _identity(resolve_model(paths, FOLDER, name))
    except (ModelFileError, OSError):
        return None


def load_controlnet(ctx, name: str, model=None) -> ControlNet:
    """The CONTROL_NET named ``name``; with ``model``, a difference ControlNet is added to its UNet."""
    path = resolve_model(ctx.paths, FOLDER, name)
    manager = ctx.service("models")
    dtype = compute_dtype(ctx.device, "unet")
    if path.is_dir():
        if not is_controlnet_folder(path):
            raise ModelFileError(f"{name} is a folder without a ControlNet config.json")
        if read_json(path / "config.json").get("_class_name") == "QwenImageControlNetModel":
            from nodegraph_nodes.dit.loading import flow_dtype

            dtype = flow_dtype(ctx.device)  # bf16 on GPUs, as the Qwen-Image transformer
        holder: dict[str, Any] = {}

        def folder_loader():
            family, module = load_controlnet_folder(path, dtype, manager.allow_pickle)
            holder["family"] = family
            return module

        handle = manager.load((*_identity(path), "controlnet", str(dtype)), folder_loader)
        module = handle.get()
        if type(module).__name__ == "ControlNetUnionModel":
            return ControlNet(handle, name, "sdxl", is_union=True)
        return _control_net(handle, name, module, holder.get("family"))
    time_dim = None
    base = None
    if model is not None:
        unet = model.handle.get()
        time_dim = getattr(unet.config, "addition_time_embed_dim", None)
        base = unet
    info: dict[str, Any] = {}

    def file_loader():
        sd = read_controlnet_file(path, manager.allow_pickle)
        from nodegraph_nodes.dit import qwen_controlnet

        if qwen_controlnet.is_qwen_controlnet(sd):  # Qwen-Image InstantX (union / inpainting): bf16 on GPUs
            from nodegraph_nodes.dit.loading import flow_dtype

            info["family"] = "qwen_image"
            return qwen_controlnet.build_controlnet(sd, flow_dtype(ctx.device), f"ControlNet {name}")
        from nodegraph_nodes.dit import flux_controlnet

        if flux_controlnet.is_flux_controlnet(sd):  # Flux.1 InstantX / AliMama inpainting (diffusers' names)
            from nodegraph_nodes.dit.loading import flow_dtype

            info["family"] = "flux"
            return flux_controlnet.build_controlnet(sd, flow_dtype(ctx.device), f"ControlNet {name}")
        difference = is_difference(sd)
        family, cfg, weights = convert_state_dict(sd, name, time_dim)
        if difference:
            if base is None:
                raise ModelFileError(f"{name} is a difference ControlNet; load it with DiffControlNetLoader "
                                     "and the MODEL it was made for")
            weights = add_base_weights(weights, base)
        if shuffle_name(path):
            cfg["global_pool_conditions"] = True
        info["family"] = family
        return build_controlnet(cfg, weights, dtype, f"ControlNet {name}")

    key = (*file_identity(path), "controlnet", str(dtype), time_dim,
           None if model is None else model.handle.key)
    handle = manager.load(key, file_loader)
    return _control_net(handle, name, handle.get(), info.get("family"))


def _control_net(handle, name: str, module, family: str | None) -> ControlNet:
    if type(module).__name__ == "QwenImageControlNetModel":
        from nodegraph_nodes.dit.qwen_controlnet import concat_mask

        return ControlNet(handle, name, "qwen_image", concat_mask=concat_mask(module))
    if type(module).__name__ == "FluxControlNetModel":
        from nodegraph_nodes.dit import flux_controlnet

        return ControlNet(handle, name, "flux", concat_mask=flux_controlnet.concat_mask(module))
    return ControlNet(handle, name, family or _family_of(module))


def _family_of(module) -> str:
    cfg = module.config
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return "sd2" if getattr(cfg, "use_linear_projection", False) else "sd1"


class ControlNetLoader(Node):
    """Loads a ControlNet (models/controlnet: an original single file or a diffusers ControlNet folder)."""

    category = "loaders"
    display_name = "Load ControlNet Model"
    control_net_name = Input(COMBO, choices=controlnet_choices)
    outputs = (Output(CONTROL_NET),)

    @classmethod
    def fingerprint(cls, paths: Paths, control_net_name: str | None = None, **_: Any) -> Any:
        return _fingerprint(paths, control_net_name)

    def execute(self, control_net_name: str) -> tuple:
        return (load_controlnet(self.ctx, control_net_name),)


class DiffControlNetLoader(Node):
    """Loads a ControlNet; a difference ControlNet is completed with the MODEL's UNet weights."""

    category = "loaders"
    display_name = "Load ControlNet Model (diff)"
    model = Input(MODEL)
    control_net_name = Input(COMBO, choices=controlnet_choices)
    outputs = (Output(CONTROL_NET),)

    @classmethod
    def fingerprint(cls, paths: Paths, control_net_name: str | None = None, **_: Any) -> Any:
        return _fingerprint(paths, control_net_name)

    def execute(self, model, control_net_name: str) -> tuple:
        if not hasattr(model, "handle"):
            raise TypeError("DiffControlNetLoader.model: this MODEL is not a UNet model (SD 1.x/2.x/SDXL)")
        return (load_controlnet(self.ctx, control_net_name, model),)


def control_hint_image(image: torch.Tensor, control_net: ControlNet, where: str) -> torch.Tensor:
    """The IMAGE ``[B, H, W, C]`` as the hint ``[B, C, H, W]``; its channels must be the ControlNet's."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise TypeError(f"{where}.image: expected an IMAGE batch [B, H, W, C]")
    wanted = getattr(control_net.handle.get().config, "conditioning_channels", None)
    if wanted is not None and image.shape[-1] != wanted:
        raise ValueError(f"{where}.image has {image.shape[-1]} channels but ControlNet {control_net.name} takes "
                         f"{wanted} (convert the image, e.g. drop its alpha channel)")
    return image.movedim(-1, 1).float()


def _check_net(control_net: Any, where: str) -> ControlNet:
    if not isinstance(control_net, ControlNet):
        raise TypeError(f"{where}.control_net: expected a CONTROL_NET, got {type(control_net).__name__}")
    return control_net


class ControlNetApply(Node):
    """Applies a ControlNet to a conditioning (and, at sampling, to the negative's entries without one).
    Stricter than ComfyUI: the image's channel count must be the ControlNet's (no RGBA hints)."""

    category = "conditioning/controlnet"
    display_name = "Apply ControlNet (OLD)"
    deprecated = True
    conditioning = Input(CONDITIONING)
    control_net = Input(CONTROL_NET)
    image = Input(IMAGE)
    strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning: list, control_net, image: torch.Tensor, strength: float) -> tuple:
        if strength == 0:
            return (conditioning,)
        net = _check_net(control_net, "ControlNetApply")
        hint = control_hint_image(image, net, "ControlNetApply")
        out = []
        for cond, extras in conditioning:
            control = ControlHint(net, hint, float(strength), previous=extras.get("control"))
            out.append([cond, {**extras, "control": control, "control_apply_to_uncond": True}])
        return (out,)


class ControlNetApplyAdvanced(Node):
    """Applies a ControlNet to the positive and negative conditioning, with a strength and the part of the
    schedule it acts in (0 = first step, 1 = last). The VAE is accepted for ComfyUI's ControlNets that work
    on latents; the SD 1.x/2.x/SDXL ControlNets take the image itself. Stricter than ComfyUI: the image's
    channel count must be the ControlNet's (no RGBA hints)."""

    category = "conditioning/controlnet"
    display_name = "Apply ControlNet"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    control_net = Input(CONTROL_NET)
    image = Input(IMAGE)
    strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    start_percent = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.001)
    end_percent = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.001)
    vae = Input(VAE, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def execute(self, positive: list, negative: list, control_net, image: torch.Tensor, strength: float,
                start_percent: float, end_percent: float, vae=None) -> tuple:
        if strength == 0:
            return (positive, negative)
        net = _check_net(control_net, "ControlNetApplyAdvanced")
        hint = control_hint_image(image, net, "ControlNetApplyAdvanced")
        return apply_hint(positive, negative, net, hint, strength, start_percent, end_percent, vae)


def apply_hint(positive: list, negative: list, net: ControlNet, hint: torch.Tensor, strength: float,
               start_percent: float, end_percent: float, vae=None, extra_concat: tuple = ()) -> tuple:
    """Both lists with a :class:`ControlHint` on every entry, chained to the entry's earlier ControlNet."""
    made: dict[int, ControlHint] = {}  # one hint per earlier ControlNet, shared by both lists
    out = []
    for conditioning in (positive, negative):
        entries = []
        for cond, extras in conditioning:
            previous = extras.get("control")
            key = id(previous)
            if key not in made:
                made[key] = ControlHint(net, hint, float(strength), float(start_percent), float(end_percent),
                                        vae, previous, tuple(extra_concat))
            entries.append([cond, {**extras, "control": made[key], "control_apply_to_uncond": False}])
        out.append(entries)
    return (out[0], out[1])


class ControlNetInpaintingAliMamaApply(Node):
    """ControlNetApplyAdvanced for inpainting ControlNets (Qwen-Image InstantX Inpainting, Flux.1 AliMama
    Inpainting; SD3's are not loaded yet): for a ControlNet that takes the mask as an
    extra channel, the image is blacked out where the mask is (``1 - mask``, bilinear at the image size,
    rounded) and ``1 - mask`` rides along as that channel; other ControlNets get the image as it is. The VAE
    encodes the hint at run time."""

    category = "conditioning/controlnet"
    display_name = "Apply ControlNet Inpainting (AliMama)"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    control_net = Input(CONTROL_NET)
    vae = Input(VAE)
    image = Input(IMAGE)
    mask = Input(MASK)
    strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    start_percent = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.001)
    end_percent = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.001)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def execute(self, positive: list, negative: list, control_net, vae, image: torch.Tensor, mask: torch.Tensor,
                strength: float = 1.0, start_percent: float = 0.0, end_percent: float = 1.0) -> tuple:
        where = "ControlNetInpaintingAliMamaApply"
        net = _check_net(control_net, where)
        extra: tuple = ()
        if net.concat_mask:
            image, keep = masked_hint_image(image, mask, where)
            extra = (keep,)
        if strength == 0:
            return (positive, negative)
        hint = control_hint_image(image, net, where)
        return apply_hint(positive, negative, net, hint, strength, start_percent, end_percent, vae, extra)


def masked_hint_image(image: torch.Tensor, mask: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's inpainting hint: ``keep = 1 - mask`` ``[B, 1, h, w]``; the image times ``keep`` resized
    (bilinear, centre crop) to the image and rounded."""
    from nodegraph_nodes.image.operations import common_upscale

    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise TypeError(f"{where}.mask: expected a MASK [B, H, W]")
    keep = 1.0 - mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    apply = common_upscale(keep, image.shape[2], image.shape[1], "bilinear", "center").round()
    if apply.shape[0] != image.shape[0] and 1 not in (apply.shape[0], image.shape[0]):
        raise ValueError(f"{where}: the mask has {apply.shape[0]} images but the image {image.shape[0]}")
    return image.float() * apply.movedim(1, -1), keep


class SetUnionControlNetType(Node):
    """Chooses the control type of a union ControlNet ("auto": none); other ControlNets ignore it."""

    category = "conditioning/controlnet"
    control_net = Input(CONTROL_NET)
    type = Input(COMBO, choices=["auto"] + list(UNION_CONTROLNET_TYPES))
    outputs = (Output(CONTROL_NET),)

    def execute(self, control_net, type: str) -> tuple:
        net = _check_net(control_net, "SetUnionControlNetType")
        number = UNION_CONTROLNET_TYPES.get(type, -1)
        return (net.with_control_type((number,) if number >= 0 else ()),)
