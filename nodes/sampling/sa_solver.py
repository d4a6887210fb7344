"""SA-Solver (Xue et al., "Stochastic Adams Solver", NeurIPS 2023): a stochastic Adams predictor–corrector
in half-log-SNR time, data prediction. ``tau`` (the stochastic strength) is ``eta`` inside a sigma
interval and 0 outside (:func:`tau_interval`); ``use_pece`` re-evaluates the model after each corrector.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from nodegraph_nodes.sampling.noise import gaussian_noise_sampler
from nodegraph_nodes.sampling.samplers import StepInfo, half_log_snr, offset_first_sigma


def _exponential_coeffs(s: torch.Tensor, t: torch.Tensor, order: int, tau: float) -> torch.Tensor:
    """(1 + tau²) ∫_s^t e^{(1+tau²)x} x^p dx for p < order, with e^{(1+tau²)t} factored out (by parts)."""
    tau_mul = 1 + tau ** 2
    h = t - s
    p = torch.arange(order, dtype=s.dtype, device=s.device)
    product_terms = t ** p - s ** p * (-tau_mul * h).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_fact = (p + 1).lgamma()
    coeff = log_fact.unsqueeze(1) - log_fact.unsqueeze(0)
    if tau > 0:
        coeff = coeff - depth * math.log(tau_mul)
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    return (coeff.exp() * signs).tril() @ product_terms


def _simple_order2(sigma_next, lambdas, lambda_s, lambda_t, tau, corrector):
    tau_mul = 1 + tau ** 2
    h = lambda_t - lambda_s
    alpha_t = sigma_next * lambda_t.exp()
    if corrector:
        b_1 = alpha_t * (0.5 * tau_mul * h)
        b_2 = alpha_t * (-h * tau_mul).expm1().neg() - b_1
    else:
        b_2 = alpha_t * (0.5 * tau_mul * h ** 2) / (lambdas[-2] - lambda_s)
        b_1 = alpha_t * (-h * tau_mul).expm1().neg() - b_2
    return torch.stack([b_2, b_1])


def adams_coeffs(sigma_next, lambdas, lambda_s, lambda_t, tau: float, simple_order_2: bool = False,
                 corrector: bool = False) -> torch.Tensor:
    """The b_i weights of the past data predictions (one per entry of ``lambdas``)."""
    n = lambdas.shape[0]
    if simple_order_2 and n == 2:
        return _simple_order2(sigma_next, lambdas, lambda_s, lambda_t, tau, corrector)
    integrals = torch.linalg.solve(torch.vander(lambdas, n, increasing=True).T,
                                   _exponential_coeffs(lambda_s, lambda_t, n, tau))
    return sigma_next * lambda_t.exp() * integrals


def tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0) -> Callable:
    """``eta`` for sigmas in [end_sigma, start_sigma], else 0 (``eta <= 0``: an ODE everywhere)."""
    def tau(sigma) -> float:
        if eta <= 0:
            return 0.0
        sigma = sigma.item() if isinstance(sigma, torch.Tensor) else sigma
        return eta if start_sigma >= sigma >= end_sigma else 0.0
    return tau


def sample_sa_solver(model, x, sigmas, *, callback=None, noise_sampler=None, tau_func=None, s_noise=1.0,
                     predictor_order=3, corrector_order=4, use_pece=False, simple_order_2=False):
    if len(sigmas) <= 1:
        return x
    noise_fn = noise_sampler if noise_sampler is not None else gaussian_noise_sampler(x, model.seed)
    ms = model.model_sampling
    sigmas = offset_first_sigma(sigmas, ms)
    lambdas = half_log_snr(sigmas, ms)
    if tau_func is None:
        tau_func = tau_interval(ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8), eta=1.0)
    s_in = x.new_ones([x.shape[0]])
    max_order = max(predictor_order, corrector_order)
    x_pred = x
    h = 0.0
    tau_t = 0.0
    noise = 0.0
    preds: list[torch.Tensor] = []
    lower_to_end = sigmas[-1].item() == 0
    for i in range(len(sigmas) - 1):
        denoised = model(x_pred, sigmas[i] * s_in)
        if callback is not None:
            callback(StepInfo(i, x_pred, sigmas[i], denoised))
        preds = (preds + [denoised])[-max_order:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if lower_to_end:
            p_order = min(p_order, len(sigmas) - 2 - i)
            c_order = min(c_order, len(sigmas) - 1 - i)
        if c_order == 0:
            x = x_pred
        else:
            b = adams_coeffs(sigmas[i], lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i], tau_t,
                             simple_order_2, corrector=True)
            corr = torch.tensordot(torch.stack(preds[-c_order:], dim=1), b, dims=([1], [0]))
            x = sigmas[i] / sigmas[i - 1] * (-(tau_t ** 2) * h).exp() * x + corr
            if tau_t > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = model(x, sigmas[i] * s_in)
                preds[-1] = denoised
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            tau_t = tau_func(sigmas[i + 1])
            b = adams_coeffs(sigmas[i + 1], lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1], tau_t,
                             simple_order_2, corrector=False)
            pred = torch.tensordot(torch.stack(preds[-p_order:], dim=1), b, dims=([1], [0]))
            h = lambdas[i + 1] - lambdas[i]
            x_pred = sigmas[i + 1] / sigmas[i] * (-(tau_t ** 2) * h).exp() * x + pred
            if tau_t > 0 and s_noise > 0:
                noise = noise_fn(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
                noise = noise * (-2 * tau_t ** 2 * h).expm1().neg().sqrt() * s_noise
                x_pred = x_pred + noise
    return x


def sample_sa_solver_pece(model, x, sigmas, **kw):
    """SA-Solver in PECE mode (predict, evaluate, correct, evaluate)."""
    return sample_sa_solver(model, x, sigmas, **{**kw, "use_pece": True})
