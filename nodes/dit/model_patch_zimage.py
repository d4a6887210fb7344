"""The Z-Image Fun ControlNet (alibaba-pai ``Z-Image-Turbo-Fun-Controlnet-Union`` v1 and ``…-Union-2.x``) as a
MODEL_PATCH, applied the way ComfyUI applies it (QwenImageDiffsynthControlnet / ZImageFunControlnet on a Z-Image
MODEL).

File layout (VideoX-Fun's names, which are diffusers' ``ZImageControlNetModel`` names, so the weights load into
that class as they are): ``control_all_x_embedder.2-1.{weight,bias}`` (2×2 patches of the control channels,
channels last), ``control_noise_refiner.{0,1}.…`` and ``control_layers.N.…`` (Z-Image blocks; the control ones with
``after_proj``, the first also ``before_proj``). Heads: ``dim / len(attention.norm_q.weight)``. v1: 6 control
layers, plain noise-refiner blocks, 16 control channels. 2.x (detected by ``control_noise_refiner.0.after_proj``):
3 or 15 control layers, control blocks in the noise refiner, 33 channels = control latent, mask, inpaint latent.

Math (ComfyUI's, facts only): the control image, resized to the latent's pixel size (area, centre crop), is
VAE-encoded and put in model space (Flux: ``(z − 0.1159) · 0.3611``); 2.x adds ``1 − mask`` (nearest, at the latent
size; zeros without a mask) and the latent of the inpaint image (grey without one) whose masked part (bilinear,
rounded) is set to grey; without a control image its latent is a grey image's. Padded to even sides, patchified,
embedded. With ``x`` = the real image tokens of a stack's input and ``c`` the control tokens, a control block
gives ``c' = block(before_proj(c) + x)`` (first block) or ``block(c)``, and the hint ``after_proj(c')``.
v1: the two noise-refiner blocks refine ``c`` on the image tokens (image RoPE, the step's adaLN input, no mask),
then the control layers run on the main layers' input. 2.x: control noise-refiner block ``i`` runs on the noise
refiner's input and its hint is added after noise-refiner layer ``i``; the control layers continue from its ``c``
on the main layers' input. With ``n`` control layers and ``div = round(30 / n)`` (Z-Image's 30 layers, as
ComfyUI), hint ``k`` is added, times ``strength``, to the real image tokens after main layer ``k · div``.

Differences from diffusers' ``ZImageControlNetPipeline``, which follows VideoX-Fun: there the control layers
also attend to the caption tokens (the control sequence is ``[control, caption]``) and image padding tokens;
ComfyUI (and so nodegraph) runs them on the image tokens alone. Outputs therefore differ from that pipeline.

Not supported (refused by ModelPatchLoader): the early 2.1 upload whose control noise-refiner projections are
all zero (ComfyUI's "broken" mode).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.model_patch_apply import ControlPatchBase, _SizeRecorder, fit_image
from nodegraph_nodes.sampling.run_patches import PatchRun

ZIMAGE_LAYERS = 30  # ComfyUI spreads the hints over Z-Image's 30 main layers whatever the model
EXTRA_CHANNELS = 17  # the 2.x files' inpaint channels: the mask, then the inpaint image's latent


def _count(sd: dict, prefix: str) -> int:
    found = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    if found != set(range(len(found))):
        raise ModelFileError(f"{prefix}N blocks are not numbered 0..n-1")
    return len(found)


def build_z_image_control(sd: dict):
    """A diffusers ``ZImageControlNetModel`` holding the file's control weights (and the weights)."""
    from diffusers import ZImageControlNetModel

    layers, refiners = _count(sd, "control_layers."), _count(sd, "control_noise_refiner.")
    if layers == 0 or refiners == 0:
        raise ModelFileError("a Z-Image Fun ControlNet needs control_layers.N and control_noise_refiner.N blocks")
    refiner_control = "control_noise_refiner.0.after_proj.weight" in sd
    if refiner_control and not sd["control_noise_refiner.0.after_proj.weight"].any():
        raise ModelFileError("this Z-Image Fun ControlNet 2.x file has all-zero control_noise_refiner projections (the "
                             "'broken' early 2.1 upload), which nodegraph does not support; use the fixed file")
    dim, in_features = sd["control_all_x_embedder.2-1.weight"].shape
    head_dim = sd["control_layers.0.attention.norm_q.weight"].shape[0]
    if in_features % 4 or dim % head_dim or in_features // 4 not in (16, 16 + EXTRA_CHANNELS):
        raise ModelFileError(f"control_all_x_embedder takes {in_features} features for width {dim}; expected 2×2 "
                             f"patches of 16 (v1) or {16 + EXTRA_CHANNELS} (2.x) control channels")
    heads = dim // head_dim
    net = ZImageControlNetModel(control_layers_places=list(range(layers)),
                                control_refiner_layers_places=list(range(refiners)) if refiner_control else None,
                                control_in_dim=in_features // 4,
                                add_control_noise_refiner="control_noise_refiner" if refiner_control else None,
                                all_patch_size=(2,), all_f_patch_size=(1,), dim=int(dim), n_refiner_layers=refiners,
                                n_heads=heads, n_kv_heads=heads, norm_eps=1e-5, qk_norm=True)
    return net, sd


