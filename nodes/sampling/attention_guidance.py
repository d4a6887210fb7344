"""Guidance through the UNet's self-attention (ComfyUI's nodes): ``PerturbedAttentionGuidance`` and
``SelfAttentionGuidance``.

Both change the self-attention (``attn1``) of the transformer blocks in the UNet's middle block —
ComfyUI's ``("middle", 0)`` block, diffusers' ``unet.mid_block.attentions[0]`` — by swapping the
diffusers attention processor of those modules for one run, and add a post-CFG step that evaluates the
model once more:

* **PAG** (Ahn et al. 2024): the extra evaluation is the positive prompt with that self-attention
  *perturbed* to the identity (every token attends only to itself: the output is ``to_out(to_v(x))``);
  the result is ``cfg_result + (cond − perturbed) · scale``. Scale 0 returns the CFG result unchanged.
* **SAG** (Hong et al. 2023): during the normal evaluation the attention map of the negative rows is
  recorded; where the image attends much (mean attention over heads, summed over queries, above 1) the
  negative prediction is blurred (Gaussian, 9 taps, ``blur_sigma``); the negative prompt is evaluated at
  that blurred image re-noised, and ``cfg_result + (degraded − sag) · scale`` is the result. SAG
  needs the negative prediction, so it is computed at cfg 1 too.

The swapped processors only act while the patched MODEL's run is in progress, and PAG's perturbation
only in its own extra evaluation (``PatchRun.options``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from nodegraph.node import FLOAT, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun, require_unet

PERTURB = "perturbed_attention"


def middle_self_attentions(unet) -> list:
    """The ``attn1`` modules of the middle block's transformer blocks (ComfyUI's ``("middle", 0)``)."""
    attentions = getattr(unet.mid_block, "attentions", None) or []
    if not attentions:
        return []
    return [block.attn1 for block in attentions[0].transformer_blocks]


@contextmanager
def swapped_processors(modules: list, make) -> Iterator[None]:
    """Each module's attention processor replaced by ``make(original)`` until exit."""
    originals = [m.processor for m in modules]
    for module, original in zip(modules, originals):
        module.processor = make(original)
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.processor = original


def _output(attn, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    hidden = attn.to_out[1](attn.to_out[0](hidden))
    if attn.residual_connection:
        hidden = hidden + residual
    return hidden / attn.rescale_output_factor


class PerturbedProcessor:
    """Identity self-attention while ``run.options`` asks for it, the original processor otherwise."""

    def __init__(self, original, run: PatchRun):
        self.original = original
        self.run = run

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if not self.run.options.get(PERTURB) or hidden_states.ndim != 3:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return _output(attn, attn.to_v(context), hidden_states)


@dataclass
class _Scores:
    """The attention probabilities of the negative rows in the last call (``[rows · heads, n, n]``)."""

    probs: torch.Tensor | None = None


class RecordingProcessor:
    """Plain attention; when the call has negative rows, it is computed explicitly and the first negative
    entry's attention probabilities are kept (SAG)."""

    def __init__(self, original, run: PatchRun, scores: _Scores):
        self.original = original
        self.run = run
        self.scores = scores

    def _negative_rows(self, batch: int) -> slice | None:
        start = 0
        for part in self.run.parts:
            if part.negative:
                return slice(start, start + part.rows) if start + part.rows <= batch else None
            start += part.rows
        return None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        rows = self._negative_rows(hidden_states.shape[0]) if hidden_states.ndim == 3 else None
        if rows is None or attention_mask is not None or getattr(attn, "norm_q", None) is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k)
        self.scores.probs = probs[rows.start * attn.heads:rows.stop * attn.heads]
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return _output(attn, out, hidden_states)


# -- PAG -----------------------------------------------------------------------------------------------

@dataclass(eq=False)
class PerturbedAttentionPatch(ModelPatch):
    key = "perturbed_attention"

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        unet = require_unet(run.network, "PerturbedAttentionGuidance.model")
        modules = middle_self_attentions(unet)
        if not modules:
            raise TypeError("PerturbedAttentionGuidance.model: this UNet has no attention in its middle block")
        with swapped_processors(modules, lambda original: PerturbedProcessor(original, run)):
            yield


class _PagPostCfg:
    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, args: dict) -> torch.Tensor:
        result = args["denoised"]
        if self.scale == 0 or args.get("cond_name") is None:
            return result
        (perturbed,) = args["calc"]([args["cond_name"]], args["input"], args["sigma"], {PERTURB: True})
        return result + (args["cond_denoised"] - perturbed) * self.scale


