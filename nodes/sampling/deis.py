"""DEIS coefficients (Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator").

The sampler in :mod:`.samplers` needs, for each step, the weights of the current and past ODE
derivatives. ``tab`` integrates the Lagrange basis polynomials against the VP exponential-integrator
kernel numerically (the sigmas mapped to VP time through an EDM-fitted VP schedule); ``rhoab``
integrates the polynomials alone, in closed form.
"""

from __future__ import annotations

import torch


def _edm_to_vp_time(sigmas: torch.Tensor, eps_s: float = 1e-3, sigma_min: float = 0.002, sigma_max: float = 80.0):
    """VP times of the sigmas, and the (beta_0, beta_1) of the VP schedule fitted to EDM's range."""
    log_min = torch.log(torch.tensor(sigma_min) ** 2 + 1)  # float32, as the reference implementation
    log_max = torch.log(torch.tensor(sigma_max) ** 2 + 1)
    beta_d_t = 2 * (log_min / eps_s - log_max) / (eps_s - 1)
    beta_min_t = log_max - 0.5 * beta_d_t
    s = sigmas.detach().cpu()
    t = ((beta_min_t ** 2 + 2 * beta_d_t * (s ** 2 + 1).log()).sqrt() - beta_min_t) / beta_d_t
    return t, beta_min_t, beta_d_t + beta_min_t


def _lagrange(prev_t: torch.Tensor, j: int, taus: torch.Tensor) -> torch.Tensor:
    poly = 1
    for k in range(prev_t.shape[0]):
        if k != j:
            poly = poly * (taus - prev_t[k]) / (prev_t[j] - prev_t[k])
    return poly


def _kernel(beta_0: torch.Tensor, beta_1: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """-1/2 · dlog(alpha)/dtau / sqrt(alpha (1 - alpha)) for alpha(t) = exp(-t²(b1-b0)/2 - t b0)."""
    alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
    d_log_alpha = -taus * (beta_1 - beta_0) - beta_0
    return -0.5 * d_log_alpha / torch.sqrt(alpha * (1 - alpha))


def deis_coefficients(sigmas: torch.Tensor, max_order: int, n: int = 10000, deis_mode: str = "tab") -> list:
    """Per step, the weights ``[current, previous, …]`` (an empty list for first-order steps)."""
    if deis_mode == "tab":
        t_steps, beta_0, beta_1 = _edm_to_vp_time(sigmas)
        out: list = []
        for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
            order = min(i + 1, max_order)
            if order == 1:
                out.append([])
                continue
            taus = torch.linspace(t_cur, t_next, n)
            dtau = (t_next - t_cur) / n
            prev_t = t_steps[[i - k for k in range(order)]]
            kernel = _kernel(beta_0, beta_1, taus)
            out.append([torch.sum(kernel * _lagrange(prev_t, j, taus)) * dtau for j in range(order)])
        return out
    if deis_mode == "rhoab":
        t_steps = sigmas

        def integral_2(a, b, start, end, c):
            coeff = (end ** 3 - start ** 3) / 3 - (end ** 2 - start ** 2) * (a + b) / 2 + (end - start) * a * b
            return coeff / ((c - a) * (c - b))

        def integral_3(a, b, c, start, end, d):
            coeff = (end ** 4 - start ** 4) / 4 - (end ** 3 - start ** 3) * (a + b + c) / 3 \
                + (end ** 2 - start ** 2) * (a * b + a * c + b * c) / 2 - (end - start) * a * b * c
            return coeff / ((d - a) * (d - b) * (d - c))

        out = []
        for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
            order = min(i, max_order)
            if order == 0:
                out.append([])
                continue
            p = t_steps[[i - k for k in range(order + 1)]]
            if order == 1:
                out.append([((t_next - p[1]) ** 2 - (t_cur - p[1]) ** 2) / (2 * (t_cur - p[1])),
                            (t_next - t_cur) ** 2 / (2 * (p[1] - t_cur))])
            elif order == 2:
                out.append([integral_2(p[1], p[2], t_cur, t_next, t_cur), integral_2(t_cur, p[2], t_cur, t_next, p[1]),
                            integral_2(t_cur, p[1], t_cur, t_next, p[2])])
            else:
                out.append([integral_3(p[1], p[2], p[3], t_cur, t_next, t_cur),
                            integral_3(t_cur, p[2], p[3], t_cur, t_next, p[1]),
                            integral_3(t_cur, p[1], p[3], t_cur, t_next, p[2]),
                            integral_3(t_cur, p[1], p[2], t_cur, t_next, p[3])])
        return out
    raise ValueError(f"deis_mode must be 'tab' or 'rhoab', not {deis_mode!r}")