def patchify(latent: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` (even sides) → ``[B, H/2 · W/2, 4C]``, each patch's features ``(row, column, channel)``."""
    b, c, h, w = latent.shape
    return latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // 2) * (w // 2), 4 * c)


def _control_step(block, c: torch.Tensor, x: torch.Tensor, freqs, adaln, first: bool):
    """One control block (diffusers' stacked form): ``(hint, new c)``; the first block adds ``before_proj(c) + x``."""
    stacked = block(c if first else c.unsqueeze(0), x, None, freqs, adaln)
    return stacked[-2], stacked[-1]


@dataclass(eq=False)
class ZImageControlPatch(ControlPatchBase):
    """The Z-Image Fun ControlNet on a Z-Image transformer (see the module docstring)."""

    inpaint_image: torch.Tensor | None = None

    def _encode(self, pixels: torch.Tensor, device: str) -> torch.Tensor:
        from nodegraph_nodes.dit.formats import latent_format

        return latent_format("flux").process_in(self.encode(pixels, device).float())

    def latent(self, h: int, w: int, device: str, extra: bool) -> torch.Tensor:
        """The control latent (model space, even sides); with ``extra`` also the mask and the inpaint latent."""
        key = (h, w, extra)
        if key not in self._cache:
            from nodegraph_nodes.dit.model_patch_apply import mask_at
            from nodegraph_nodes.dit.runner_common import pad_even

            f = self.scale()
            image = None if self.image is None else fit_image(self.image, h * f, w * f)
            inpaint = None if self.inpaint_image is None else fit_image(self.inpaint_image, h * f, w * f)
            if not extra:
                latent = self._encode(image, device)
            else:
                like = image if image is not None else inpaint
                if inpaint is None:
                    inpaint = torch.full_like(like, 0.5)
                if self.mask is not None:
                    keep = mask_at(self.mask, inpaint.shape[1], inpaint.shape[2], "bilinear", "center").round()
                    inpaint = (inpaint - 0.5) * keep.movedim(1, -1) + 0.5
                inpaint_latent = self._encode(inpaint, device)
                if self.mask is None:
                    m = torch.zeros_like(inpaint_latent[:, :1])
                else:
                    m = mask_at(self.mask, *inpaint_latent.shape[-2:], "nearest", "center")
                control = self._encode(image if image is not None else torch.full_like(like, 0.5), device)
                b = max(control.shape[0], m.shape[0], inpaint_latent.shape[0])
                latent = torch.cat([t.expand(b, -1, -1, -1) for t in (control, m.to(control.dtype), inpaint_latent)],
                                   dim=1)
            self._cache.clear()
            self._cache[key] = pad_even(latent)
        return self._cache[key]

    def embedded(self, net, rows: int, h: int, w: int, device: str) -> torch.Tensor:
        p = next(net.parameters())
        extra = net.config.control_in_dim > 16
        latent = self.latent(h, w, device, extra).to(p.device, p.dtype)
        if latent.shape[0] not in (1, rows):
            raise ValueError(f"{self.where}: the control image has {latent.shape[0]} images but the network call "
                             f"{rows} rows")
        return net.control_all_x_embedder["2-1"](patchify(latent)).expand(rows, -1, -1)

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        network = run.network
        layers = getattr(network, "layers", None)
        if layers is None or not hasattr(network, "noise_refiner") or not hasattr(network, "context_refiner"):
            raise TypeError(f"{self.where}: the Z-Image Fun ControlNet {self.patch.name!r} patches Z-Image models; "
                            f"this model's network is {type(network).__name__}")
        box: dict = {}
        device = run.runner.device
        with ExitStack() as stack:
            net = stack.enter_context(self.manager.use(self.patch.handle, device))
            refiner_control = net.config.add_control_noise_refiner is not None
            if self.image is None and not (refiner_control and self.inpaint_image is not None):
                raise ValueError(f"{self.where}: the Z-Image Fun ControlNet {self.patch.name!r} needs 'image'"
                                 + ("" if refiner_control else " (inpaint_image is for the 2.x files)"))
            if self.inpaint_image is not None and not refiner_control:
                raise ValueError(f"{self.where}: 'inpaint_image' needs a Z-Image Fun ControlNet 2.x file; "
                                 f"{self.patch.name!r} is a v1 file")
            dim = net.control_all_x_embedder["2-1"].out_features
            if dim != network.config.dim:
                raise ValueError(f"{self.where}: {self.patch.name!r} is {dim} wide but the model {network.config.dim}")
            count = len(net.control_layers)
            div = round(ZIMAGE_LAYERS / count)
            p = next(net.parameters())
            run.runner = _SizeRecorder(run.runner, box)
            state: dict = {}

            def add(output: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
                n = hint.shape[1]
                return torch.cat([output[:, :n] + hint.to(output.dtype) * self.strength, output[:, n:]], dim=1)

            def refiner_input(module, args):  # the noise refiner's input image tokens (2.x)
                x, _mask, freqs, adaln = args[:4]
                c = self.embedded(net, x.shape[0], *box["size"], device)
                state.update(c=c, x=x[:, :c.shape[1]].to(p.dtype), freqs=freqs[:, :c.shape[1]], adaln=adaln.to(p.dtype))

            def after_refiner(module, args, output, index):
                if index >= len(net.control_noise_refiner):
                    return output
                hint, state["c"] = _control_step(net.control_noise_refiner[index], state["c"], state["x"],
                                                 state["freqs"], state["adaln"], index == 0)
                return add(output, hint)

            def main_input(module, args):
                unified, _mask, freqs, adaln = args[:4]
                if refiner_control:
                    c = state["c"]
                else:
                    c = self.embedded(net, unified.shape[0], *box["size"], device)
                n = c.shape[1]
                x, freqs, adaln = unified[:, :n].to(p.dtype), freqs[:, :n], adaln.to(p.dtype)
                if not refiner_control:
                    for block in net.control_noise_refiner:
                        c = block(c, None, freqs, adaln)
                hints = []
                for k, block in enumerate(net.control_layers):
                    hint, c = _control_step(block, c, x, freqs, adaln, k == 0)
                    hints.append(hint)
                state["hints"] = hints

            def after_main(module, args, output, index):
                if index % div or index // div >= count:
                    return output
                return add(output, state["hints"][index // div])

            hooks = [layers[0].register_forward_pre_hook(main_input)]
            hooks += [layer.register_forward_hook(lambda m, a, o, i=i: after_main(m, a, o, i))
                      for i, layer in enumerate(layers)]
            if refiner_control:
                hooks.append(network.noise_refiner[0].register_forward_pre_hook(refiner_input))
                hooks += [layer.register_forward_hook(lambda m, a, o, i=i: after_refiner(m, a, o, i))
                          for i, layer in enumerate(network.noise_refiner)]
            for handle in hooks:
                stack.callback(handle.remove)
            yield
