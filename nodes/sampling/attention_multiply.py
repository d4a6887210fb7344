"""ComfyUI's ``UNetTemporalAttentionMultiply``: the output projections of a UNet's self-attention (``attn1``) and
cross-attention (``attn2``) layers scaled, by one factor in temporal (video) transformer blocks and another in
the spatial ("structural") ones.

Facts (ComfyUI's): the node multiplies the weight and bias of every ``attn1.to_out.0`` / ``attn2.to_out.0`` in
the model's state dict — ``self_temporal`` / ``cross_temporal`` under a ``time_stack`` (SVD's temporal blocks),
``self_structural`` / ``cross_structural`` elsewhere; two of these nodes in a row multiply. Those names exist in
ComfyUI's SD-style UNets only: on Wan (``self_attn.o``), Flux, SD3 and the other DiT families nothing matches
and the node changes nothing — the Wan 2.1 Fun templates use it on a Wan model, where it is a no-op.

Here: a per-run patch (:mod:`.run_patches`) on UNet models (SD 1.x, 2.x, SDXL) scales those layers' outputs
(the same as scaling weight and bias); temporal blocks are diffusers' ``temporal_transformer_blocks`` (and
``motion_modules``), which these UNets lack, so on them the structural factors apply. On any other MODEL the
node passes the model through unchanged and says so in a node warning (factors of 1 need no warning).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from nodegraph.node import FLOAT, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun, require_unet

TEMPORAL_PARTS = (".temporal_transformer_blocks.", ".motion_modules.", ".time_stack.")


@dataclass(frozen=True)
class AttentionFactors:
    self_structural: float = 1.0
    self_temporal: float = 1.0
    cross_structural: float = 1.0
    cross_temporal: float = 1.0

    def factor(self, name: str) -> float | None:
        """The factor of the module called ``name`` (an attention output projection), else ``None``."""
        if name.endswith("attn1.to_out.0"):
            kind = "self"
        elif name.endswith("attn2.to_out.0"):
            kind = "cross"
        else:
            return None
        temporal = any(part in f".{name}." for part in TEMPORAL_PARTS)
        return getattr(self, f"{kind}_{'temporal' if temporal else 'structural'}")

    @property
    def identity(self) -> bool:
        return all(v == 1.0 for v in (self.self_structural, self.self_temporal, self.cross_structural,
                                      self.cross_temporal))


def scaled_layers(network: torch.nn.Module, factors: AttentionFactors) -> list[tuple[torch.nn.Module, float]]:
    """The attention output projections of ``network`` whose factor is not 1, with the factor."""
    out = []
    for name, module in network.named_modules():
        factor = factors.factor(name)
        if factor is not None and factor != 1.0:
            out.append((module, factor))
    return out


@dataclass(eq=False)
class TemporalAttentionPatch(ModelPatch):
    factors: AttentionFactors
    where: str = "UNetTemporalAttentionMultiply"

    def __post_init__(self) -> None:
        self.key = f"attention_multiply:{id(self)}"  # two nodes in a row multiply, as ComfyUI's weight patches

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        unet = require_unet(run.network, f"{self.where}.model")
        handles = [module.register_forward_hook(lambda _m, _a, out, f=factor: out * f)
                   for module, factor in scaled_layers(unet, self.factors)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _factor(default: float = 1.0) -> Input:
    return Input(FLOAT, default=default, min=0.0, max=10.0, step=0.01)


class UNetTemporalAttentionMultiply(Node):
    """Scales the UNet's self- and cross-attention outputs, temporal and spatial blocks apart. A no-op with a
    warning on models without UNet attention layers (Wan and the other DiT families), as in ComfyUI."""

    category = "_for_testing/attention_experiments"
    model = Input(MODEL)
    self_structural = _factor()
    self_temporal = _factor()
    cross_structural = _factor()
    cross_temporal = _factor()
    outputs = (Output(MODEL),)

    def execute(self, model, self_structural: float, self_temporal: float, cross_structural: float,
                cross_temporal: float) -> tuple:
        from nodegraph_nodes.diffusion.components import DiffusionModel

        factors = AttentionFactors(self_structural, self_temporal, cross_structural, cross_temporal)
        if factors.identity:
            return (model,)
        if not isinstance(model, DiffusionModel):
            family = getattr(model, "family", type(model).__name__)
            self.ctx.warn(f"this {family} model has no UNet attention layers (attn1 / attn2) to scale: the model "
                          "passes through unchanged (ComfyUI's node changes nothing on it either)")
            return (model,)
        model = require_sampling_model(model, "UNetTemporalAttentionMultiply.model")
        patch = TemporalAttentionPatch(factors)
        return (model.with_sampling_patches(model.sampling_patches.with_model_patch(patch)),)
