"""Guiders (the ``GUIDER`` socket): a model plus conditioning, and how their predictions combine into the
one denoised latent a sampler steps with.

* :class:`CFGGuider` — classifier-free guidance ``uncond + cfg · (cond − uncond)``, computed on the
  denoised predictions; at ``cfg == 1`` the negative is skipped (unless a patch needs it);
* :class:`BasicGuider` — the positive conditioning alone;
* :class:`DualCFGGuider` — two positives and a negative (``regular``: independent scales, or ``nested``).

The model's :class:`~nodegraph_nodes.sampling.model.SamplingPatches` take part in every combination
(``cfg_function`` replaces it, ``post_cfg`` adjust it), as ComfyUI's ``sampler_cfg_function`` and
``sampler_post_cfg_function`` do; ``pre_cfg`` adjust the two predictions before CFGGuider's and
BasicGuider's combination (ComfyUI's ``sampler_pre_cfg_function``, which its DualCFGGuider skips too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nodegraph_nodes.sampling.cond_batch import Cond, calc_cond_batch, pair_areas, prepare
from nodegraph_nodes.sampling.model import Prediction, SamplingModel, SamplingPatches
from nodegraph_nodes.sampling.model_sampling import ModelSampling


@dataclass
class Evaluation:
    """One run's means to evaluate the model: the runner, the model sampling, the prepared conditioning
    lists by name, the patches, whether the negative must be computed even at cfg 1, and the run as the
    model patches see it (``patch_run``: :class:`~nodegraph_nodes.sampling.run_patches.PatchRun`)."""

    runner: object
    model_sampling: ModelSampling
    conds: dict[str, list[Cond]]
    patches: SamplingPatches
    force_uncond: bool = False
    patch_run: object | None = None

    def calc(self, names: list[str | None], x: torch.Tensor, sigma: torch.Tensor,
             options: dict | None = None) -> list[torch.Tensor]:
        """The denoised prediction of each named list; ``options`` (for the model patches, e.g. PAG's
        perturbed attention) hold during these network calls."""
        lists = [self.conds.get(n) if n is not None else None for n in names]
        if options and self.patch_run is not None:
            with self.patch_run.using(options):
                return calc_cond_batch(self.runner, self.model_sampling, lists, x, sigma)
        return calc_cond_batch(self.runner, self.model_sampling, lists, x, sigma)


def cfg_combine(ev: Evaluation, cond_pred: torch.Tensor, uncond_pred: torch.Tensor, cond_scale: float,
                x: torch.Tensor, sigma: torch.Tensor, cond_name: str | None = "positive",
                uncond_name: str | None = "negative") -> torch.Tensor:
    """ComfyUI's cfg_function: the (patched) guidance combination, then the post-CFG patches. A post-CFG
    patch that evaluates the model again (PAG, SAG) gets ``calc`` (:meth:`Evaluation.calc`) and the names
    of the lists the two predictions came from (``cond_name``, ``uncond_name``; None: not computed)."""
    patches = ev.patches
    if patches.cfg_function is not None:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": sigma,
                "input": x, "sigma": sigma, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model_sampling": ev.model_sampling}
        result = x - patches.cfg_function(args)
    else:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in patches.post_cfg:
        result = fn({"denoised": result, "cond_scale": cond_scale, "uncond_denoised": uncond_pred,
                     "cond_denoised": cond_pred, "sigma": sigma, "input": x, "model_sampling": ev.model_sampling,
                     "calc": ev.calc, "cond_name": cond_name, "uncond_name": uncond_name})
    return result


def pre_cfg(ev: Evaluation, cond_pred: torch.Tensor, uncond_pred: torch.Tensor, cond_scale: float,
            x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's pre-CFG step: each patch gets ``conds_out`` = [cond, uncond] and returns the new list."""
    out = [cond_pred, uncond_pred]
    for fn in ev.patches.pre_cfg:
        out = fn({"conds_out": out, "cond_scale": cond_scale, "timestep": sigma, "input": x, "sigma": sigma,
                  "model_sampling": ev.model_sampling})
    return out[0], out[1]


