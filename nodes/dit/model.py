"""MODEL for the flow transformers (SD3/SD3.5, Flux.1): the sampling core's model protocol
(:mod:`nodegraph_nodes.sampling.model`) around a diffusers transformer held by the model manager.

The runner turns a batch of conditioning parts into the transformer's inputs:

* **SD3** (``SD3Transformer2DModel``): the latent as is, ``encoder_hidden_states`` = the entries' states
  (different token counts repeated to a common length, as ComfyUI), ``pooled_projections`` = their
  ``pooled_output``, ``timestep`` = sigma · 1000 (the model sampling's timestep).
* **Flux** (``FluxTransformer2DModel``): the latent padded (circularly) to even sides and packed into
  2×2 patches (``[B, h/2 · w/2, 4C]``), position ids ``(0, row, column)`` per patch, text ids zero,
  ``timestep`` = sigma (the transformer scales by 1000), ``guidance`` = the entry's ``guidance``
  (FluxGuidance / CLIPTextEncodeFlux; ComfyUI's default 3.5) for guidance-distilled models (dev).
  The output is unpacked and cropped back. Reference latents (Flux Kontext's ReferenceLatent) are packed
  after the image's tokens with their own position ids (:mod:`.kontext`); only the image's tokens of
  the output are kept. Fill models (wider input) get the entry's ``concat_latent_image`` and
  ``concat_mask`` (InpaintModelConditioning) as extra channels before packing. ControlNet hints on the
  entries add their residuals (:mod:`.flux_controlnet`).

The network predicts the flow velocity; the model sampling (flow, shift) turns it into the denoised
latent. Weight dtype: fp32 on CPU, bf16 on GPUs (fp16 overflows in these transformers); the fp8 choices
of UNETLoader store weights in fp8 on GPUs (diffusers' layerwise casting, computing in bf16) and, on
the CPU, which cannot compute in fp8, round the weights through fp8 and compute in fp32.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.control_run import fit_rows as _rows  # the families import _rows from here
from nodegraph_nodes.diffusion.unet_runner import common_length
from nodegraph_nodes.dit.formats import FLUX_DEFAULT_GUIDANCE, LatentFormat, default_sampling, latent_format
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner, pad_even
from nodegraph_nodes.sampling.model import CondPart, SamplingPatches
from nodegraph_nodes.sampling.model_sampling import ModelSampling


@dataclass(frozen=True, eq=False)
class FlowModel(ManagerOwned):
    """MODEL: a flow transformer of ``family`` (``sd3`` / ``flux``) and how to sample it."""

    handle: Any  # ManagedModel of an SD3Transformer2DModel / FluxTransformer2DModel
    family: str
    variant: str = ""
    source: str = ""
    sampling: ModelSampling | None = None
    sampling_patches: SamplingPatches = SamplingPatches()
    #: a diffusers scheduler config's shift (diffusers folders), else the family's default
    default_shift: float | None = None
    #: LoRA deltas added to the transformer's weights for each run (:mod:`.lora`)
    patches: tuple = ()

    def with_patch(self, patch) -> "FlowModel":
        return dataclasses.replace(self, patches=self.patches + (patch,))

    def lora_patch(self, sd: dict, strength: float, name: str):
        """The LoRA patch of ``sd`` on this model's transformer (LoraLoader)."""
        from nodegraph_nodes.dit.lora import flow_lora_patch

        return flow_lora_patch(self.family, self.handle.get(), sd, strength, name)

    @property
    def format(self) -> LatentFormat:
        return latent_format(self.family)

    @property
    def latent_channels(self) -> int:
        return self.format.channels

    @property
    def model_sampling(self) -> ModelSampling:
        if self.sampling is not None:
            return self.sampling
        return default_sampling(self.family, self.variant, self.default_shift)

    def sampling_or(self, make: Callable[..., ModelSampling], default_shift: float, *args) -> ModelSampling:
        """The sampling set on this MODEL (ModelSamplingSD3 / ModelSamplingFlux / …) if any, else
        ``make(shift, *args)`` with the diffusers folder's shift or, without one, ``default_shift``."""
        if self.sampling is not None:
            return self.sampling
        return make(default_shift if self.default_shift is None else self.default_shift, *args)

    def with_model_sampling(self, ms: ModelSampling) -> "FlowModel":
        return dataclasses.replace(self, sampling=ms)

    def with_sampling_patches(self, patches: SamplingPatches) -> "FlowModel":
        return dataclasses.replace(self, sampling_patches=patches)

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.format.process_out(latent)

    def latent_preview(self, latent: torch.Tensor) -> torch.Tensor:
        return self.format.preview(self.process_latent_out(latent))

    def open_runner(self, ctx, latent_shape: tuple):
        return open_flow_runner(self, ctx, latent_shape)


