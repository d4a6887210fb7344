"""The sampler step functions equal diffusers' schedulers that implement the same algorithm.

Both sides drive the same tiny random SD 1.x UNet with classifier-free guidance, over the same sigmas
(diffusers' ``trailing`` spacing of the SD 1.x config, 5 steps: table timesteps 999, 799, …, 199, then
0) from the same start, with the same per-step noise; the UNet gets the same timestep on both sides
(diffusers' own, ours through the same sigma → timestep interpolation). The tiny UNet's latents reach
magnitudes near 100, so the bound is relative to the latent's range: ``max|Δ| ≤ 1e-5 · max|x|``
(ancestral, Heun, DPM-2 and Euler come out bit-identical).

Not compared: ``lms``'s last step (k-diffusion/ComfyUI return the denoised latent, diffusers integrates
its polynomial to sigma 0 — every step before it matches, checked below), ``dpmpp_3m_sde`` (diffusers'
third-order SDE update is a different formula), ``deis`` (diffusers implements the log-rho variant,
ComfyUI the tabulated one), ``lcm`` (diffusers applies LCM's boundary condition to the VP latent,
ComfyUI to the sigma-space one), and the samplers diffusers has no scheduler for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling import samplers as S
from nodegraph_nodes.sampling.noise import BrownianTreeNoiseSampler

STEPS, CFG, SHAPE = 5, 5.0, (1, 4, 8, 8)
CONFIG = {k: v for k, v in json.loads((Path(__file__).parents[2] / "nodes" / "diffusion" / "configs" / "sd1" /
                                       "scheduler.json").read_text()).items() if not k.startswith("_")}


class Rig:
    """The UNet with CFG on eps, the diffusers loop, and our denoiser over it."""

    def __init__(self, unet):
        import diffusers

        self.unet = unet
        g = torch.Generator().manual_seed(0)
        self.cond, self.uncond = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
        self.ref = diffusers.EulerDiscreteScheduler.from_config(CONFIG)
        table = ((1 - self.ref.alphas_cumprod) / self.ref.alphas_cumprod) ** 0.5
        self.log_table = table.log().numpy().astype(np.float64)
        self.noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))

    def eps(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.unet(torch.cat([x_in] * 2), torch.cat([t] * 2), encoder_hidden_states=torch.cat([self.uncond, self.cond])).sample
        u, c = out.chunk(2)
        return u + CFG * (c - u)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """diffusers' sigma → timestep: linear in log sigma between table entries."""
        index = np.arange(len(self.log_table), dtype=np.float64)
        return torch.tensor([float(np.interp(np.log(float(sigma)), self.log_table, index))])

    def denoiser(self):
        rig = self

        class Denoiser:
            model_sampling = msl.from_scheduler_config(CONFIG)
            seed = 0
            uncond_denoised = None

            def track_uncond(self):
                pass

            def __call__(self, x, sigma):
                s = sigma.reshape(-1)[0]
                return x - rig.eps(x / (s ** 2 + 1) ** 0.5, rig.timestep(s)) * s

        return Denoiser()

    def scheduler(self, cls_name: str, **options):
        import diffusers

        sched = getattr(diffusers, cls_name).from_config(CONFIG, timestep_spacing="trailing", **options)
        sched.set_timesteps(STEPS)
        return sched

    def run(self, sched, x: torch.Tensor, seed: int | None = None, steps: int | None = None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for t in sched.timesteps[:steps]:
            e = self.eps(sched.scale_model_input(x, t), t.reshape(1).float())
            x = sched.step(e, t, x, **({"generator": gen} if gen is not None else {})).prev_sample
        return x

    @property
    def sigmas(self) -> torch.Tensor:
        return self.scheduler("EulerDiscreteScheduler").sigmas.clone()


def randn_noise(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(SHAPE, generator=gen)


def assert_matches(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.isfinite(ref).all() and ref.std() > 0.1
    err = float((ours - ref).abs().max())
    assert err <= 1e-5 * float(ref.abs().max()), f"max |Δ| {err} vs range {float(ref.abs().max())}"


@pytest.fixture(scope="module")
def rig(tiny_sd):
    return Rig(tiny_sd.unet)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny networks run faster on one intra-op thread (see nodegraph.cpu_threads)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# (sampler name, diffusers class, its options, starts in VP space, noise: None | "randn" | "brownian")
SIGMA_SPACE = [
    ("euler", "EulerDiscreteScheduler", {}, None),
    ("euler_ancestral", "EulerAncestralDiscreteScheduler", {}, "randn"),
    ("heun", "HeunDiscreteScheduler", {}, None),
    ("dpm_2", "KDPM2DiscreteScheduler", {}, None),
    ("dpm_2_ancestral", "KDPM2AncestralDiscreteScheduler", {}, "randn"),
]
VP_SPACE = [
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "lower_order_final": True}, None),
    ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                     "lower_order_final": True}, "randn"),
    ("ddim", "DDIMScheduler", {"set_alpha_to_one": True}, None),
    ("ddpm", "DDPMScheduler", {"clip_sample": False}, "randn"),
]


