"""QwenImageDiffsynthControlnet and ZImageFunControlnet (ComfyUI's names): a MODEL_PATCH ControlNet
(:mod:`.model_patch`) applied to a Qwen-Image / Z-Image MODEL for each sampling run.

The control image is resized to the latent's pixel size (``area``, centre crop, as ComfyUI, whenever the
sizes differ), encoded with the given VAE at run time (the latent size is known only then) and cached per
size. The patch rides in the MODEL's sampling patches (:mod:`nodegraph_nodes.sampling.run_patches`): a
runner proxy records the latent size of each network call, forward hooks on the transformer's blocks add
the control (removed when the run ends).

Qwen-Image (DiffSynth blockwise ControlNet): the raw VAE latent of the image goes to model space (Wan 2.1
mean/std), with the inpaint model one more channel — ones without a mask, else ``1 - mask`` bilinear at
the latent size (ComfyUI inverts the node's mask) — is padded to even sides (circular) and embedded by
``img_in``; after transformer block ``i`` the image tokens ``img[:, :n]`` get
``strength · controlnet_blocks[i](img[:, :n], c)``. Reference tokens (Qwen-Image-Edit) stay as they are.
Z-Image Fun ControlNet: :mod:`.model_patch_zimage`.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch

from nodegraph.node import FLOAT, Input, Node, Output
from nodegraph.types import IMAGE, MASK, MODEL, VAE

from nodegraph_nodes.dit.latent_control import EncodeContext
from nodegraph_nodes.dit.model_patch import MODEL_PATCH, ModelPatchValue
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun, RunnerProxy


class _SizeRecorder(RunnerProxy):
    """Keeps the latent size ``(h, w)`` of the network call in progress."""

    def __init__(self, inner: Any, box: dict):
        super().__init__(inner)
        self.box = box

    def __call__(self, x_in, timestep, parts):
        self.box["size"] = tuple(x_in.shape[-2:])
        return self.inner(x_in, timestep, parts)


def fit_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, H, W, C]`` resized to ``height``×``width`` (area, centre crop) unless it has that size."""
    from nodegraph_nodes.image.operations import common_upscale

    if tuple(image.shape[1:3]) == (height, width):
        return image
    return common_upscale(image.movedim(-1, 1).float(), width, height, "area", "center").movedim(1, -1)


@dataclass(eq=False)
class ControlPatchBase(ModelPatch):
    """What the Qwen-Image and Z-Image control patches share: the patch network, VAE, images, strength,
    the manager and the encodings cached per latent size."""

    key: ClassVar[str] = "model_patch_control"
    patch: ModelPatchValue
    vae: Any
    strength: float
    manager: Any
    image: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # already 1 - mask, [B, H, W]
    where: str = ""
    _cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key = f"model_patch_control:{id(self)}"  # several ControlNets stack, as ComfyUI's block patches

    def encode(self, pixels: torch.Tensor, device: str) -> torch.Tensor:
        from nodegraph_nodes.diffusion.latent import vae_encode

        return vae_encode(EncodeContext(self.manager, device), self.vae, pixels)

    def scale(self) -> int:
        return int(getattr(self.vae, "scale_factor", 8))


def mask_at(mask: torch.Tensor, h: int, w: int, mode: str, crop: str = "disabled") -> torch.Tensor:
    """``[B, H, W]`` → ``[B, 1, h, w]`` resized with torch's ``mode`` (ComfyUI's common_upscale: any
    interpolate mode, ``crop`` center first crops to the target's aspect)."""
    from nodegraph_nodes.image.operations import center_crop_to_aspect

    x = mask.float().unsqueeze(1)
    if crop == "center":
        x = center_crop_to_aspect(x, w, h)
    return torch.nn.functional.interpolate(x, size=(h, w), mode=mode)


