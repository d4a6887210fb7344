"""Sampler step functions in sigma space, and the ``SAMPLER`` values that name them.

Every sampler is ``fn(model, x, sigmas, *, callback=None, noise_sampler=None, **options) -> x`` where
``model`` is a :class:`Denoiser` (noisy latent and sigma → denoised latent; it knows the model's
:class:`~nodegraph_nodes.sampling.model_sampling.ModelSampling` and the run's seed) and ``x`` is the
starting latent at ``sigmas[0]``. The algorithms are k-diffusion's (Katherine Crowson, MIT) and the
ones ComfyUI adds (DPM-Solver++ SDE variants, CFG++, iPNDM, DEIS, RES multistep, gradient
estimation, ER-SDE, SEEDS), written from their papers' update rules and ComfyUI's behaviour; longer
solvers live beside this module (:mod:`.dpm_solver`, :mod:`.unipc`, :mod:`.sa_solver`, :mod:`.deis`).

Flow-matching models (``model_sampling.is_flow``) take the "RF" form of the ancestral samplers and
their half-log-SNR is ``log((1 - sigma) / sigma)``.

:data:`SAMPLER_NAMES` is ComfyUI's KSampler list (same order) and :func:`sampler_object` makes the
``SAMPLER`` value for a name with options (the ``Sampler…`` nodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from nodegraph_nodes.sampling.model_sampling import ModelSampling
from nodegraph_nodes.sampling.noise import BrownianTreeNoiseSampler, NoiseSampler, gaussian_noise_sampler


class Denoiser(Protocol):
    """What a sampler calls: ``model(x, sigma)`` → the denoised latent (``sigma`` has one entry per row)."""

    model_sampling: ModelSampling
    seed: int | None
    #: the unguided (negative) prediction of the last call, once :meth:`track_uncond` was called
    uncond_denoised: torch.Tensor | None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def track_uncond(self) -> None:
        """From now on compute and keep the negative prediction, even at cfg 1 (CFG++ samplers)."""


@dataclass
class StepInfo:
    """What a sampler reports after each model evaluation of a step."""

    i: int
    x: torch.Tensor
    sigma: torch.Tensor
    denoised: torch.Tensor


Callback = Callable[[StepInfo], None]


# -- helpers ---------------------------------------------------------------------------------------

def to_d(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's derivative dx/dsigma."""
    sigma = torch.as_tensor(sigma)
    return (x - denoised) / sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """The sigma to step down to and the noise to add back for an ancestral step of strength ``eta``."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def half_log_snr(sigma: torch.Tensor, ms: ModelSampling) -> torch.Tensor:
    """log(alpha / sigma): ``-log sigma``, or ``log((1 - sigma) / sigma)`` for flow matching."""
    return sigma.logit().neg() if ms.is_flow else sigma.log().neg()


def sigma_of_half_log_snr(lam: torch.Tensor, ms: ModelSampling) -> torch.Tensor:
    return lam.neg().sigmoid() if ms.is_flow else lam.neg().exp()


def offset_first_sigma(sigmas: torch.Tensor, ms: ModelSampling, percent_offset: float = 1e-4) -> torch.Tensor:
    """A flow schedule starting at sigma 1 has an infinite log-SNR: start just below it."""
    if len(sigmas) <= 1 or not ms.is_flow or sigmas[0] < 1:
        return sigmas
    sigmas = sigmas.clone()
    sigmas[0] = ms.percent_to_sigma(percent_offset)
    return sigmas


def _noise(model: Denoiser, x: torch.Tensor, noise_sampler: NoiseSampler | None) -> NoiseSampler:
    return noise_sampler if noise_sampler is not None else gaussian_noise_sampler(x, model.seed)


def _brownian(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise_sampler, cpu: bool = True):
    if noise_sampler is not None:
        return noise_sampler
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=model.seed, cpu=cpu)


def _report(callback, i, x, sigma, denoised) -> None:
    if callback is not None:
        callback(StepInfo(i, x, sigma, denoised))


def _ones(x: torch.Tensor) -> torch.Tensor:
    return x.new_ones([x.shape[0]])


def _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise):
    """Karras' stochastic churn: raise sigma by ``gamma`` and add the matching noise."""
    gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_churn > 0 and s_tmin <= sigmas[i] <= s_tmax else 0.0
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def _churned_eval(model, x, sigmas, i, s_in, callback, s_churn, s_tmin, s_tmax, s_noise):
    """Churn step ``i``'s sigma, evaluate the model there and report: ``(x, sigma_hat, denoised, d)``."""
    x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
    denoised = model(x, sigma_hat * s_in)
    d = to_d(x, sigma_hat, denoised)
    _report(callback, i, x, sigmas[i], denoised)
    return x, sigma_hat, denoised, d


