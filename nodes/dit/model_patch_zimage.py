"""The Z-Image Fun ControlNet (alibaba-pai ``Z-Image-Turbo-Fun-Controlnet-Union``, v1) as a MODEL_PATCH, applied
the way ComfyUI applies it (QwenImageDiffsynthControlnet / ZImageFunControlnet on a Z-Image MODEL).

File layout (VideoX-Fun's names, which are diffusers' ``ZImageControlNetModel`` names, so the weights load into
that class as they are): ``control_all_x_embedder.2-1.{weight,bias}`` (2×2 patches of the 16-channel control
latent, channels last), ``control_noise_refiner.{0,1}.…`` (plain Z-Image blocks) and ``control_layers.N.…``
(Z-Image blocks with ``after_proj``; block 0 also ``before_proj``). Heads: ``dim / len(attention.norm_q.weight)``.

Math (ComfyUI's, facts only): the control image, resized to the latent's pixel size, is VAE-encoded and put in
model space (Flux: ``(z − 0.1159) · 0.3611``), padded to even sides, patchified and embedded; the two
``control_noise_refiner`` blocks refine it over the image tokens only (image RoPE, the step's adaLN input,
no mask). With ``x`` = the real image tokens of the main layers' input, control layer 0 computes
``c = block(before_proj(c) + x)``, layer ``k`` ``c = block_k(c)``; each gives the hint ``after_proj(c)``.
With ``n`` control layers and ``div = round(30 / n)`` (Z-Image's 30 layers, as ComfyUI), hint ``k`` is added,
times ``strength``, to the real image tokens after main layer ``k · div``.

Differences from diffusers' ``ZImageControlNetPipeline``, which follows VideoX-Fun: there the control layers
also attend to the caption tokens (the control sequence is ``[control, caption]``) and image padding tokens;
ComfyUI (and so nodegraph) runs them on the image tokens alone. Outputs therefore differ from that pipeline.

Not supported (refused by ModelPatchLoader): the Union 2.x files (3 or 15 control layers, control blocks in
the noise refiner, inpaint channels).
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


def _count(sd: dict, prefix: str) -> int:
    found = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    if found != set(range(len(found))):
        raise ModelFileError(f"{prefix}N blocks are not numbered 0..n-1")
    return len(found)


def build_z_image_control(sd: dict):
    """A diffusers ``ZImageControlNetModel`` holding the file's control weights (and the weights)."""
    from diffusers import ZImageControlNetModel

    sd = {k: v for k, v in sd.items()}
    layers, refiners = _count(sd, "control_layers."), _count(sd, "control_noise_refiner.")
    if "control_noise_refiner.0.after_proj.weight" in sd or layers in (3, 15):
        raise ModelFileError("this is a Z-Image Fun ControlNet Union 2.x file (control blocks in the noise refiner, "
                             "inpaint channels), which nodegraph does not support yet; the v1 union file is")
    if layers == 0 or refiners == 0:
        raise ModelFileError("a Z-Image Fun ControlNet needs control_layers.N and control_noise_refiner.N blocks")
    dim, in_features = sd["control_all_x_embedder.2-1.weight"].shape
    head_dim = sd["control_layers.0.attention.norm_q.weight"].shape[0]
    if in_features % 4 or dim % head_dim:
        raise ModelFileError(f"control_all_x_embedder takes {in_features} features for width {dim}; expected "
                             "2×2 patches of the control latent")
    heads = dim // head_dim
    net = ZImageControlNetModel(control_layers_places=list(range(layers)), control_refiner_layers_places=None,
                                control_in_dim=in_features // 4, add_control_noise_refiner=None, all_patch_size=(2,),
                                all_f_patch_size=(1,), dim=int(dim), n_refiner_layers=refiners, n_heads=heads,
                                n_kv_heads=heads, norm_eps=1e-5, qk_norm=True)
    return net, sd


def patchify(latent: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` (even sides) → ``[B, H/2 · W/2, 4C]``, each patch's features ``(row, column, channel)``."""
    b, c, h, w = latent.shape
    return latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // 2) * (w // 2), 4 * c)


@dataclass(eq=False)
class ZImageControlPatch(ControlPatchBase):
    """The Z-Image Fun ControlNet on a Z-Image transformer (see the module docstring)."""

    inpaint_image: torch.Tensor | None = None

    def latent(self, h: int, w: int, device: str) -> torch.Tensor:
        key = (h, w)
        if key not in self._cache:
            from nodegraph_nodes.dit.formats import latent_format
            from nodegraph_nodes.dit.runner_common import pad_even

            f = self.scale()
            raw = self.encode(fit_image(self.image, h * f, w * f), device).float()
            self._cache.clear()
            self._cache[key] = pad_even(latent_format("flux").process_in(raw))
        return self._cache[key]

    def hints(self, net, x: torch.Tensor, freqs: torch.Tensor, adaln: torch.Tensor, h: int, w: int,
              device: str) -> list[torch.Tensor]:
        """The control hints ``[rows, n, dim]`` for the main layers' input image tokens ``x``."""
        p = next(net.parameters())
        latent = self.latent(h, w, device).to(p.device, p.dtype)
        if latent.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"{self.where}: the control image has {latent.shape[0]} images but the network call "
                             f"{x.shape[0]} rows")
        c = net.control_all_x_embedder["2-1"](patchify(latent)).expand(x.shape[0], -1, -1)
        n = c.shape[1]
        x, freqs, adaln = x[:, :n].to(p.dtype), freqs[:, :n], adaln.to(p.dtype)
        for block in net.control_noise_refiner:
            c = block(c, None, freqs, adaln)
        out = []
        for k, block in enumerate(net.control_layers):
            stacked = block(c if k == 0 else c.unsqueeze(0), x, None, freqs, adaln)
            out.append(stacked[-2])
            c = stacked[-1]
        return out

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        if self.image is None:
            raise ValueError(f"{self.where}: the Z-Image Fun ControlNet v1 needs 'image' (inpaint_image is for the "
                             "2.x files, not supported yet)")
        network = run.network
        layers = getattr(network, "layers", None)
        if layers is None or not hasattr(network, "noise_refiner") or not hasattr(network, "context_refiner"):
            raise TypeError(f"{self.where}: the Z-Image Fun ControlNet {self.patch.name!r} patches Z-Image models; "
                            f"this model's network is {type(network).__name__}")
        box: dict = {}
        device = run.runner.device
        with ExitStack() as stack:
            net = stack.enter_context(self.manager.use(self.patch.handle, device))
            dim = net.control_all_x_embedder["2-1"].out_features
            if dim != network.config.dim:
                raise ValueError(f"{self.where}: {self.patch.name!r} is {dim} wide but the model {network.config.dim}")
            count = len(net.control_layers)
            div = round(ZIMAGE_LAYERS / count)
            run.runner = _SizeRecorder(run.runner, box)
            state: dict = {}

            def before(module, args, kwargs):
                unified, _mask, freqs, adaln = args[:4]
                h, w = box["size"]
                state["hints"] = self.hints(net, unified, freqs, adaln, h, w, device)

            def after(module, args, output, index):
                if index % div or index // div >= count:
                    return output
                hint = state["hints"][index // div]
                n = hint.shape[1]
                return torch.cat([output[:, :n] + hint.to(output.dtype) * self.strength, output[:, n:]], dim=1)

            handle = layers[0].register_forward_pre_hook(before, with_kwargs=True)
            stack.callback(handle.remove)
            for i, layer in enumerate(layers):
                handle = layer.register_forward_hook(lambda m, a, o, i=i: after(m, a, o, i))
                stack.callback(handle.remove)
            yield