class SD3Runner(NetRunner):
    """One run's calls of an ``SD3Transformer2DModel``."""

    def _text(self, parts: list[CondPart]) -> tuple[torch.Tensor, torch.Tensor]:
        states = common_length([_rows(p.cond.to(self.device, self.dtype), p.rows) for p in parts])
        pooled = []
        for p in parts:
            value = p.extras.get("pooled_output")
            if value is None:
                raise ValueError("this conditioning has no pooled output; encode the prompt with the model's "
                                 "text encoders (TripleCLIPLoader / DualCLIPLoader / the checkpoint's CLIP)")
            pooled.append(_rows(value.to(self.device, self.dtype), p.rows))
        return torch.cat(states), torch.cat(pooled)

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        states, pooled = self._text(parts)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(x_in.shape[0])
        return self.net(hidden_states=x_in.to(self.device, self.dtype), encoder_hidden_states=states,
                        pooled_projections=pooled, timestep=t, return_dict=False)[0]


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` (even sides) → ``[B, h/2 · w/2, 4C]`` (Flux's 2×2 patches, channels first)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, packed = x.shape
    c = packed // 4
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """Position ids ``[h/2 · w/2, 3]``: (0, row, column) per 2×2 patch."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


def _references(extras: dict) -> tuple:
    return tuple(extras.get("reference_latents") or ())


class FluxRunner(SD3Runner):
    """One run's calls of a ``FluxTransformer2DModel`` (reference latents: :mod:`.kontext`)."""

    def __init__(self, net, device: str, latent_format: LatentFormat | None = None):
        super().__init__(net, device)
        self.guidance_embeds = bool(getattr(net.config, "guidance_embeds", False))
        self.format = latent_format
        cfg = net.config
        self.in_channels = int(cfg.in_channels) // 4
        self.out_channels = int(cfg.out_channels or cfg.in_channels) // 4
        self.denoise_mask: torch.Tensor | None = None
        self.control = None  # FluxControl: ControlNet hints on the conditioning (set by open_flow_runner)

    def begin_step(self, sigma: torch.Tensor, in_range: Callable[[float, float], bool]) -> None:
        if self.control is not None:
            self.control.begin_step(in_range)

    def set_latent(self, latent_image: torch.Tensor | None, denoise_mask: torch.Tensor | None) -> None:
        self.denoise_mask = denoise_mask

    def _concat(self, x: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        """Fill models' extra input channels (ComfyUI's Flux ``concat_cond``): the entry's
        ``concat_latent_image`` in the model's latent space, then (inpainting) its ``concat_mask`` as 8×8
        pixel blocks per latent pixel (64 channels)."""
        from nodegraph_nodes.image.operations import common_upscale

        extra = []
        h, w = x.shape[-2:]
        for p in parts:
            image = p.extras.get("concat_latent_image")
            image = torch.zeros(p.rows, self.out_channels, h, w) if image is None else image
            image = common_upscale(image.to(self.device, torch.float32), w, h, "bilinear", "center")
            image = self.format.process_in(_rows(image, p.rows))
            chunk = [image]
            if self.in_channels > self.out_channels * 2:
                mask = p.extras.get("concat_mask", self.denoise_mask)
                mask = torch.ones(p.rows, 1, h, w) if mask is None else mask
                mask = mask.to(self.device, torch.float32)
                mask = mask.reshape(-1, *mask.shape[-2:])[:, None] if mask.ndim < 4 else mask.mean(dim=1, keepdim=True)
                mask = common_upscale(mask, w * 8, h * 8, "bilinear", "center")
                b = mask.shape[0]
                mask = mask.view(b, h, 8, w, 8).permute(0, 2, 4, 1, 3).reshape(b, 64, h, w)
                chunk.append(_rows(mask, p.rows))
            extra.append(torch.cat(chunk, dim=1))
        return torch.cat([x, torch.cat(extra).to(x.dtype)], dim=1)

    @staticmethod
    def can_batch(a, b) -> bool:
        """Entries batch together only with the same reference latents (token counts must match)."""
        from nodegraph_nodes.sampling.cond_batch import _default_can_batch

        ra, rb = _references(a.extras), _references(b.extras)
        same = len(ra) == len(rb) and all(x is y for x, y in zip(ra, rb)) and \
            a.extras.get("reference_latents_method") == b.extras.get("reference_latents_method")
        return same and _default_can_batch(a, b)

    def _reference_tokens(self, extras: dict, rows: int, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        from nodegraph_nodes.dit.kontext import reference_positions

        refs = _references(extras)
        if not refs:
            return None
        method = extras.get("reference_latents_method", "offset")
        latents = [pad_even(self.format.process_in(r.to(self.device, torch.float32)).to(self.dtype)) for r in refs]
        places = reference_positions(method, hw, [tuple(r.shape[-2:]) for r in refs])
        tokens, ids = [], []
        for lat, (index, h_off, w_off) in zip(latents, places):
            tokens.append(_rows(pack_latents(lat), rows))
            grid = image_ids(lat.shape[-2], lat.shape[-1], self.device, self.dtype)
            grid[:, 0] = index
            grid[:, 1] += (h_off + 1) // 2
            grid[:, 2] += (w_off + 1) // 2
            ids.append(grid)
        return torch.cat(tokens, dim=1), torch.cat(ids)

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        states, pooled = self._text(parts)
        h, w = x_in.shape[-2:]
        x = x_in.to(self.device, self.dtype)
        if self.in_channels > self.out_channels:
            x = self._concat(x, parts)
        x = pad_even(x)
        hh, ww = x.shape[-2:]
        guidance = None
        if self.guidance_embeds:
            values = []
            for p in parts:
                g = p.extras.get("guidance", FLUX_DEFAULT_GUIDANCE)
                values += [FLUX_DEFAULT_GUIDANCE if g is None else float(g)] * p.rows
            guidance = torch.tensor(values, device=self.device, dtype=torch.float32)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(x.shape[0])
        txt_ids = torch.zeros(states.shape[1], 3, device=self.device, dtype=self.dtype)
        tokens, ids = pack_latents(x), image_ids(hh, ww, self.device, self.dtype)
        image_tokens = tokens.shape[1]
        refs = [self._reference_tokens(p.extras, p.rows, (h, w)) for p in parts]
        control = {}
        hints = [p.extras.get("control") for p in parts for _ in range(p.rows)]
        if self.control is not None and any(hint is not None for hint in hints):  # ControlNets (.flux_controlnet)
            latent = tokens if x.shape[1] == x_in.shape[1] else pack_latents(pad_even(x_in.to(self.device, self.dtype)))
            control = self.control.residuals(
                hints, latent, states, pooled, t, guidance, ids, txt_ids, (h, w),
                0 if refs[0] is None else refs[0][0].shape[1],
                (len(self.net.transformer_blocks), len(self.net.single_transformer_blocks)))
        if refs[0] is not None:  # parts batch together only with the same references (can_batch)
            tokens = torch.cat([tokens, torch.cat([r[0] for r in refs])], dim=1)
            ids = torch.cat([ids, refs[0][1]])
        out = self.net(hidden_states=tokens, encoder_hidden_states=states, pooled_projections=pooled,
                       timestep=t, img_ids=ids, txt_ids=txt_ids, guidance=guidance, return_dict=False, **control)[0]
        return unpack_latents(out[:, :image_tokens], hh, ww)[..., :h, :w]


def open_flow_runner(model: FlowModel, ctx, latent_shape: tuple):
    """Load ``model``'s transformer on the run's device for one run (a context yielding its runner)."""
    if model.family == "flux":
        return _open_flux_runner(model, ctx, latent_shape)
    return open_runner(model, ctx, latent_shape, SD3Runner)


@contextmanager
def _open_flux_runner(model: FlowModel, ctx, latent_shape: tuple) -> Iterator[FluxRunner]:
    """The Flux runner, with the evaluation of ControlNet hints (:mod:`.flux_controlnet`)."""
    from nodegraph_nodes.dit.flux_controlnet import FluxControl

    with ExitStack() as stack:
        runner = stack.enter_context(open_runner(model, ctx, latent_shape, FluxRunner, model.format))
        runner.control = FluxControl(ctx.service("models"), ctx.device, stack, model.format.process_in)
        yield runner