def _push_history(history: list[torch.Tensor], d: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The multistep history with ``d`` appended, its oldest entry dropped once it holds ``size``."""
    return history[1:] + [d] if len(history) == size else history + [d]


# -- Euler / Heun / DPM-2 / LMS ----------------------------------------------------------------------

def sample_euler(model, x, sigmas, *, callback=None, noise_sampler=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """Euler steps of the probability-flow ODE (Karras et al. 2022, algorithm 2 without the 2nd order)."""
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat, denoised, d = _churned_eval(model, x, sigmas, i, s_in, callback, s_churn, s_tmin, s_tmax,
                                                  s_noise)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def _rf_ancestral_parts(sigma, sigma_next, eta):
    """Flow matching's ancestral step: the sigma to step down to, and the renoise coefficient."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


def sample_euler_ancestral(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """Euler steps down to sigma_down, then fresh noise up to the next sigma."""
    noise = _noise(model, x, noise_sampler)
    s_in = _ones(x)
    flow = model.model_sampling.is_flow
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        if flow:
            if sigmas[i + 1] == 0:
                x = denoised
                continue
            sigma_down, rescale, renoise = _rf_ancestral_parts(sigmas[i], sigmas[i + 1], eta)
            ratio = sigma_down / sigmas[i]
            x = ratio * x + (1 - ratio) * denoised
            if eta > 0:
                x = rescale * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
            continue
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_heun(model, x, sigmas, *, callback=None, noise_sampler=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Heun's second-order method (Karras et al. 2022, algorithm 2); the last step to 0 is Euler."""
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat, denoised, d = _churned_eval(model, x, sigmas, i, s_in, callback, s_churn, s_tmin, s_tmax,
                                                  s_noise)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in))
            x = x + (d + d_2) / 2 * dt
    return x


def sample_heunpp2(model, x, sigmas, *, callback=None, noise_sampler=None, s_churn=0.0, s_tmin=0.0,
                   s_tmax=float("inf"), s_noise=1.0):
    """Heun++: up to three evaluations per step, weighted by the sigmas they were taken at."""
    s_in = _ones(x)
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = torch.randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in))
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in))
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2] * s_in))
            w = 3 * sigmas[0]
            w2, w3 = sigmas[i + 1] / w, sigmas[i + 2] / w
            x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