class Guider:
    """Base: a model and named conditioning lists; :meth:`predict` combines them."""

    #: conditioning list names whose rows count as negative for the model (SDXL refiner scores, adapters)
    negative_names: tuple[str, ...] = ("negative",)

    def __init__(self, model: SamplingModel, conds: dict[str, list]):
        self.model = model
        self.conds = conds

    def prepared(self, latent_shape: tuple, ms: ModelSampling, device) -> dict[str, list[Cond]]:
        names = list(self.conds)
        lists = [prepare(self.conds[n], latent_shape, ms, device, negative=n in self.negative_names) for n in names]
        return dict(zip(names, pair_areas(lists)))

    def predict(self, ev: Evaluation, x: torch.Tensor, sigma: torch.Tensor) -> Prediction:
        raise NotImplementedError


class CFGGuider(Guider):
    def __init__(self, model: SamplingModel, positive: list, negative: list, cfg: float):
        super().__init__(model, {"positive": positive, "negative": negative})
        self.cfg = float(cfg)

    def predict(self, ev: Evaluation, x: torch.Tensor, sigma: torch.Tensor) -> Prediction:
        skip_uncond = math.isclose(self.cfg, 1.0) and not (ev.force_uncond or ev.patches.disable_cfg1_optimization)
        cond, uncond = ev.calc(["positive", None if skip_uncond else "negative"], x, sigma)
        if ev.patches.pre_cfg:
            cond, uncond = pre_cfg(ev, cond, uncond, self.cfg, x, sigma)
        return Prediction(cfg_combine(ev, cond, uncond, self.cfg, x, sigma, "positive",
                                      None if skip_uncond else "negative"), uncond)


class BasicGuider(Guider):
    def __init__(self, model: SamplingModel, conditioning: list):
        super().__init__(model, {"positive": conditioning})

    def predict(self, ev: Evaluation, x: torch.Tensor, sigma: torch.Tensor) -> Prediction:
        cond, uncond = ev.calc(["positive", None], x, sigma)
        if ev.patches.pre_cfg:
            cond, uncond = pre_cfg(ev, cond, uncond, 1.0, x, sigma)
        return Prediction(cfg_combine(ev, cond, uncond, 1.0, x, sigma, "positive", None), uncond)


class DualCFGGuider(Guider):
    """``regular``: negative + cfg2·(cond2 − negative) + cfg1·(cond1 − cond2); ``nested``: cfg1 between
    cond1 and cond2 first, then cfg2 against the negative. ``cond2`` counts as a negative prompt."""

    negative_names = ("negative", "middle")

    def __init__(self, model: SamplingModel, cond1: list, cond2: list, negative: list, cfg_conds: float,
                 cfg_cond2_negative: float, nested: bool = False):
        super().__init__(model, {"positive": cond1, "middle": cond2, "negative": negative})
        self.cfg1, self.cfg2, self.nested = float(cfg_conds), float(cfg_cond2_negative), nested

    def predict(self, ev: Evaluation, x: torch.Tensor, sigma: torch.Tensor) -> Prediction:
        if self.nested:
            neg, mid, pos = ev.calc(["negative", "middle", "positive"], x, sigma)
            pred_text = cfg_combine(ev, pos, mid, self.cfg1, x, sigma, "positive", "middle")
            return Prediction(neg + self.cfg2 * (pred_text - neg), mid)
        names = ["negative", "middle", "positive"]
        if not (ev.force_uncond or ev.patches.disable_cfg1_optimization) and math.isclose(self.cfg2, 1.0):
            names[0] = None
            if math.isclose(self.cfg1, 1.0):
                names[1] = None
        neg, mid, pos = ev.calc(names, x, sigma)
        return Prediction(cfg_combine(ev, mid, neg, self.cfg2, x, sigma, names[1], names[0])
                          + (pos - mid) * self.cfg1, neg)