@pytest.mark.parametrize("name,cls_name,options,noise", SIGMA_SPACE, ids=[c[0] for c in SIGMA_SPACE])
def test_sigma_space_schedulers(rig, name, cls_name, options, noise):
    sched = rig.scheduler(cls_name, **options)
    x0 = rig.noise * sched.init_noise_sigma
    ref = rig.run(sched, x0.clone(), seed=9 if noise else None)
    ours = S.SAMPLER_FUNCTIONS[name](rig.denoiser(), x0.clone(), rig.sigmas,
                                     **({"noise_sampler": randn_noise(9)} if noise else {}))
    assert_matches(ours, ref)


@pytest.mark.parametrize("name,cls_name,options,noise", VP_SPACE, ids=[c[0] for c in VP_SPACE])
def test_variance_preserving_schedulers(rig, name, cls_name, options, noise):
    """diffusers keeps x_t = x / sqrt(1 + sigma^2) and starts from unit noise; the end (sigma 0) is the same."""
    sigmas = rig.sigmas
    sched = rig.scheduler(cls_name, **options)
    ref = rig.run(sched, rig.noise.clone(), seed=9 if noise else None)
    start = rig.noise * (1 + sigmas[0] ** 2) ** 0.5
    ours = S.SAMPLER_FUNCTIONS[name](rig.denoiser(), start, sigmas, **({"noise_sampler": randn_noise(9)} if noise else {}))
    assert_matches(ours, ref)


@pytest.mark.parametrize("name,variant", [("uni_pc", "bh1"), ("uni_pc_bh2", "bh2")])
def test_unipc(rig, name, variant):
    """UniPC order 3; like ComfyUI the last sigma is 0.001 (and the result scaled back from VP)."""
    sigmas = rig.sigmas
    sched = rig.scheduler("UniPCMultistepScheduler", solver_type=variant, solver_order=3, lower_order_final=True)
    sched.sigmas[-1] = 0.001
    ref = rig.run(sched, rig.noise.clone()) * (1 + 0.001 ** 2) ** 0.5
    ours = S.SAMPLER_FUNCTIONS[name](rig.denoiser(), rig.noise * (1 + sigmas[0] ** 2) ** 0.5, sigmas)
    assert_matches(ours, ref)


def test_dpmpp_sde_with_the_same_brownian_tree(rig):
    sigmas = rig.sigmas
    sched = rig.scheduler("DPMSolverSDEScheduler", noise_sampler_seed=9)
    x0 = rig.noise * sched.init_noise_sigma
    ref = rig.run(sched, x0.clone())
    tree = BrownianTreeNoiseSampler(x0, sigmas[sigmas > 0].min(), sigmas.max(), seed=9, cpu=True)
    assert_matches(S.sample_dpmpp_sde(rig.denoiser(), x0.clone(), sigmas, noise_sampler=tree), ref)


def test_lms_before_its_final_step(rig):
    sigmas = rig.sigmas
    sched = rig.scheduler("LMSDiscreteScheduler")
    x0 = rig.noise * sched.init_noise_sigma
    ref = rig.run(sched, x0.clone(), steps=STEPS - 1)
    assert_matches(S.sample_lms(rig.denoiser(), x0.clone(), sigmas[:-1]), ref)


def test_flow_euler_equals_flow_match_euler(tiny_flow):
    """The flow transformer: our euler over SD3-shifted sigmas = FlowMatchEulerDiscreteScheduler's steps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    net, cond, pooled = tiny_flow
    ms = msl.sd3_flow(3.0)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(4)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))

    def velocity(x, t):
        with torch.no_grad():
            return net(hidden_states=x, encoder_hidden_states=cond, pooled_projections=pooled, timestep=t,
                       return_dict=False)[0]

    x = noise.clone()
    for t in sched.timesteps:
        x = sched.step(velocity(x, t.reshape(1)), t, x).prev_sample

    class Denoiser:
        model_sampling, seed, uncond_denoised = ms, 0, None

        def __call__(self, x, sigma):
            return ms.calculate_denoised(sigma, velocity(x, ms.timestep(sigma)), x)

    ours = S.sample_euler(Denoiser(), noise.clone(), sched.sigmas.clone())
    assert_matches(ours, x)


@pytest.fixture(scope="module")
def tiny_flow():
    from tests.sampling.flow_model import build_transformer, flow_conditioning

    cond, extras = flow_conditioning(3)[0]
    return build_transformer(), cond, extras["pooled_output"]