def sample_dpm_2(model, x, sigmas, *, callback=None, noise_sampler=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 flavoured midpoint steps (the midpoint in log sigma)."""
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat, denoised, d = _churned_eval(model, x, sigmas, i, s_in, callback, s_churn, s_tmin, s_tmax,
                                                  s_noise)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


def sample_dpm_2_ancestral(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM-2 midpoint steps down to sigma_down, then fresh noise."""
    noise = _noise(model, x, noise_sampler)
    s_in = _ones(x)
    flow = model.model_sampling.is_flow
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if flow:
            sigma_down, rescale, sigma_up = _rf_ancestral_parts(sigmas[i], sigmas[i + 1], eta)
        else:
            sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
            rescale = None
        _report(callback, i, x, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigma_down - sigmas[i])
            if rescale is None:
                x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
            else:
                x = rescale * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _lms_coeff(order: int, t, i: int, j: int) -> float:
    from scipy import integrate

    def basis(tau):
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


def sample_lms(model, x, sigmas, *, callback=None, noise_sampler=None, order=4):
    """Linear multistep: the derivative's Lagrange polynomial over the last ``order`` steps, integrated."""
    s_in = _ones(x)
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur = min(i + 1, order)
            coeffs = [_lms_coeff(cur, sigmas_cpu, i, j) for j in range(cur)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


# -- DPM-Solver++ family -------------------------------------------------------------------------------

def _t(sigma):
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


def sample_dpmpp_2s_ancestral(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S) single steps down to sigma_down, then fresh noise."""
    noise = _noise(model, x, noise_sampler)
    s_in = _ones(x)
    if model.model_sampling.is_flow:
        return _dpmpp_2s_ancestral_flow(model, x, sigmas, callback, noise, eta, s_noise)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, _sigma(s) * s_in)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _dpmpp_2s_ancestral_flow(model, x, sigmas, callback, noise, eta, s_noise):
    s_in = _ones(x)

    def lam(sigma):
        return ((1 - sigma) / sigma).log()

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, rescale, renoise = _rf_ancestral_parts(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            if sigmas[i] == 1.0:
                sigma_s = 0.9999
            else:
                t_i, t_down = lam(sigmas[i]), lam(sigma_down)
                sigma_s = ((t_i + (t_down - t_i) / 2).exp() + 1) ** -1
            ratio = sigma_s / sigmas[i]
            u = ratio * x + (1 - ratio) * denoised
            d_i = model(u, sigma_s * s_in)
            ratio = sigma_down / sigmas[i]
            x = ratio * x + (1 - ratio) * d_i
        if sigmas[i + 1] > 0 and eta > 0:
            x = rescale * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


def sample_dpmpp_sde(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0, r=1 / 2,
                     cpu_noise=True):
    """DPM-Solver++ (stochastic): two evaluations per step, Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    noise = _brownian(model, x, sigmas, noise_sampler, cpu_noise)
    s_in = _ones(x)
    ms = model.model_sampling
    sigmas = offset_first_sigma(sigmas, ms)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        fac = 1 / (2 * r)
        sigma_s_1 = sigma_of_half_log_snr(lambda_s_1, ms)
        alpha_s = sigmas[i] * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s_1 * noise(sigmas[i], sigma_s_1) * s_noise * su
        denoised_2 = model(x_2, sigma_s_1 * s_in)
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


def sample_dpmpp_2m(model, x, sigmas, *, callback=None, noise_sampler=None):
    """DPM-Solver++(2M): second-order multistep in log sigma; first and last steps first order."""
    s_in = _ones(x)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def _sde_multistep_first_order(x, denoised, sigma, sigma_next, ms: ModelSampling, eta):
    """The first-order part of a DPM-Solver++ multistep SDE step: ``(x, h, h_eta, alpha_t)``."""
    lambda_s, lambda_t = half_log_snr(sigma, ms), half_log_snr(sigma_next, ms)
    h = lambda_t - lambda_s
    h_eta = h * (eta + 1)
    alpha_t = sigma_next * lambda_t.exp()
    x = sigma_next / sigma * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
    return x, h, h_eta, alpha_t


def _sde_multistep_noise(noise, sigma, sigma_next, h, eta, s_noise):
    """The fresh noise a DPM-Solver++ multistep SDE step adds."""
    return noise(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise


def sample_dpmpp_2m_sde(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0,
                        solver_type="midpoint", cpu_noise=True):
    """DPM-Solver++(2M) SDE (midpoint or Heun correction), Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    noise = _brownian(model, x, sigmas, noise_sampler, cpu_noise)
    s_in = _ones(x)
    ms = model.model_sampling
    sigmas = offset_first_sigma(sigmas, ms)
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x, h, h_eta, alpha_t = _sde_multistep_first_order(x, denoised, sigmas[i], sigmas[i + 1], ms, eta)
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + _sde_multistep_noise(noise, sigmas[i], sigmas[i + 1], h, eta, s_noise)
        old_denoised = denoised
        h_last = h
    return x


def sample_dpmpp_2m_sde_heun(model, x, sigmas, **kw):
    """DPM-Solver++(2M) SDE with the Heun correction."""
    return sample_dpmpp_2m_sde(model, x, sigmas, **{"solver_type": "heun", **kw})


def sample_dpmpp_3m_sde(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0,
                        cpu_noise=True):
    """DPM-Solver++(3M) SDE: third-order multistep with Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    noise = _brownian(model, x, sigmas, noise_sampler, cpu_noise)
    s_in = _ones(x)
    ms = model.model_sampling
    sigmas = offset_first_sigma(sigmas, ms)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x, h, h_eta, alpha_t = _sde_multistep_first_order(x, denoised, sigmas[i], sigmas[i + 1], ms, eta)
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * ((denoised - denoised_1) / (h_1 / h))
            if eta > 0 and s_noise > 0:
                x = x + _sde_multistep_noise(noise, sigmas[i], sigmas[i + 1], h, eta, s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# -- DDPM / LCM ----------------------------------------------------------------------------------------

def sample_ddpm(model, x, sigmas, *, callback=None, noise_sampler=None):
    """DDPM's ancestral posterior step, taken in the variance-preserving latent."""
    noise = _noise(model, x, noise_sampler)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma ** 2.0)
        ac = 1 / (sigma * sigma + 1)
        ac_prev = 1 / (sigma_prev * sigma_prev + 1)
        alpha = ac / ac_prev
        mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - ac).sqrt())
        if sigma_prev > 0:
            mu = mu + ((1 - alpha) * (1.0 - ac_prev) / (1.0 - ac)).sqrt() * noise(sigma, sigma_prev)
        x = mu
        if sigma_prev != 0:
            x = x * torch.sqrt(1.0 + sigma_prev ** 2.0)
    return x


def sample_lcm(model, x, sigmas, *, callback=None, noise_sampler=None, s_noise=1.0, s_noise_end=None,
               noise_clip_std=0.0):
    """Latent consistency: jump to the denoised latent, re-noise to the next sigma. ``s_noise`` ramps
    linearly to ``s_noise_end`` over the run; ``noise_clip_std > 0`` clamps the fresh noise to that many
    standard deviations."""
    noise = _noise(model, x, noise_sampler)
    s_in = _ones(x)
    steps = len(sigmas) - 1
    end = s_noise if s_noise_end is None else s_noise_end
    for i in range(steps):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            fresh = noise(sigmas[i], sigmas[i + 1])
            if noise_clip_std > 0:
                limit = noise_clip_std * fresh.std()
                fresh = fresh.clamp(-limit, limit)
            scale = s_noise + (end - s_noise) * (i / max(steps - 1, 1))
            if scale != 1.0:
                fresh = fresh * scale
            x = model.model_sampling.noise_scaling(sigmas[i + 1], fresh, x)
    return x


# -- multistep (iPNDM, DEIS) ---------------------------------------------------------------------------

def _ipndm(model, x, sigmas, callback, max_order, variable):
    s_in = _ones(x)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in)
        _report(callback, i, x, t_cur, denoised)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        dt = t_next - t_cur
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + dt * d_cur
        elif not variable:
            weights = {2: (3, -1), 3: (23, -16, 5), 4: (55, -59, 37, -9)}[order]
            div = {2: 2, 3: 12, 4: 24}[order]
            terms = [d_cur] + history[::-1][:order - 1]
            x_next = x + dt * sum(w * d for w, d in zip(weights, terms)) / div
        else:
            x_next = x + dt * _ipndm_v_combination(sigmas, i, order, d_cur, history)
        history = _push_history(history, d_cur, max_order - 1)
        x = x_next
    return x


