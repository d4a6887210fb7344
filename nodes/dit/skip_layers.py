"""Skip-layer guidance for the flow transformers (ComfyUI's ``SkipLayerGuidanceDiT`` and
``SkipLayerGuidanceDiTSimple``).

A per-run model patch (:mod:`nodegraph_nodes.sampling.run_patches`) wraps the transformer's blocks —
``double`` = SD3's joint blocks / Flux's double-stream blocks (``transformer_blocks``) / Wan's blocks
(``blocks``: ComfyUI's Wan reads the ``double_block`` replacements only), ``single`` = Flux's single-stream
blocks (``single_transformer_blocks``) — so that while an evaluation asks for it
(``PatchRun.options["skip_layers"]``) the listed blocks pass their inputs through unchanged.

* **SkipLayerGuidanceDiT**: after CFG, where ``sigma_end ≤ sigma ≤ sigma_start`` (the percents mapped
  through the model's sampling when the node runs), the positive prompt is evaluated again with the
  layers skipped and ``result + (cond − skipped) · scale`` is the result; ``rescaling_scale`` then pulls
  the result's spread towards the positive prediction's (``factor = r · std(cond)/std(result) + 1 − r``).
  This is diffusers' SD3 pipeline's ``skip_guidance_layers`` in denoised space.
* **SkipLayerGuidanceDiTSimple**: in range, the negative prompt's rows are evaluated with the layers
  skipped (the positive rows as usual).

Layer lists are the numbers in the text (``"7, 8, 9"``). Stricter than ComfyUI: a layer index the model
does not have is an error (ComfyUI ignores it), and so is a model that is not a flow transformer.
"""

from __future__ import annotations

import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from nodegraph.node import FLOAT, STRING, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun, RunnerProxy

SKIP = "skip_layers"


def parse_layers(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text or ""))


@contextmanager
def _passthrough(block: torch.nn.Module, run: PatchRun, index: int, kind: str,
                 joint: bool = True) -> Iterator[None]:
    """While an evaluation skips ``index``, ``block`` gives its inputs back: ``(context, hidden)`` for joint
    (SD3 / Flux) blocks, the hidden states for Wan's."""
    had_own = "forward" in block.__dict__  # another patch's wrapper already on this block
    original = block.forward

    def forward(*args, **kwargs):
        skip = run.options.get(SKIP)
        if skip is not None and index in skip[kind]:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            return (context, hidden) if joint else hidden
        return original(*args, **kwargs)

    block.forward = forward
    try:
        yield
    finally:
        if had_own:
            block.forward = original
        else:
            del block.forward


def _blocks(network, where: str) -> dict[str, list]:
    if hasattr(network, "blocks") and hasattr(network, "condition_embedder"):  # diffusers' Wan transformers
        return {"double": list(network.blocks), "single": []}
    double = getattr(network, "transformer_blocks", None)
    if double is None or not hasattr(network, "time_text_embed"):
        raise TypeError(f"{where}: skip-layer guidance works on SD3 / Flux transformers; this model's network is "
                        f"{type(network).__name__}")
    return {"double": list(double), "single": list(getattr(network, "single_transformer_blocks", None) or [])}


@dataclass(eq=False)
class SkipLayersPatch(ModelPatch):
    """Wraps the listed blocks for one run; ``negative_in_range`` (Simple) also splits the negative rows
    off into their own, skipping, network call while the step's sigma lies in the range."""

    key = "skip_layers"
    double: tuple[int, ...]
    single: tuple[int, ...]
    where: str
    negative_range: tuple[float, float] | None = None

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        blocks = _blocks(run.network, self.where)
        with ExitStack() as stack:
            for kind, wanted in (("double", self.double), ("single", self.single)):
                for index in wanted:
                    if index >= len(blocks[kind]):
                        raise ValueError(f"{self.where}: {kind}_layers names block {index}, but the model has "
                                         f"{len(blocks[kind])} {kind} blocks")
                    joint = not hasattr(run.network, "condition_embedder")
                    stack.enter_context(_passthrough(blocks[kind][index], run, index, kind, joint))
            if self.negative_range is not None:
                run.runner = _NegativeSkipper(run.runner, run, self)
            yield

    @property
    def options(self) -> dict:
        return {SKIP: {"double": self.double, "single": self.single}}


@dataclass(eq=False)
class NegativeSkipLayersPatch(SkipLayersPatch):
    """SkipLayerGuidanceDiTSimple's patch (its own key: it combines with SkipLayerGuidanceDiT's)."""

    key = "skip_layers_negative"


