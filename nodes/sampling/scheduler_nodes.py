"""ComfyUI's scheduler and sigma nodes: SIGMAS from a model's sampling (BasicScheduler, BetaSampling,
SDTurbo), from explicit bounds (Karras, Exponential, Polyexponential, Laplace, VP), from a table
(AlignYourSteps) or typed in (ManualSigmas); and sigma tools (SplitSigmas, SplitSigmasDenoise,
FlipSigmas, SetFirstSigma, ExtendIntermediateSigmas, SamplingPercentToSigma). The formulas live in
:mod:`nodegraph_nodes.sampling.sigmas`.
"""

from __future__ import annotations

import torch

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, STRING, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling import sigmas as sg
from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.types import SIGMAS

SIGMA_MAX_DEFAULT, SIGMA_MIN_DEFAULT = 14.614642, 0.0291675


def _bound(default: float) -> Input:
    return Input(FLOAT, default=default, min=0.0, max=5000.0, step=0.01, round=False)


class BasicScheduler(Node):
    """``steps`` steps of a KSampler scheduler on the model's noise schedule (``denoise < 1``: the last
    steps of a longer schedule)."""

    category = "sampling/custom_sampling/schedulers"
    model = Input(MODEL)
    scheduler = Input(COMBO, choices=sg.SCHEDULER_NAMES)
    steps = Input(INT, default=20, min=1, max=10000)
    denoise = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)
    outputs = (Output(SIGMAS),)

    def execute(self, model, scheduler: str, steps: int, denoise: float) -> tuple:
        ms = require_sampling_model(model, "BasicScheduler.model").model_sampling
        return (sg.basic_scheduler(ms, scheduler, steps, denoise),)


class _ExplicitBoundsScheduler(Node):
    """A schedule of ``steps`` steps between sigma_max and sigma_min given as inputs (not the model's)."""

    abstract = True
    category = "sampling/custom_sampling/schedulers"
    steps = Input(INT, default=20, min=1, max=10000)
    sigma_max = _bound(SIGMA_MAX_DEFAULT)
    sigma_min = _bound(SIGMA_MIN_DEFAULT)
    outputs = (Output(SIGMAS),)


