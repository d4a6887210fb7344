"""Image prompts through IP-Adapter: IPAdapterLoader and ImagePromptApply.

IPAdapterLoader reads an adapter from ``models/ipadapter/`` (``.safetensors`` in diffusers' layout:
``image_proj.*`` + ``ip_adapter.*``, see :mod:`nodegraph_nodes.diffusion.ip_adapter`) → IPADAPTER. ImagePromptApply
takes a MODEL, the adapter and the reference image's CLIP vision features (a CLIP_VISION_OUTPUT from
CLIPVisionEncode, or an image plus a CLIP_VISION to encode it) and returns a MODEL whose sampling feeds
the image tokens to the UNet (``added_cond_kwargs={"image_embeds": [...]}``) with the IP attention scaled
by ``weight`` between ``start_at`` and ``end_at`` of the schedule. The loaded UNet itself is not
changed: the adapter is installed for each sampling run and removed after it. Several ImagePromptApply
nodes in a row stack their adapters (diffusers' multi-adapter attention).

The negative (unconditional) rows get diffusers' negative features: zeros for IP-Adapter; for Plus and
Full Face the CLIP vision model's hidden states of an all-zero input, which needs ``clip_vision``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.node import Input, Node, Output
from nodegraph.types import COMBO, FLOAT, IMAGE, MODEL

from nodegraph_nodes.diffusion.components import compute_dtype
from nodegraph_nodes.diffusion.files import SAFE_EXTENSIONS, ModelFileError, file_identity, list_model_files, resolve_model
from nodegraph_nodes.diffusion.ip_adapter import (ImagePrompt, ImagePromptHook, IPAdapterModel, build_weights,
                                        check_compatible, read_adapter)
from nodegraph.value_checks import check_image
from nodegraph_nodes.langvision.vision import CLIP_VISION, CLIP_VISION_OUTPUT, ClipVision, encode_clip_vision

IPADAPTER = "IPADAPTER"
FOLDER = "ipadapter"


def ipadapter_choices(paths: Paths) -> list[str]:
    return list_model_files(paths, FOLDER, extensions=SAFE_EXTENSIONS)


class IPAdapterLoader(Node):
    """Load an IP-Adapter (models/ipadapter, .safetensors in diffusers' image_proj / ip_adapter layout)."""

    category = "loaders"
    display_name = "Load IP-Adapter"
    ipadapter_file = Input(COMBO, choices=ipadapter_choices)
    outputs = (Output(IPADAPTER),)

    @classmethod
    def fingerprint(cls, paths: Paths, ipadapter_file: str | None = None, **_: Any) -> Any:
        if not ipadapter_file:
            return None
        try:
            return file_identity(resolve_model(paths, FOLDER, ipadapter_file))
        except (ModelFileError, OSError):
            return None

    def execute(self, ipadapter_file: str) -> tuple:
        path = resolve_model(self.ctx.paths, FOLDER, ipadapter_file)
        proj, attn, info = read_adapter(Path(path))
        dtype = compute_dtype(self.ctx.device, "unet")
        held = {"proj": proj, "attn": attn}

        def loader():
            if held:
                p, a = held.pop("proj"), held.pop("attn")
            else:  # freed and used again: read the file anew
                p, a, _ = read_adapter(Path(path))
            return build_weights(p, a, info, dtype, ipadapter_file)

        manager = self.ctx.service("models")
        handle = manager.load((*file_identity(Path(path)), "ipadapter", str(dtype)), loader)
        held.clear()
        return (IPAdapterModel(handle, info, ipadapter_file),)


def _features(adapter: IPAdapterModel, manager, clip_vision_output, image, clip_vision) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapter's cond and uncond features ``[num_images, …]`` from the connected inputs."""
    info = adapter.info
    if clip_vision_output is None:
        if image is None or clip_vision is None:
            raise ValueError("connect 'clip_vision_output' (from CLIPVisionEncode), or both 'image' and "
                             "'clip_vision' to encode the image here")
        if not isinstance(clip_vision, ClipVision):
            raise TypeError("input 'clip_vision' must come from CLIPVisionLoader")
        clip_vision_output = encode_clip_vision(clip_vision, manager, check_image(image, "image"))
    cond = getattr(clip_vision_output, info.feature, None)
    if not isinstance(cond, torch.Tensor):
        raise TypeError(f"input 'clip_vision_output' has no {info.feature}; connect CLIPVisionEncode")
    cond = cond.float()
    if cond.shape[-1] != info.embed_dim:
        raise ValueError(f"input 'clip_vision_output': the CLIP vision model gives {cond.shape[-1]}-wide "
                         f"{info.feature} but {adapter.name} takes {info.embed_dim}-wide ones; use the image "
                         "encoder the adapter was trained with")
    if info.kind == "basic":
        return cond, torch.zeros_like(cond)
    if not isinstance(clip_vision, ClipVision):
        raise ValueError(f"{adapter.name} is an IP-Adapter {info.kind.title()} model: connect 'clip_vision' too "
                         "(its negative features are the CLIP vision model's output for an all-zero input)")
    with torch.inference_mode(), manager.use(clip_vision.handle) as model:
        p = next(model.parameters())
        size = clip_vision.settings["size"]
        out = model(pixel_values=torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype),
                    output_hidden_states=True)
        uncond = out.hidden_states[-2].float().cpu()
    return cond, uncond.expand_as(cond).clone() if uncond.shape[1:] == cond.shape[1:] else uncond


class ImagePromptApply(Node):
    """Steer generation with a reference image through an IP-Adapter (weight, and where in the schedule)."""

    category = "conditioning/image_prompt"
    display_name = "Apply Image Prompt (IP-Adapter)"
    model = Input(MODEL)
    ipadapter = Input(IPADAPTER)
    weight = Input(FLOAT, default=1.0, min=-1.0, max=5.0, step=0.05,
                   tooltip="Scale of the image attention (0 = off).")
    start_at = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.001,
                     tooltip="Fraction of the schedule where the image prompt starts to apply.")
    end_at = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.001,
                   tooltip="Fraction of the schedule where it stops.")
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True)
    image = Input(IMAGE, optional=True)
    clip_vision = Input(CLIP_VISION, optional=True)
    outputs = (Output(MODEL),)

    def execute(self, model, ipadapter, weight: float = 1.0, start_at: float = 0.0, end_at: float = 1.0,
                clip_vision_output=None, image=None, clip_vision=None) -> tuple:
        if not isinstance(ipadapter, IPAdapterModel):
            raise TypeError("input 'ipadapter' must come from IPAdapterLoader")
        with model.handle.lock:  # the UNet unchanged by a run in flight
            check_compatible(ipadapter.info, model.handle.get(), ipadapter.name)
        manager = self.ctx.service("models")
        cond, uncond = _features(ipadapter, manager, clip_vision_output, image, clip_vision)
        if weight == 0 or start_at >= end_at:
            return (model,)
        prompt = ImagePrompt(ipadapter, cond, uncond, float(weight), float(start_at), float(end_at))
        hooks = list(model.hooks)
        for i, hook in enumerate(hooks):
            if isinstance(hook, ImagePromptHook):
                hooks[i] = hook.adding(prompt)
                break
        else:
            hooks.append(ImagePromptHook((prompt,)))
        return (model.with_hooks(tuple(hooks)),)
