"""What a UNet call needs beyond latents and text: ControlNet residuals and the channels that inpainting
and InstructPix2Pix UNets take concatenated to their input — for one sampling run.

Both sampling paths (the sampling core's :mod:`.unet_runner` and KSampler's diffusers-scheduler path
:mod:`.sampler`) own one :class:`UNetInputs` per run and hand it, per network call, the batch's
conditioning parts (``(extras, rows)``: so many rows of the batch under one CONDITIONING entry).

**ControlNet** (ComfyUI's semantics): an entry's ``extras["control"]`` is a
:class:`~nodegraph_nodes.diffusion.controlnet.ControlHint` chain. Rows that share one hint share one
ControlNet evaluation; each hint of a chain whose ``[start_percent, end_percent]`` holds the current step
runs on the rows' model input (before any concatenated channels), timestep, text states and SDXL ids,
with its hint image center-cropped and resized (``nearest-exact``) to 8× the input's size and repeated
to the rows; its residuals are scaled by the strength and the chain's residuals add up. They reach the
UNet as ``down_block_additional_residuals`` / ``mid_block_additional_residual`` (zeros for rows without
a ControlNet). The ControlNet weights are loaded on the run's device on first use and held for the run.

**Concatenated channels** (ComfyUI's ``concat_cond``), when the UNet takes more input channels than the
latent has: an inpainting UNet (latent + 1 + latent channels) gets ``[mask, masked image latent]`` from
the entry's ``concat_mask`` / ``concat_latent_image`` (InpaintModelConditioning), else the run's noise
mask and latent; with neither, a full mask and the latent of a blank image. An InstructPix2Pix UNet
(2 × latent channels) gets the entry's ``concat_latent_image`` (unscaled, as diffusers' pipeline; SDXL
models scale it) or zeros. Not supported yet: these UNets with area conditioning (ComfyUI crops the extra
channels to the area; here it is an error).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch

from nodegraph_nodes.diffusion.controlnet import ControlHint
from nodegraph_nodes.image.operations import common_upscale

#: the latent of an all-gray (zero) image in SD's latent space (ComfyUI's blank inpaint image)
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)

Parts = list[tuple[dict, int]]


def fit_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t``'s batch repeated (cyclically) or cut to ``rows``."""
    if t.shape[0] == rows:
        return t
    if t.shape[0] == 1:
        return t.expand(rows, *t.shape[1:])
    reps = (rows + t.shape[0] - 1) // t.shape[0]
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:rows]