class PerturbedAttentionGuidance(Node):
    """Perturbed-Attention Guidance: guides away from the prediction made with the middle block's
    self-attention replaced by the identity (UNet models; an error on others, where ComfyUI's patch
    silently does nothing)."""

    category = "model_patches/unet"
    model = Input(MODEL)
    scale = Input(FLOAT, default=3.0, min=0.0, max=100.0, step=0.01, round=0.01)
    outputs = (Output(MODEL),)

    def execute(self, model, scale: float) -> tuple:
        model = require_sampling_model(model, "PerturbedAttentionGuidance.model")
        patches = model.sampling_patches.with_model_patch(PerturbedAttentionPatch()).with_post_cfg(_PagPostCfg(scale))
        return (model.with_sampling_patches(patches),)


# -- SAG -----------------------------------------------------------------------------------------------

def gaussian_blur(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel with reflect padding (``sigma`` 0: no blur)."""
    if sigma <= 0:
        return img
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = (pdf / pdf.sum()).to(device=img.device, dtype=img.dtype)
    kernel = torch.outer(k1, k1).expand(img.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(img, [pad] * 4, mode="reflect"), kernel, groups=img.shape[-3])


def _grid_rows(total: int, aspect: float) -> int:
    """Rows of the token grid: the divisor of ``total`` nearest ``sqrt(aspect · total)``."""
    guess = round(math.sqrt(aspect * total))
    for i in range(0, total + 1):
        for rows in (guess + i, max(1, guess - i)):
            if 0 < rows <= total and total % rows == 0:
                return rows
    return 1


def blur_map(x0: torch.Tensor, probs: torch.Tensor, sigma: float, threshold: float = 1.0) -> torch.Tensor:
    """``x0`` blurred where the attention map (``[rows · heads, n, n]``) says the image attends much."""
    b, _, lh, lw = x0.shape
    n_q, n_k = probs.shape[-2:]
    mask = probs.reshape(b, -1, n_q, n_k).mean(1).sum(1) > threshold
    rows = _grid_rows(n_k, lh / lw)
    mask = mask.reshape(b, 1, rows, n_k // rows).to(x0.dtype)
    mask = F.interpolate(mask, (lh, lw))
    blurred = gaussian_blur(x0, 9, sigma)
    return blurred * mask + x0 * (1 - mask)


@dataclass(eq=False)
class SelfAttentionRecordPatch(ModelPatch):
    key = "self_attention_guidance"
    scores: _Scores

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        unet = require_unet(run.network, "SelfAttentionGuidance.model")
        modules = middle_self_attentions(unet)[:1]
        if not modules:
            raise TypeError("SelfAttentionGuidance.model: this UNet has no attention in its middle block")
        self.scores.probs = None
        try:
            with swapped_processors(modules, lambda original: RecordingProcessor(original, run, self.scores)):
                yield
        finally:
            self.scores.probs = None


class _SagPostCfg:
    def __init__(self, scale: float, blur_sigma: float, scores: _Scores):
        self.scale, self.blur_sigma, self.scores = scale, blur_sigma, scores

    def __call__(self, args: dict) -> torch.Tensor:
        result = args["denoised"]
        probs = self.scores.probs
        if min(result.shape[2:]) <= 4 or probs is None:
            return result  # too small for the blur's padding, or no negative rows were evaluated
        if args.get("uncond_name") is None:
            raise ValueError("SelfAttentionGuidance: needs a negative conditioning (use CFGGuider or KSampler, not "
                             "BasicGuider)")
        uncond_pred = args["uncond_denoised"]
        degraded = blur_map(uncond_pred, probs, self.blur_sigma)
        noised = degraded + args["input"] - uncond_pred
        (sag,) = args["calc"]([args["uncond_name"]], noised, args["sigma"], None)
        return result + (degraded - sag) * self.scale


class SelfAttentionGuidance(Node):
    """Self-Attention Guidance: guides away from the negative prediction of an image blurred where the
    middle block's self-attention concentrates (UNet models; an error on others). ``blur_sigma`` 0 means
    no blur (ComfyUI would produce NaNs)."""

    display_name = "Self-Attention Guidance"
    category = "_for_testing"
    experimental = True
    model = Input(MODEL)
    scale = Input(FLOAT, default=0.5, min=-2.0, max=5.0, step=0.01)
    blur_sigma = Input(FLOAT, default=2.0, min=0.0, max=10.0, step=0.1)
    outputs = (Output(MODEL),)

    def execute(self, model, scale: float, blur_sigma: float) -> tuple:
        model = require_sampling_model(model, "SelfAttentionGuidance.model")
        scores = _Scores()
        patches = model.sampling_patches.with_model_patch(SelfAttentionRecordPatch(scores))
        patches = patches.with_post_cfg(_SagPostCfg(scale, blur_sigma, scores), disable_cfg1_optimization=True)
        return (model.with_sampling_patches(patches),)
