"""DPM-Solver (Lu et al. 2022) in its own time t = -log(sigma): ``dpm_fast`` (fixed steps of orders 3/2/1
filling a budget of model evaluations) and ``dpm_adaptive`` (embedded orders 1/2 or 2/3 with a PID
step-size controller). Both ignore the schedule's inner sigmas: they run from its first sigma to its
last non-zero one.
"""

from __future__ import annotations

import math

import torch

from nodegraph_nodes.sampling.noise import gaussian_noise_sampler
from nodegraph_nodes.sampling.samplers import StepInfo, ancestral_step


class _PID:
    """A PID controller for the step size (Söderlind's digital filters)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose(self, error) -> bool:
        inv = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


class _Solver:
    def __init__(self, model, callback):
        self.model = model
        self.callback = callback

    @staticmethod
    def t(sigma):
        return -sigma.log()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, cache, key, x, t):
        if key in cache:
            return cache[key], cache
        sigma = self.sigma(t) * x.new_ones([x.shape[0]])
        eps = (x - self.model(x, sigma)) / self.sigma(t)
        return eps, {key: eps, **cache}

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * eps, cache

    def step_2(self, x, t, t_next, r1=1 / 2, cache=None):
        cache = {} if cache is None else cache
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, cache = self.eps(cache, "eps_r1", u1, s1)
        x_2 = x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        return x_2, cache

    def step_3(self, x, t, t_next, r1=1 / 3, r2=2 / 3, cache=None):
        cache = {} if cache is None else cache
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, cache = self.eps(cache, "eps_r1", u1, s1)
        u2 = x - self.sigma(s2) * (r2 * h).expm1() * eps \
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        eps_r2, cache = self.eps(cache, "eps_r2", u2, s2)
        x_3 = x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        return x_3, cache

    def ancestral_target(self, t, t_next, t_end, eta):
        """Where a step from ``t`` towards ``t_next`` lands (an ancestral step of strength ``eta``, never
        past ``t_end``) and the noise level it adds back."""
        if not eta:
            return t_next, 0.0
        sd, _ = ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_down = torch.minimum(t_end, self.t(sd))
        return t_down, (self.sigma(t_next) ** 2 - self.sigma(t_down) ** 2) ** 0.5

    def report(self, i, x, t, eps):
        if self.callback is not None:
            self.callback(StepInfo(i, x, self.sigma(t), x - self.sigma(t) * eps))


def _bounds(sigmas):
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    return sigma_min, sigmas[0]


def sample_dpm_fast(model, x, sigmas, *, callback=None, noise_sampler=None, eta=0.0, s_noise=1.0):
    """DPM-Solver-Fast with ``len(sigmas) - 1`` model evaluations."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _bounds(sigmas)
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("dpm_fast needs sigmas above 0")
    nfe = len(sigmas) - 1
    noise = noise_sampler if noise_sampler is not None else gaussian_noise_sampler(x, model.seed)
    solver = _Solver(model, callback)
    t_start, t_end = solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min))
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = solver.ancestral_target(t, t_next, t_end, eta)
        eps, cache = solver.eps(cache, "eps", x, t)
        solver.report(i, x, t, eps)
        if order == 1:
            x, cache = solver.step_1(x, t, t_next_, cache)
        elif order == 2:
            x, cache = solver.step_2(x, t, t_next_, cache=cache)
        else:
            x, cache = solver.step_3(x, t, t_next_, cache=cache)
        x = x + su * s_noise * noise(solver.sigma(t), solver.sigma(t_next))
    return x


def sample_dpm_adaptive(model, x, sigmas, *, callback=None, noise_sampler=None, order=3, rtol=0.05, atol=0.0078,
                        h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0):
    """DPM-Solver-12/23 with adaptive steps between the schedule's first and last non-zero sigma."""
    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    sigma_min, sigma_max = _bounds(sigmas)
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("dpm_adaptive needs sigmas above 0")
    noise = noise_sampler if noise_sampler is not None else gaussian_noise_sampler(x, model.seed)
    solver = _Solver(model, callback)
    t_start, t_end = solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min))
    forward = t_end > t_start
    if not forward and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    h_init = abs(h_init) * (1 if forward else -1)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    s = t_start
    x_prev = x
    pid = _PID(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    steps = 0
    while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        t_, su = solver.ancestral_target(s, t, t_end, eta)
        eps, cache = solver.eps(cache, "eps", x, s)
        solver.report(steps, x, s, eps)
        if order == 2:
            x_low, cache = solver.step_1(x, s, t_, cache)
            x_high, cache = solver.step_2(x, s, t_, cache=cache)
        else:
            x_low, cache = solver.step_2(x, s, t_, r1=1 / 3, cache=cache)
            x_high, cache = solver.step_3(x, s, t_, cache=cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose(error):
            x_prev = x_low
            x = x_high + su * s_noise * noise(solver.sigma(s), solver.sigma(t))
            s = t
        steps += 1
    return x