class _NegativeSkipper(RunnerProxy):
    def __init__(self, inner, run: PatchRun, patch: SkipLayersPatch):
        super().__init__(inner)
        self.run = run
        self.patch = patch
        self.active = False

    def begin_step(self, sigma: torch.Tensor, in_range) -> None:
        low, high = self.patch.negative_range
        s = float(sigma.reshape(-1)[0])
        self.active = low <= s <= high
        super().begin_step(sigma, in_range)

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list) -> torch.Tensor:
        if not self.active or not any(p.negative for p in parts):
            return self.inner(x_in, timestep, parts)
        out = torch.empty_like(x_in)
        rows, start = [], 0
        for p in parts:
            rows.append((start, start + p.rows, p))
            start += p.rows
        ts = timestep.reshape(-1)
        for negative in (False, True):
            picked = [(a, b, p) for a, b, p in rows if p.negative == negative]
            if not picked:
                continue
            index = torch.cat([torch.arange(a, b) for a, b, _ in picked]).to(x_in.device)
            t = ts[index] if ts.numel() == x_in.shape[0] else timestep
            with self.run.using(self.patch.options if negative else None):
                result = self.inner(x_in[index], t, [p for _, _, p in picked])
            out[index] = result.to(out.dtype)
        return out


class _SlgPostCfg:
    def __init__(self, patch: SkipLayersPatch, scale: float, sigma_start: float, sigma_end: float,
                 rescaling_scale: float):
        self.patch = patch
        self.scale = scale
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.rescaling_scale = rescaling_scale

    def __call__(self, args: dict) -> torch.Tensor:
        result = args["denoised"]
        s = float(args["sigma"].reshape(-1)[0])
        if self.scale <= 0 or args.get("cond_name") is None or not (self.sigma_end <= s <= self.sigma_start):
            return result
        cond = args["cond_denoised"]
        (skipped,) = args["calc"]([args["cond_name"]], args["input"], args["sigma"], self.patch.options)
        result = result + (cond - skipped) * self.scale
        if self.rescaling_scale != 0:
            factor = cond.std() / result.std()
            result = result * (self.rescaling_scale * factor + (1 - self.rescaling_scale))
        return result


def _flow_model(model, where: str):
    model = require_sampling_model(model, where)
    if getattr(model, "family", None) not in ("sd3", "flux", "wan"):
        raise TypeError(f"{where}: skip-layer guidance works on SD3 / Flux / Wan transformers; this MODEL is "
                        f"{getattr(model, 'family', type(model).__name__)}")
    return model


class SkipLayerGuidanceDiT(Node):
    """Guides away from the positive prediction made with some transformer blocks skipped (SD3: joint
    blocks = ``double_layers``; Flux: double- and single-stream blocks; Wan: its blocks = ``double_layers``), between ``start_percent`` and
    ``end_percent`` of the schedule. An unknown block index is an error (ComfyUI ignores it)."""

    category = "advanced/guidance"
    model = Input(MODEL)
    double_layers = Input(STRING, default="7, 8, 9")
    single_layers = Input(STRING, default="7, 8, 9")
    scale = Input(FLOAT, default=3.0, min=0.0, max=10.0, step=0.1)
    start_percent = Input(FLOAT, default=0.01, min=0.0, max=1.0, step=0.001)
    end_percent = Input(FLOAT, default=0.15, min=0.0, max=1.0, step=0.001)
    rescaling_scale = Input(FLOAT, default=0.0, min=0.0, max=10.0, step=0.01)
    outputs = (Output(MODEL),)

    def execute(self, model, double_layers: str, single_layers: str, scale: float, start_percent: float,
                end_percent: float, rescaling_scale: float = 0.0) -> tuple:
        where = "SkipLayerGuidanceDiT.model"
        model = _flow_model(model, where)
        double, single = parse_layers(double_layers), parse_layers(single_layers)
        if model.family in ("sd3", "wan"):
            single = ()  # MMDiT has joint blocks only; Wan's blocks are its double blocks
        if not double and not single:
            return (model,)
        ms = model.model_sampling
        patch = SkipLayersPatch(double, single, where)
        post = _SlgPostCfg(patch, scale, ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent),
                           rescaling_scale)
        return (model.with_sampling_patches(model.sampling_patches.with_model_patch(patch).with_post_cfg(post)),)


class SkipLayerGuidanceDiTSimple(Node):
    """Evaluates the negative prompt with some transformer blocks skipped, between ``start_percent`` and
    ``end_percent`` of the schedule."""

    category = "advanced/guidance"
    model = Input(MODEL)
    double_layers = Input(STRING, default="7, 8, 9")
    single_layers = Input(STRING, default="7, 8, 9")
    start_percent = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.001)
    end_percent = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.001)
    outputs = (Output(MODEL),)

    def execute(self, model, double_layers: str, single_layers: str, start_percent: float,
                end_percent: float) -> tuple:
        where = "SkipLayerGuidanceDiTSimple.model"
        model = _flow_model(model, where)
        double, single = parse_layers(double_layers), parse_layers(single_layers)
        if model.family in ("sd3", "wan"):
            single = ()
        if not double and not single:
            return (model,)
        ms = model.model_sampling
        patch = NegativeSkipLayersPatch(double, single, where,
                                        (ms.percent_to_sigma(end_percent), ms.percent_to_sigma(start_percent)))
        return (model.with_sampling_patches(model.sampling_patches.with_model_patch(patch)),)
