"""The UNet families' side of the sampling core: a :class:`~nodegraph_nodes.sampling.model.ModelRunner`
that feeds CONDITIONING entries to a diffusers ``UNet2DConditionModel``.

Per network call the runner gets the batch's conditioning parts (so many rows under one entry) and
builds the UNet's inputs: the cross-attention states (each entry repeated to its rows; entries of
different token lengths repeated to a common multiple, as ComfyUI does), SDXL's pooled text embeddings
and size/crop ids (``added_cond_kwargs``), what sampling hooks (IP-Adapter image prompts) add for
negative and positive rows, and the entries' ControlNet residuals and concatenated input channels
(inpainting / InstructPix2Pix UNets), through :class:`~nodegraph_nodes.diffusion.control_run.UNetInputs`.
:func:`open_unet_runner` loads the UNet, applies the LoRA patches and enters the hooks for one run.

The helpers :func:`sdxl_added_cond` and :func:`common_length` are shared with the diffusers-scheduler
path in :mod:`.sampler`.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch

from nodegraph.cpu_threads import small_work_threads

from nodegraph_nodes.diffusion.control_run import UNetInputs, fit_rows
from nodegraph_nodes.sampling.model import CondPart


def sdxl_added_cond(model, extras: dict, batch: int, h: int, w: int, negative: bool, dtype, device) -> dict:
    """SDXL's ``added_cond_kwargs`` for ``batch`` rows of one conditioning entry on an ``h``×``w`` latent."""
    pooled = extras.get("pooled_output")
    if pooled is None:
        raise ValueError("SDXL conditioning has no pooled output; encode the prompt with this model's CLIP")
    height, width = extras.get("height", h * 8), extras.get("width", w * 8)
    if model.family == "sdxl_refiner":
        score = extras.get("aesthetic_score", 2.5 if negative else 6.0)
        ids = [height, width, extras.get("crop_h", 0), extras.get("crop_w", 0), score]
    else:
        ids = [height, width, extras.get("crop_h", 0), extras.get("crop_w", 0),
               extras.get("target_height", height), extras.get("target_width", width)]
    time_ids = torch.tensor([ids], dtype=dtype, device=device).repeat(batch, 1)
    return {"text_embeds": pooled.to(device, dtype).expand(batch, -1), "time_ids": time_ids}


def common_length(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Cross-attention states of different token counts, each repeated to their least common multiple."""
    lengths = {t.shape[1] for t in tensors}
    if len(lengths) == 1:
        return tensors
    n = math.lcm(*lengths)
    return [t.repeat(1, n // t.shape[1], 1) for t in tensors]


class UNetRunner:
    """One run's UNet calls (see the module docstring)."""

    def __init__(self, model, unet, device: str, hooks: tuple = (), inputs: UNetInputs | None = None):
        self.model = model
        self.unet = unet
        self.device = device
        self.dtype = next(unet.parameters()).dtype
        self.hooks = tuple(hooks)
        self.inputs = inputs

    def set_latent(self, latent_image: torch.Tensor | None, denoise_mask: torch.Tensor | None) -> None:
        if self.inputs is not None:
            self.inputs.set_latent(latent_image, denoise_mask)

    def begin_step(self, sigma: torch.Tensor, in_range: Callable[[float, float], bool]) -> None:
        for hook in self.hooks:
            hook.begin_step(in_range)
        if self.inputs is not None:
            self.inputs.begin_step(in_range)

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        h, w = x_in.shape[-2], x_in.shape[-1]
        embeds = common_length([fit_rows(p.cond.to(self.device, self.dtype), p.rows) for p in parts])
        kwargs: dict = {}
        added = None
        if self.model.is_sdxl:
            per_part = [sdxl_added_cond(self.model, p.extras, p.rows, h, w, p.negative, self.dtype, self.device)
                        for p in parts]
            added = {k: torch.cat([a[k] for a in per_part]) for k in per_part[0]}
        negative = [p.negative for p in parts for _ in range(p.rows)]
        for hook in self.hooks:
            extra = hook.added_cond(negative)
            if extra:
                added = {**(added or {}), **extra}
        if added is not None:
            kwargs["added_cond_kwargs"] = added
        t = timestep.to(self.device)
        x = x_in.to(self.device, self.dtype)
        labels = getattr(self.model, "class_labels", None)
        if labels is not None:  # Lotus-D's task embedding, the same for every row
            kwargs["class_labels"] = torch.tensor(labels, device=self.device, dtype=self.dtype).expand(x.shape[0], -1)
        states = torch.cat(embeds)
        if self.inputs is not None:
            rows = [(p.extras, p.rows) for p in parts]
            kwargs.update(self.inputs.control(x, t, states, added, rows))
            x = self.inputs.concat(x, rows)
        return self.unet(x, t, encoder_hidden_states=states, return_dict=False, **kwargs)[0]


def unet_work_elements(unet, samples_shape: tuple) -> int:
    """Elements of one step's widest full-resolution activation: CFG batch × latent pixels × the UNet's
    first channel count (what decides whether threads pay off, see :mod:`nodegraph.cpu_threads`)."""
    channels = getattr(getattr(unet, "config", None), "block_out_channels", None) or (320,)
    return 2 * samples_shape[0] * samples_shape[-2] * samples_shape[-1] * int(channels[0])


@contextmanager
def open_unet_runner(model, ctx, latent_shape: tuple) -> Iterator[UNetRunner]:
    """Load ``model``'s UNet on the run's device with its LoRA patches and hooks, for one run."""
    from nodegraph_nodes.diffusion.lora import patched

    manager = ctx.service("models")
    device = ctx.device
    with ExitStack() as stack:
        unet = stack.enter_context(manager.use(model.handle, device))
        stack.enter_context(patched(unet, model.patches))
        stack.enter_context(torch.inference_mode())
        hooks = tuple(stack.enter_context(h.attach(manager, unet, device)) for h in getattr(model, "hooks", ()))
        stack.enter_context(small_work_threads(device, unet_work_elements(unet, latent_shape)))
        inputs = UNetInputs(model, unet, manager, device, next(unet.parameters()).dtype, stack)
        yield UNetRunner(model, unet, device, hooks, inputs)
