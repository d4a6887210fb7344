"""UniPC (Zhao et al. 2023): the unified predictor–corrector multistep solver, data prediction, with the
B(h) = h (``bh1``) or B(h) = e^h - 1 (``bh2``) variants — ComfyUI's ``uni_pc`` / ``uni_pc_bh2``.

It runs in the variance-preserving latent (``x_vp = x / sqrt(1 + sigma^2)``) with the sigma itself as
its time variable; a final sigma of 0 is replaced by 0.001 and the result scaled back at the end. The
order is ``min(3, steps - 1)``, lowered on the final steps; the last step has no corrector.
"""

from __future__ import annotations

import torch

from nodegraph_nodes.sampling.samplers import StepInfo


def _log_alpha(sigma):
    return 0.5 * torch.log(1 / (sigma * sigma + 1))


def _alpha(sigma):
    return torch.exp(_log_alpha(sigma))


def _std(sigma):
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma):
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _expand(v: torch.Tensor, dims: int) -> torch.Tensor:
    return v[(...,) + (None,) * (dims - 1)]


class _UniPC:
    def __init__(self, model, variant: str):
        self.model = model
        self.variant = variant

    def data_prediction(self, x, t):
        """x0 from the denoiser, for a VP latent ``x`` at sigma ``t`` (one per row)."""
        sig = _expand(t, x.dim())
        x_in = x * ((sig ** 2 + 1.0) ** 0.5)
        eps = (x_in - self.model(x_in, t)) / sig
        return (x - _expand(_std(t), x.dim()) * eps) / _expand(_alpha(t), x.dim())

    def update(self, x, model_prev, t_prev, t, order, use_corrector=True):
        if len(t.shape) == 0:
            t = t.view(-1)
        dims = x.dim()
        t_prev_0 = t_prev[-1]
        lambda_prev_0, lambda_t = _lambda(t_prev_0), _lambda(t)
        model_prev_0 = model_prev[-1]
        sigma_prev_0, sigma_t = _std(t_prev_0), _std(t)
        alpha_t = torch.exp(_log_alpha(t))
        h = lambda_t - lambda_prev_0

        rks, d1s = [], []
        for i in range(1, order):
            rk = ((_lambda(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks, device=x.device)

        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        r_rows, b = [], []
        for i in range(1, order + 1):
            r_rows.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_mat = torch.stack(r_rows)
        b = torch.tensor(b, device=x.device)

        use_predictor = len(d1s) > 0
        if d1s:
            d1s = torch.stack(d1s, dim=1)
            rhos_p = torch.tensor([0.5], device=b.device) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
        else:
            d1s = None
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=b.device) if order == 1 else torch.linalg.solve(r_mat, b)

        x_t_ = _expand(sigma_t / sigma_prev_0, dims) * x - _expand(alpha_t * h_phi_1, dims) * model_prev_0
        pred_res = torch.tensordot(d1s, rhos_p, dims=([1], [0])) if use_predictor else 0
        x_t = x_t_ - _expand(alpha_t * b_h, dims) * pred_res
        model_t = None
        if use_corrector:
            model_t = self.data_prediction(x_t, t)
            corr_res = torch.tensordot(d1s, rhos_c[:-1], dims=([1], [0])) if d1s is not None else 0
            x_t = x_t_ - _expand(alpha_t * b_h, dims) * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
        return x_t, model_t

    def sample(self, x, timesteps, order, callback):
        steps = len(timesteps) - 1
        batch = x.shape[0]
        model_prev: list = []
        t_prev: list = []
        for step_index in range(steps):
            if step_index == 0:
                vec_t = timesteps[0].expand((batch,))
                model_prev = [self.data_prediction(x, vec_t)]
                t_prev = [vec_t]
            elif step_index < order:
                vec_t = timesteps[step_index].expand(batch)
                x, model_x = self.update(x, model_prev, t_prev, vec_t, step_index, use_corrector=True)
                if model_x is None:
                    model_x = self.data_prediction(x, vec_t)
                model_prev.append(model_x)
                t_prev.append(vec_t)
            else:
                last = step_index + (2 if step_index == steps - 1 else 1)
                for step in range(step_index, last):
                    vec_t = timesteps[step].expand(batch)
                    step_order = min(order, steps + 1 - step)
                    x, model_x = self.update(x, model_prev, t_prev, vec_t, step_order, use_corrector=step != steps)
                    for i in range(order - 1):
                        t_prev[i] = t_prev[i + 1]
                        model_prev[i] = model_prev[i + 1]
                    t_prev[-1] = vec_t
                    if step < steps:
                        if model_x is None:
                            model_x = self.data_prediction(x, vec_t)
                        model_prev[-1] = model_x
            if callback is not None:
                callback(StepInfo(step_index, x, timesteps[step_index], model_prev[-1]))
        return x


def sample_unipc(model, x, sigmas, *, callback=None, noise_sampler=None, variant: str = "bh1"):
    """UniPC over ``sigmas`` (``x`` is the noisy latent at ``sigmas[0]``)."""
    timesteps = sigmas.clone()
    if timesteps[-1] == 0:
        timesteps[-1] = 0.001
    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    order = min(3, len(timesteps) - 2)
    x = _UniPC(model, variant).sample(x, timesteps, order, callback)
    return x / _alpha(timesteps[-1])


def sample_unipc_bh2(model, x, sigmas, *, callback=None, noise_sampler=None):
    return sample_unipc(model, x, sigmas, callback=callback, variant="bh2")