@dataclass(eq=False)
class QwenControlPatch(ControlPatchBase):
    """The DiffSynth blockwise ControlNet on a Qwen-Image transformer (see the module docstring)."""

    def condition(self, net, h: int, w: int, device: str, dtype: torch.dtype) -> torch.Tensor:
        """The control tokens ``[B, n, dim]`` for a latent of ``h``×``w``."""
        key = (h, w, device, dtype)
        if key not in self._cache:
            from nodegraph_nodes.dit.qwen_image import WAN21
            from nodegraph_nodes.dit.runner_common import pad_even

            f = self.scale()
            latent = WAN21.process_in(self.encode(fit_image(self.image, h * f, w * f), device).float())
            extra = net.additional_in_dim // 4
            if extra:
                if self.mask is None:
                    m = torch.ones(latent.shape[0], extra, *latent.shape[-2:])
                else:
                    m = mask_at(self.mask, *latent.shape[-2:], "bilinear")
                    if m.shape[0] != latent.shape[0] and 1 not in (m.shape[0], latent.shape[0]):
                        raise ValueError(f"{self.where}: the mask has {m.shape[0]} images but the image "
                                         f"{latent.shape[0]}")
                    b = max(m.shape[0], latent.shape[0])
                    m, latent = m.expand(b, -1, -1, -1), latent.expand(b, -1, -1, -1)
                latent = torch.cat([latent, m.to(latent.dtype)], dim=1)
            latent = pad_even(latent)
            p = next(net.parameters())
            with torch.inference_mode():
                self._cache.clear()
                self._cache[key] = net.embed(latent.to(p.device, p.dtype)).to(device, dtype)
        return self._cache[key]

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        network = run.network
        blocks = getattr(network, "transformer_blocks", None)
        if blocks is None or not hasattr(network, "img_in") or not hasattr(network, "txt_norm"):
            raise TypeError(f"{self.where}: the DiffSynth Qwen-Image ControlNet {self.patch.name!r} patches "
                            f"Qwen-Image models; this model's network is {type(network).__name__}")
        box: dict = {}
        device, dtype = run.runner.device, run.runner.dtype
        with ExitStack() as stack:
            net = stack.enter_context(self.manager.use(self.patch.handle, device))
            if len(net.controlnet_blocks) < len(blocks):
                raise ValueError(f"{self.where}: {self.patch.name!r} has {len(net.controlnet_blocks)} control "
                                 f"blocks but the model {len(blocks)} transformer blocks")
            width, inner = net.img_in.out_features, getattr(network, "inner_dim", net.img_in.out_features)
            if width != inner:
                raise ValueError(f"{self.where}: {self.patch.name!r} is {width} wide but the model {inner}")
            run.runner = _SizeRecorder(run.runner, box)

            def hook(module, args, output, index):
                encoder_states, states = output
                h, w = box["size"]
                c = self.condition(net, h, w, device, dtype)
                n = c.shape[1]
                if c.shape[0] not in (1, states.shape[0]):
                    raise ValueError(f"{self.where}: the control image has {c.shape[0]} images but the "
                                     f"network call {states.shape[0]} rows")
                img = states[:, :n]
                p = next(net.parameters())
                delta = net.controlnet_blocks[index](img.to(p.dtype), c.to(p.dtype).expand(img.shape[0], -1, -1))
                states = torch.cat([img + delta.to(states.dtype) * self.strength, states[:, n:]], dim=1)
                return encoder_states, states

            for i, block in enumerate(blocks):
                handle = block.register_forward_hook(lambda m, a, o, i=i: hook(m, a, o, i))
                stack.callback(handle.remove)
            yield


def _prepare(image, mask, where: str):
    if image is not None:
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            raise TypeError(f"{where}.image must be an IMAGE [B, H, W, C]")
        image = image[..., :3]
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim != 3:
            raise TypeError(f"{where}.mask must be a MASK [B, H, W]")
        mask = 1.0 - mask.float()
    return image, mask


def apply_control(node: Node, model, model_patch, vae, strength: float, image=None, inpaint_image=None, mask=None):
    from nodegraph_nodes.sampling.model import require_sampling_model

    where = type(node).__name__
    model = require_sampling_model(model, f"{where}.model")
    if not isinstance(model_patch, ModelPatchValue):
        raise TypeError(f"input 'model_patch' of {where} must come from ModelPatchLoader")
    if not hasattr(vae, "handle"):
        raise TypeError(f"input 'vae' of {where} must be a VAE")
    image, mask = _prepare(image, mask, where)
    if inpaint_image is not None:
        inpaint_image, _ = _prepare(inpaint_image, None, where)
    manager = node.ctx.service("models")
    if model_patch.kind == "uso_siglip_projector":
        raise TypeError(f"input 'model_patch' of {where}: {model_patch.name!r} is a USO projector; apply it with "
                        "USOStyleReference")
    if model_patch.kind == "qwen_blockwise_controlnet":
        if image is None:
            raise ValueError(f"{where}: the DiffSynth Qwen-Image ControlNet needs 'image'")
        if inpaint_image is not None:
            raise ValueError(f"{where}: 'inpaint_image' is for the Z-Image Fun ControlNet")
        patch = QwenControlPatch(model_patch, vae, float(strength), manager, image, mask, where)
    else:
        from nodegraph_nodes.dit.model_patch_zimage import ZImageControlPatch

        if image is None and inpaint_image is None:
            raise ValueError(f"{where}: give 'image' or 'inpaint_image'")
        patch = ZImageControlPatch(model_patch, vae, float(strength), manager, image, mask, where,
                                   inpaint_image=inpaint_image)
    return (model.with_sampling_patches(model.sampling_patches.with_model_patch(patch)),)


class QwenImageDiffsynthControlnet(Node):
    """Apply a DiffSynth blockwise ControlNet (Qwen-Image) or a Z-Image Fun ControlNet from
    ModelPatchLoader to a model; the control image is encoded with ``vae`` at the latent's size."""

    category = "advanced/loaders/qwen"
    model = Input(MODEL)
    model_patch = Input(MODEL_PATCH)
    vae = Input(VAE)
    image = Input(IMAGE)
    strength = Input(FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01)
    mask = Input(MASK, optional=True)
    outputs = (Output(MODEL),)

    def execute(self, model, model_patch, vae, image, strength: float = 1.0, mask=None) -> tuple:
        return apply_control(self, model, model_patch, vae, strength, image=image, mask=mask)


class ZImageFunControlnet(Node):
    """Apply a Z-Image Fun ControlNet (ModelPatchLoader) with a control image and/or an inpaint image and
    mask."""

    category = "advanced/loaders/zimage"
    model = Input(MODEL)
    model_patch = Input(MODEL_PATCH)
    vae = Input(VAE)
    strength = Input(FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01)
    image = Input(IMAGE, optional=True)
    inpaint_image = Input(IMAGE, optional=True)
    mask = Input(MASK, optional=True)
    outputs = (Output(MODEL),)

    def execute(self, model, model_patch, vae, strength: float = 1.0, image=None, inpaint_image=None,
                mask=None) -> tuple:
        return apply_control(self, model, model_patch, vae, strength, image=image, inpaint_image=inpaint_image,
                             mask=mask)