def _ipndm_v_combination(t, i, order, d_cur, history):
    """The variable-step iPNDM weights (Zhang & Chen's diff-solvers) for orders 2–4."""
    h_n = t[i + 1] - t[i]
    h_n_1 = t[i] - t[i - 1]
    if order == 2:
        c1 = (2 + h_n / h_n_1) / 2
        c2 = -(h_n / h_n_1) / 2
        return c1 * d_cur + c2 * history[-1]
    h_n_2 = t[i - 1] - t[i - 2]
    temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
    if order == 3:
        c1 = (2 + h_n / h_n_1) / 2 + temp1
        c2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1
        c3 = temp1 * h_n_1 / h_n_2
        return c1 * d_cur + c2 * history[-1] + c3 * history[-2]
    h_n_3 = t[i - 2] - t[i - 3]
    temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2
             + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))) \
        * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
    ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
    c1 = (2 + h_n / h_n_1) / 2 + temp1 + temp2
    c2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + h_n_1 / h_n_2 + ratio) * temp2
    c3 = temp1 * h_n_1 / h_n_2 + (h_n_1 / h_n_2 + ratio * (1 + h_n_2 / h_n_3)) * temp2
    c4 = -temp2 * ratio * h_n_1 / h_n_2
    return c1 * d_cur + c2 * history[-1] + c3 * history[-2] + c4 * history[-3]