class UNetInputs:
    """One run's ControlNet and concat inputs for a UNet (see the module docstring)."""

    def __init__(self, model, unet, manager, device: str, dtype: torch.dtype, stack: ExitStack):
        self.model = model
        self.unet = unet
        self.manager = manager
        self.device = device
        self.dtype = dtype
        self.stack = stack
        self.in_channels = int(unet.config.in_channels)
        self.latent_image: torch.Tensor | None = None
        self.denoise_mask: torch.Tensor | None = None
        self.in_range: Callable[[float, float], bool] = lambda start, end: True
        self._nets: dict[int, torch.nn.Module] = {}
        self._hints: dict[tuple, tuple[ControlHint, torch.Tensor]] = {}

    # -- the run's state ----------------------------------------------------------------------------

    def set_latent(self, latent_image: torch.Tensor | None, denoise_mask: torch.Tensor | None) -> None:
        """The run's starting latent (in the model's space) and noise mask, for inpainting UNets."""
        self.latent_image = latent_image
        self.denoise_mask = denoise_mask

    def begin_step(self, in_range: Callable[[float, float], bool]) -> None:
        self.in_range = in_range

    # -- concatenated channels ------------------------------------------------------------------------

    def concat(self, x: torch.Tensor, parts: Parts) -> torch.Tensor:
        """``x`` with the channels the UNet takes beyond the latent's, per part."""
        extra = self.in_channels - x.shape[1]
        if extra <= 0:
            return x
        if self.latent_image is not None and tuple(x.shape[-2:]) != tuple(self.latent_image.shape[-2:]):
            raise ValueError("conditioning with an area (ConditioningSetArea…) is not supported with an inpainting "
                             "or InstructPix2Pix UNet (its extra input channels would need the area's crop)")
        pieces = [self._concat_part(extras, rows, x, extra) for extras, rows in parts]
        return torch.cat([x, torch.cat(pieces).to(x.device, x.dtype)], dim=1)

    def _to_latent_size(self, t: torch.Tensor, x: torch.Tensor, rows: int) -> torch.Tensor:
        t = t.to(self.device, torch.float32)
        if tuple(t.shape[-2:]) != tuple(x.shape[-2:]):
            t = common_upscale(t, x.shape[-1], x.shape[-2], "bilinear", "center")
        return fit_rows(t, rows)

    def _concat_part(self, extras: dict, rows: int, x: torch.Tensor, extra: int) -> torch.Tensor:
        channels = x.shape[1]
        h, w = x.shape[-2:]
        if extra == channels + 1:  # inpainting UNet: mask, masked image latent
            mask = extras.get("concat_mask", self.denoise_mask)
            image = extras.get("concat_latent_image")
            if image is not None:
                image = self.model.process_latent_in(image.to(self.device, torch.float32))
            elif self.latent_image is not None:
                image = self.latent_image
            if mask is None or image is None:
                blank = torch.tensor(BLANK_INPAINT_LATENT[:channels] + (0.0,) * max(0, channels - 4),
                                     device=self.device).reshape(1, channels, 1, 1)
                return torch.cat([torch.ones((rows, 1, h, w), device=self.device),
                                  blank.expand(rows, channels, h, w)], dim=1)
            mask = mask.to(self.device, torch.float32)
            mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))[:, :1] if mask.ndim != 4 else mask[:, :1]
            mask = self._to_latent_size(mask, x, rows).round()
            return torch.cat([mask, self._to_latent_size(image, x, rows)], dim=1)
        if extra == channels:  # InstructPix2Pix: the source image's latent
            image = extras.get("concat_latent_image")
            if image is None:
                return torch.zeros((rows, channels, h, w), device=self.device)
            image = image.to(self.device, torch.float32)
            if self.model.is_sdxl:
                image = self.model.process_latent_in(image)
            return self._to_latent_size(image, x, rows)
        raise ValueError(f"this UNet takes {self.in_channels} input channels, {extra} more than the latent's "
                         f"{channels}; only inpainting ({2 * channels + 1}) and InstructPix2Pix "
                         f"({2 * channels}) UNets are known")

    # -- ControlNet -----------------------------------------------------------------------------------

    def _net(self, hint: ControlHint) -> torch.nn.Module:
        key = id(hint.net.handle)
        if key not in self._nets:
            if hint.net.family not in ("sd1", "sd2", "sdxl", "sdxl_refiner"):
                raise ValueError(f"ControlNet {hint.net.name} is a {hint.net.family} ControlNet; this MODEL is a "
                                 "Stable Diffusion UNet")
            if getattr(hint.net, "is_union", False):
                raise ValueError(f"ControlNet {hint.net.name}: union ControlNets are not supported yet")
            self._nets[key] = self.stack.enter_context(self.manager.use(hint.net.handle, self.device))
        return self._nets[key]

    def _hint_image(self, hint: ControlHint, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        key = (id(hint), x.shape[-2], x.shape[-1])
        if key not in self._hints:  # the hint is kept with its image, so its id stays its own
            image = hint.image.to(self.device, torch.float32)
            image = common_upscale(image, x.shape[-1] * 8, x.shape[-2] * 8, "nearest-exact", "center")
            self._hints[key] = (hint, image.to(dtype))
        return self._hints[key][1]

    def control(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, added: dict | None,
                parts: Parts) -> dict:
        """``down_block_additional_residuals`` / ``mid_block_additional_residual`` for the batch (empty
        when no row has an active ControlNet)."""
        groups: dict[int, tuple[ControlHint, list[tuple[int, int]]]] = {}
        start = 0
        for extras, rows in parts:
            hint = extras.get("control")
            if hint is not None:
                groups.setdefault(id(hint), (hint, []))[1].append((start, rows))
            start += rows
        if not groups:
            return {}
        total = start
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for hint, spans in groups.values():
            result = self._run_chain(hint, spans, x, t, embeds, added)
            if result is None:
                continue
            g_down, g_mid = result
            if down is None:
                down = [torch.zeros((total, *r.shape[1:]), device=r.device, dtype=r.dtype) for r in g_down]
                mid = torch.zeros((total, *g_mid.shape[1:]), device=g_mid.device, dtype=g_mid.dtype)
            offset = 0
            for s, rows in spans:
                for full, r in zip(down, g_down):
                    full[s:s + rows] += r[offset:offset + rows]
                mid[s:s + rows] += g_mid[offset:offset + rows]
                offset += rows
        if down is None:
            return {}
        return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}

    def _run_chain(self, hint: ControlHint, spans: list[tuple[int, int]], x: torch.Tensor, t: torch.Tensor,
                   embeds: torch.Tensor, added: dict | None):
        index = torch.cat([torch.arange(s, s + rows) for s, rows in spans]).to(x.device)
        xs = x.index_select(0, index)
        ts = t if t.ndim == 0 else t.index_select(0, index.to(t.device))
        es = embeds.index_select(0, index)
        extra = None
        if added is not None and "text_embeds" in added:
            extra = {k: added[k].index_select(0, index.to(added[k].device)) for k in ("text_embeds", "time_ids")}
        down = mid = None
        for h in hint.chain():
            if not self.in_range(h.start_percent, h.end_percent):
                continue
            net = self._net(h)
            dtype = next(net.parameters()).dtype
            image = self._hint_image(h, xs, dtype)
            image = torch.cat([fit_rows(image, rows) for _, rows in spans])
            kwargs = {"added_cond_kwargs": {k: v.to(dtype) for k, v in extra.items()}} if extra else {}
            d, m = net(xs.to(dtype), ts, encoder_hidden_states=es.to(dtype), controlnet_cond=image,
                       conditioning_scale=float(h.strength), return_dict=False, **kwargs)
            if down is None:
                down, mid = list(d), m
            else:
                down = [a + b for a, b in zip(down, d)]
                mid = mid + m
        if down is None:
            return None
        return [r.to(self.dtype) for r in down], mid.to(self.dtype)