class KarrasScheduler(_ExplicitBoundsScheduler):
    """Karras et al.'s schedule: evenly spaced in sigma^(1/rho)."""

    rho = Input(FLOAT, default=7.0, min=0.0, max=100.0, step=0.01, round=False)

    def execute(self, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple:
        return (sg.karras(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(_ExplicitBoundsScheduler):
    """Evenly spaced in log sigma."""

    def execute(self, steps: int, sigma_max: float, sigma_min: float) -> tuple:
        return (sg.exponential(steps, sigma_min, sigma_max),)


class PolyexponentialScheduler(_ExplicitBoundsScheduler):
    """A polynomial of degree ``rho`` in log sigma."""

    rho = Input(FLOAT, default=1.0, min=0.0, max=100.0, step=0.01, round=False)

    def execute(self, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple:
        return (sg.polyexponential(steps, sigma_min, sigma_max, rho),)


class LaplaceScheduler(_ExplicitBoundsScheduler):
    """Log sigmas distributed as a Laplace(mu, beta)."""

    mu = Input(FLOAT, default=0.0, min=-10.0, max=10.0, step=0.1, round=False)
    beta = Input(FLOAT, default=0.5, min=0.0, max=10.0, step=0.1, round=False)

    def execute(self, steps: int, sigma_max: float, sigma_min: float, mu: float, beta: float) -> tuple:
        return (sg.laplace(steps, sigma_min, sigma_max, mu, beta),)


class VPScheduler(Node):
    """A continuous variance-preserving schedule."""

    category = "sampling/custom_sampling/schedulers"
    steps = Input(INT, default=20, min=1, max=10000)
    beta_d = Input(FLOAT, default=19.9, min=0.0, max=5000.0, step=0.01, round=False)
    beta_min = Input(FLOAT, default=0.1, min=0.0, max=5000.0, step=0.01, round=False)
    eps_s = Input(FLOAT, default=0.001, min=0.0, max=1.0, step=0.0001, round=False)
    outputs = (Output(SIGMAS),)

    def execute(self, steps: int, beta_d: float, beta_min: float, eps_s: float) -> tuple:
        return (sg.vp(steps, beta_d, beta_min, eps_s),)


class BetaSamplingScheduler(Node):
    """Table sigmas at the quantiles of Beta(alpha, beta) (more steps at both ends by default)."""

    category = "sampling/custom_sampling/schedulers"
    model = Input(MODEL)
    steps = Input(INT, default=20, min=1, max=10000)
    alpha = Input(FLOAT, default=0.6, min=0.0, max=50.0, step=0.01, round=False)
    beta = Input(FLOAT, default=0.6, min=0.0, max=50.0, step=0.01, round=False)
    outputs = (Output(SIGMAS),)

    def execute(self, model, steps: int, alpha: float, beta: float) -> tuple:
        ms = require_sampling_model(model, "BetaSamplingScheduler.model").model_sampling
        return (sg.beta(ms, steps, alpha, beta),)


class SDTurboScheduler(Node):
    """SD Turbo's few-step timesteps (999, 899, …)."""

    category = "sampling/custom_sampling/schedulers"
    model = Input(MODEL)
    steps = Input(INT, default=1, min=1, max=10)
    denoise = Input(FLOAT, default=1.0, min=0, max=1.0, step=0.01)
    outputs = (Output(SIGMAS),)

    def execute(self, model, steps: int, denoise: float) -> tuple:
        ms = require_sampling_model(model, "SDTurboScheduler.model").model_sampling
        return (sg.sd_turbo(ms, steps, denoise),)


class AlignYourStepsScheduler(Node):
    """NVIDIA's Align Your Steps noise levels for SD1, SDXL or SVD, resampled to ``steps``."""

    category = "sampling/custom_sampling/schedulers"
    model_type = Input(COMBO, choices=["SD1", "SDXL", "SVD"])
    steps = Input(INT, default=10, min=1, max=10000)
    denoise = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)
    outputs = (Output(SIGMAS),)

    def execute(self, model_type: str, steps: int, denoise: float) -> tuple:
        return (sg.align_your_steps(model_type, steps, denoise),)


class ManualSigmas(Node):
    """SIGMAS typed in: every number in the text, in order ("1, 0.5, 0.1" or "1 0.5 0.1")."""

    category = "_for_testing/custom_sampling"
    experimental = True
    sigmas = Input(STRING, default="1, 0.5", multiline=False)
    outputs = (Output(SIGMAS),)

    def execute(self, sigmas: str) -> tuple:
        try:
            return (sg.parse_manual(sigmas),)
        except ValueError as exc:
            raise ValueError(f"ManualSigmas.sigmas: {exc}") from None


class SplitSigmas(Node):
    """The schedule cut at ``step``: the first part runs steps [0, step), the second the rest."""

    category = "sampling/custom_sampling/sigmas"
    sigmas = Input(SIGMAS)
    step = Input(INT, default=0, min=0, max=10000)
    outputs = (Output(SIGMAS, "high_sigmas"), Output(SIGMAS, "low_sigmas"))

    def execute(self, sigmas: torch.Tensor, step: int) -> tuple:
        return sg.split_at(sigmas, step)


class SplitSigmasDenoise(Node):
    """The schedule cut so that the low part holds ``denoise`` of the steps."""

    category = "sampling/custom_sampling/sigmas"
    sigmas = Input(SIGMAS)
    denoise = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)
    outputs = (Output(SIGMAS, "high_sigmas"), Output(SIGMAS, "low_sigmas"))

    def execute(self, sigmas: torch.Tensor, denoise: float) -> tuple:
        return sg.split_denoise(sigmas, denoise)


class FlipSigmas(Node):
    """The schedule reversed (for unsampling: noise a latent back up); a leading 0 becomes 0.0001."""

    category = "sampling/custom_sampling/sigmas"
    sigmas = Input(SIGMAS)
    outputs = (Output(SIGMAS),)

    def execute(self, sigmas: torch.Tensor) -> tuple:
        return (sg.flip(sigmas),)


class SetFirstSigma(Node):
    """The schedule with its first sigma replaced."""

    category = "sampling/custom_sampling/sigmas"
    sigmas = Input(SIGMAS)
    sigma = Input(FLOAT, default=136.0, min=0.0, max=20000.0, step=0.001, round=False)
    outputs = (Output(SIGMAS),)

    def execute(self, sigmas: torch.Tensor, sigma: float) -> tuple:
        sigmas = sigmas.clone()
        sigmas[0] = sigma
        return (sigmas,)


class ExtendIntermediateSigmas(Node):
    """Extra sigmas inside each step between ``end_at_sigma`` and ``start_at_sigma`` (-1: the top)."""

    category = "sampling/custom_sampling/sigmas"
    sigmas = Input(SIGMAS)
    steps = Input(INT, default=2, min=1, max=100)
    start_at_sigma = Input(FLOAT, default=-1.0, min=-1.0, max=20000.0, step=0.01, round=False)
    end_at_sigma = Input(FLOAT, default=12.0, min=0.0, max=20000.0, step=0.01, round=False)
    spacing = Input(COMBO, choices=["linear", "cosine", "sine"])
    outputs = (Output(SIGMAS),)

    def execute(self, sigmas: torch.Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                spacing: str) -> tuple:
        return (sg.extend_intermediate(sigmas, steps, start_at_sigma, end_at_sigma, spacing),)


class SamplingPercentToSigma(Node):
    """The model's sigma at a fraction of the schedule (0 = start, 1 = end)."""

    category = "sampling/custom_sampling/sigmas"
    model = Input(MODEL)
    sampling_percent = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.0001)
    return_actual_sigma = Input(BOOLEAN, default=False, tooltip=(
        "Return the actual sigma value instead of the value used for interval checks.\n"
        "This only affects results at 0.0 and 1.0."))
    outputs = (Output(FLOAT, "sigma_value"),)

    def execute(self, model, sampling_percent: float, return_actual_sigma: bool) -> tuple:
        ms = require_sampling_model(model, "SamplingPercentToSigma.model").model_sampling
        value = ms.percent_to_sigma(sampling_percent)
        if return_actual_sigma:
            if sampling_percent == 0.0:
                value = float(ms.sigma_max)
            elif sampling_percent == 1.0:
                value = float(ms.sigma_min)
        return (float(value),)