def sample_ipndm(model, x, sigmas, *, callback=None, noise_sampler=None, max_order=4):
    """Improved PNDM: Adams–Bashforth on the ODE derivative with fixed weights (orders 1–4)."""
    return _ipndm(model, x, sigmas, callback, max_order, variable=False)


def sample_ipndm_v(model, x, sigmas, *, callback=None, noise_sampler=None, max_order=4):
    """iPNDM with weights for variable step sizes."""
    return _ipndm(model, x, sigmas, callback, max_order, variable=True)


def sample_deis(model, x, sigmas, *, callback=None, noise_sampler=None, max_order=3, deis_mode="tab"):
    """DEIS (Zhang & Chen): exponential-integrator multistep with precomputed coefficients."""
    from nodegraph_nodes.sampling.deis import deis_coefficients

    s_in = _ones(x)
    coeffs = deis_coefficients(sigmas, max_order, deis_mode=deis_mode)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in)
        _report(callback, i, x, t_cur, denoised)
        d_cur = (x - denoised) / t_cur
        order = 1 if t_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        else:
            c = coeffs[i]
            x_next = x + c[0] * d_cur
            for k in range(1, order):
                x_next = x_next + c[k] * history[-k]
        history = _push_history(history, d_cur, max_order - 1)
        x = x_next
    return x


# -- CFG++ (guidance applied to the noise direction of the unguided prediction) -----------------------

def sample_euler_ancestral_cfg_pp(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """Euler ancestral with CFG++ (Chung et al. 2024): renoise along the unconditional prediction."""
    noise = _noise(model, x, noise_sampler)
    model.track_uncond()
    ms = model.model_sampling
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * half_log_snr(sigmas[i], ms).exp()
        alpha_t = sigmas[i + 1] * half_log_snr(sigmas[i + 1], ms).exp()
        d = to_d(x, sigmas[i], alpha_s * model.uncond_denoised)
        sigma_down, sigma_up = ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
        x = alpha_t * denoised + alpha_t * sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_euler_cfg_pp(model, x, sigmas, *, callback=None, noise_sampler=None):
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, callback=callback, noise_sampler=noise_sampler,
                                         eta=0.0, s_noise=0.0)


def sample_euler_cfg_pp_alternative(model, x, sigmas, *, callback=None, noise_sampler=None):
    """Euler whose derivative is corrected by the guidance difference (SamplerEulerCFG++ "alternative")."""
    model.track_uncond()
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x - denoised + model.uncond_denoised, sigmas[i], denoised)
        _report(callback, i, x, sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    noise = _noise(model, x, noise_sampler)
    model.track_uncond()
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond = model.uncond_denoised
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * (x + (denoised - uncond)) - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, _sigma(s) * s_in)  # (as ComfyUI: the step uses this call's negative)
            x = (_sigma(t_next) / _sigma(t)) * (x + (denoised - model.uncond_denoised)) - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_dpmpp_2m_cfg_pp(model, x, sigmas, *, callback=None, noise_sampler=None):
    model.track_uncond()
    s_in = _ones(x)
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond = model.uncond_denoised
        _report(callback, i, x, sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * uncond
        else:
            r = (t - _t(sigmas[i - 1])) / h
            mix = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x


# -- RES multistep, gradient estimation, ER-SDE, SEEDS ---------------------------------------------------

def _res_multistep(model, x, sigmas, callback, noise_sampler, s_noise, eta, cfg_pp):
    noise = _noise(model, x, noise_sampler)
    if cfg_pp:
        model.track_uncond()
    s_in = _ones(x)

    def phi1(t):
        return torch.expm1(t) / t

    def phi2(t):
        return (phi1(t) - 1.0) / t

    old_sigma_down = old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond = model.uncond_denoised if cfg_pp else None
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], denoised)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_old, t_next, t_prev = _t(sigmas[i]), _t(old_sigma_down), _t(sigma_down), _t(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            p1, p2 = phi1(-h), phi2(-h)
            b1 = torch.nan_to_num(p1 - p2 / c2, nan=0.0)
            b2 = torch.nan_to_num(p2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
                x = _sigma(h) * x + h * (b1 * uncond + b2 * old_denoised)
            else:
                x = _sigma(h) * x + h * (b1 * denoised + b2 * old_denoised)
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = uncond if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


def sample_res_multistep(model, x, sigmas, *, callback=None, noise_sampler=None, s_noise=1.0):
    """RES second-order multistep (Zhang et al. 2023)."""
    return _res_multistep(model, x, sigmas, callback, noise_sampler, s_noise, 0.0, False)


def sample_res_multistep_cfg_pp(model, x, sigmas, *, callback=None, noise_sampler=None, s_noise=1.0):
    return _res_multistep(model, x, sigmas, callback, noise_sampler, s_noise, 0.0, True)


def sample_res_multistep_ancestral(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    return _res_multistep(model, x, sigmas, callback, noise_sampler, s_noise, eta, False)


def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0,
                                          s_noise=1.0):
    return _res_multistep(model, x, sigmas, callback, noise_sampler, s_noise, eta, True)


def sample_gradient_estimation(model, x, sigmas, *, callback=None, noise_sampler=None, ge_gamma=2.0, cfg_pp=False):
    """Euler plus a correction from the change of the derivative (Permenter & Yuan)."""
    if cfg_pp:
        model.track_uncond()
    s_in = _ones(x)
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], model.uncond_denoised if cfg_pp else denoised)
        _report(callback, i, x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def sample_gradient_estimation_cfg_pp(model, x, sigmas, *, callback=None, noise_sampler=None, ge_gamma=2.0):
    return sample_gradient_estimation(model, x, sigmas, callback=callback, ge_gamma=ge_gamma, cfg_pp=True)


def _er_sde_default_scaler(x):
    return x * ((x ** 0.3).exp() + 10.0)


def sample_er_sde(model, x, sigmas, *, callback=None, noise_sampler=None, s_noise=1.0, noise_scaler=None,
                  max_stage=3):
    """Extended reverse-time SDE solver (Cui et al. 2023, VP ER-SDE-Solver-3)."""
    noise = _noise(model, x, noise_sampler)
    scaler = noise_scaler if noise_scaler is not None else _er_sde_default_scaler
    points = 200.0
    indices = torch.arange(0, points, dtype=torch.float32, device=x.device)
    ms = model.model_sampling
    sigmas = offset_first_sigma(sigmas, ms)
    er = half_log_snr(sigmas, ms).neg().exp()  # sigma_t / alpha_t
    s_in = _ones(x)
    old_denoised = old_denoised_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            er_s, er_t = er[i], er[i + 1]
            alpha_s, alpha_t = sigmas[i] / er_s, sigmas[i + 1] / er_t
            r = scaler(er_t) / scaler(er_s)
            x = (alpha_t / alpha_s) * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                dt = er_t - er_s
                step = -dt / points
                pos = er_t + indices * step
                scaled = scaler(pos)
                s = torch.sum(1 / scaled) * step
                denoised_d = (denoised - old_denoised) / (er_s - er[i - 1])
                x = x + alpha_t * (dt + s * scaler(er_t)) * denoised_d
                if stage >= 3:
                    s_u = torch.sum((pos - er_s) / scaled) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((er_s - er[i - 2]) / 2)
                    x = x + alpha_t * ((dt ** 2) / 2 + s_u * scaler(er_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * \
                    (er_t ** 2 - er_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
        old_denoised = denoised
    return x


def _phi1(h):
    return torch.expm1(h)


def _phi2(h):
    return (torch.expm1(h) - h) / h


def _carry_noise(sde_noise, seg, fresh):
    """SEEDS: the previous stage's noise decayed over ``seg``, plus the fresh noise that segment adds."""
    return sde_noise * seg.exp() + seg.mul(2).expm1().neg().sqrt() * fresh


def sample_seeds_2(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0, r=0.5,
                   solver_type="phi_1"):
    """SEEDS-2 (Gonzalez et al. 2023): stochastic exponential two-stage solver, data prediction.
    ``solver_type`` phi_1 combines the two predictions linearly (the default), phi_2 with the second
    exponential integrator coefficient (with r 1, eta 0: ComfyUI's exp_heun_2_x0)."""
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError(f"SEEDS-2 solver_type is {solver_type!r}; use 'phi_1' or 'phi_2'")
    noise = _noise(model, x, noise_sampler)
    inject = eta > 0 and s_noise > 0
    ms = model.model_sampling
    sigmas = offset_first_sigma(sigmas, ms)
    s_in = _ones(x)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_s_1 = sigma_of_half_log_snr(lambda_s_1, ms)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        x_2 = sigma_s_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_s_1 * _phi1(-r * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise(sigmas[i], sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = model(x_2, sigma_s_1 * s_in)
        if solver_type == "phi_1":
            denoised_d = torch.lerp(denoised, denoised_2, fac)
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * _phi1(-h_eta) * denoised_d
        else:
            b2 = _phi2(-h_eta) / r
            b1 = _phi1(-h_eta) - b2
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject:
            seg = (r - 1) * h * eta
            sde_noise = _carry_noise(sde_noise, seg, noise(sigma_s_1, sigmas[i + 1]))
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


def sample_seeds_3(model, x, sigmas, *, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0, r_1=1.0 / 3,
                   r_2=2.0 / 3):
    """SEEDS-3: the three-stage variant."""
    noise = _noise(model, x, noise_sampler)
    inject = eta > 0 and s_noise > 0
    ms = model.model_sampling
    sigmas = offset_first_sigma(sigmas, ms)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1, lambda_s_2 = torch.lerp(lambda_s, lambda_t, r_1), torch.lerp(lambda_s, lambda_t, r_2)
        sigma_s_1, sigma_s_2 = sigma_of_half_log_snr(lambda_s_1, ms), sigma_of_half_log_snr(lambda_s_2, ms)
        alpha_s_1, alpha_s_2 = sigma_s_1 * lambda_s_1.exp(), sigma_s_2 * lambda_s_2.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        x_2 = sigma_s_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_s_1 * _phi1(-r_1 * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise(sigmas[i], sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = model(x_2, sigma_s_1 * s_in)
        a3_2 = r_2 / r_1 * _phi2(-r_2 * h_eta)
        a3_1 = _phi1(-r_2 * h_eta) - a3_2
        x_3 = sigma_s_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_s_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            seg = (r_1 - r_2) * h * eta
            sde_noise = _carry_noise(sde_noise, seg, noise(sigma_s_1, sigma_s_2))
            x_3 = x_3 + sde_noise * sigma_s_2 * s_noise
        denoised_3 = model(x_3, sigma_s_2 * s_in)
        b3 = _phi2(-h_eta) / r_2
        b1 = _phi1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            seg = (r_2 - 1) * h * eta
            sde_noise = _carry_noise(sde_noise, seg, noise(sigma_s_2, sigmas[i + 1]))
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


# -- names → functions -----------------------------------------------------------------------------------

def _gpu_noise(fn):
    """A ``_gpu`` variant: the Brownian tree lives on the latent's device."""
    def run(model, x, sigmas, **kw):
        kw.setdefault("cpu_noise", False)
        return fn(model, x, sigmas, **kw)
    return run


def _lazy(module: str, name: str):
    def run(model, x, sigmas, **kw):
        import importlib

        return getattr(importlib.import_module(f"nodegraph_nodes.sampling.{module}"), name)(model, x, sigmas, **kw)
    return run


SAMPLER_FUNCTIONS: dict[str, Callable] = {
    "euler": sample_euler,
    "euler_cfg_pp": sample_euler_cfg_pp,
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": _lazy("dpm_solver", "sample_dpm_fast"),
    "dpm_adaptive": _lazy("dpm_solver", "sample_dpm_adaptive"),
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": _gpu_noise(sample_dpmpp_sde),
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": _gpu_noise(sample_dpmpp_2m_sde),
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": _gpu_noise(sample_dpmpp_2m_sde_heun),
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": _gpu_noise(sample_dpmpp_3m_sde),
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "deis": sample_deis,
    "res_multistep": sample_res_multistep,
    "res_multistep_cfg_pp": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": sample_gradient_estimation_cfg_pp,
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
    "sa_solver": _lazy("sa_solver", "sample_sa_solver"),
    "sa_solver_pece": _lazy("sa_solver", "sample_sa_solver_pece"),
    "ddim": sample_euler,
    "uni_pc": _lazy("unipc", "sample_unipc"),
    "uni_pc_bh2": _lazy("unipc", "sample_unipc_bh2"),
}

#: ComfyUI's KSampler sampler names, in its order
SAMPLER_NAMES = list(SAMPLER_FUNCTIONS)

#: algorithms only reachable through a ``Sampler…`` node
SAMPLER_FUNCTIONS["euler_cfg_pp_alternative"] = sample_euler_cfg_pp_alternative
SAMPLER_FUNCTIONS["lcm_upscale"] = _lazy("lcm_upscale", "sample_lcm_upscale")


#: samplers that add fresh noise as ``s_noise`` × unit noise: for a flow model trained with a noise scale
#: (HiDream-O1; ModelNoiseScale) their ``s_noise`` is multiplied by it, as ComfyUI's samplers do (LCM
#: re-noises through the model sampling's ``noise_scaling``, which applies the scale itself)
NOISE_SCALED = frozenset({
    "euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece"})


@dataclass(frozen=True)
class Sampler:
    """A ``SAMPLER`` value: an algorithm by name plus its options. ``random_inpaint_noise``: inpainting
    re-noises the kept region with noise drawn from ``seed + 1`` instead of the run's noise (ComfyUI's
    ``ddim``)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    random_inpaint_noise: bool = False

    def run(self, model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
            ) -> torch.Tensor:
        options = self.options
        scale = getattr(model.model_sampling, "noise_scale", 1.0)
        if scale != 1.0 and self.name in NOISE_SCALED:
            options = {**options, "s_noise": options.get("s_noise", 1.0) * scale}
        return SAMPLER_FUNCTIONS[self.name](model, x, sigmas, callback=callback, **options)


class SamplerChoiceError(ValueError):
    pass


def sampler_object(name: str, options: dict[str, Any] | None = None) -> Sampler:
    """The SAMPLER for a KSampler sampler name (options as the ``Sampler…`` nodes set them)."""
    if name not in SAMPLER_NAMES:
        raise SamplerChoiceError(f"unknown sampler {name!r}; choose one of {SAMPLER_NAMES}")
    return Sampler(name, dict(options or {}), random_inpaint_noise=name == "ddim")
