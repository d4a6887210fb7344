"""SamplerSEEDS2 and SamplerLCMUpscale: their /object_info entries against ComfyUI's specs (written out
below), the sampler functions' steps on a stand-in model with the expected numbers written out, bislerp
on a two-vector latent, and both nodes sampling the tiny SD 1.x model through SamplerCustomAdvanced."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry
from nodegraph_nodes.sampling.lcm_upscale import bislerp, sample_lcm_upscale, upscale_schedule
from nodegraph_nodes.sampling.samplers import sample_seeds_2

from tests.sampling.test_sampling_nodes import SD, custom, preview_all, samples

CATEGORY = "sampling/custom_sampling/samplers"
SPECS = {
    "SamplerSEEDS2": {
        "solver_type": [["phi_1", "phi_2"], {"default": "phi_1"}],
        "eta": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False,
                          "tooltip": "Stochastic strength"}],
        "s_noise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False,
                              "tooltip": "SDE noise multiplier"}],
        "r": ["FLOAT", {"default": 0.5, "min": 0.01, "max": 1.0, "step": 0.01, "round": False,
                        "tooltip": "Relative step size for the intermediate stage (c2 node)"}]},
    "SamplerLCMUpscale": {
        "scale_ratio": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 20.0, "step": 0.01}],
        "scale_steps": ["INT", {"default": -1, "min": -1, "max": 1000, "step": 1}],
        "upscale_method": [["bislerp", "nearest-exact", "bilinear", "area", "bicubic"], {"default": "bislerp"}]},
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_object_info_matches_comfyui(name):
    info = default_registry(packs=False).object_info(name)[name]
    assert info["category"] == CATEGORY and info["output"] == ["SAMPLER"]
    assert info["input"]["required"] == SPECS[name] and info["input_order"]["required"] == list(SPECS[name])


@dataclass
class _EpsSampling:
    is_flow: bool = False


class _ScaledModel:
    """A stand-in denoiser: the denoised latent is ``factor · x``."""

    def __init__(self, factor: float, seed: int | None = None):
        self.factor, self.seed = factor, seed
        self.model_sampling = _EpsSampling()
        self.uncond_denoised = None
        self.calls: list[tuple[tuple, float]] = []

    def __call__(self, x, sigma):
        self.calls.append((tuple(x.shape), float(sigma[0])))
        return x * self.factor


def test_seeds_2_solver_types_one_step():
    # sigma 2 → 1, eta 0 (no noise), r 1: lambda -ln 2 → 0, h = ln 2, alpha_t = 1
    h = math.log(2.0)
    phi1, phi2 = math.expm1(-h), (math.expm1(-h) + h) / -h
    d1 = 0.9
    x2 = 0.5 - phi1 * d1                      # exponential Euler to sigma 1
    d2 = 0.9 * x2
    expected_phi2 = 0.5 - ((phi1 - phi2) * d1 + phi2 * d2)
    expected_phi1 = 0.5 - phi1 * (d1 + (d2 - d1) * 0.5)
    sigmas = torch.tensor([2.0, 1.0])
    for solver, expected in (("phi_2", expected_phi2), ("phi_1", expected_phi1)):
        out = sample_seeds_2(_ScaledModel(0.9), torch.ones(1, 1, 1, 1), sigmas, eta=0.0, r=1.0, solver_type=solver)
        assert float(out) == pytest.approx(expected, abs=1e-6), solver
    assert expected_phi1 != pytest.approx(expected_phi2, abs=1e-4)
    with pytest.raises(ValueError, match="solver_type"):
        sample_seeds_2(_ScaledModel(0.9), torch.ones(1, 1, 1, 1), sigmas, solver_type="phi_3")


def test_upscale_schedule():
    assert upscale_schedule(4, 2.0, None) == [1.5, 2.0]                  # half the steps by default
    assert upscale_schedule(3, 3.0, 3) == pytest.approx([5 / 3, 7 / 3, 3.0])
    assert upscale_schedule(2, 2.0, 10) == pytest.approx([4 / 3, 5 / 3, 2.0])  # at most sigmas + 1 points


def test_bislerp_two_vectors():
    latent = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)   # (1,0) then (0,1)
    out = bislerp(latent, 4, 1)
    a, b = math.sin(3 * math.pi / 8), math.sin(math.pi / 8)
    expected = torch.tensor([[1.0, 0.0], [a, b], [b, a], [0.0, 1.0]]).T.reshape(1, 2, 1, 4)
    assert torch.allclose(out, expected, atol=1e-6)
    assert bislerp(torch.randn(2, 4, 3, 5), 7, 6).shape == (2, 4, 6, 7)


def test_lcm_upscale_steps_on_a_stand_in_model():
    model = _ScaledModel(0.5, seed=9)
    sigmas = torch.tensor([3.0, 2.0, 1.0, 0.0])
    x = torch.randn(1, 2, 4, 4)
    out = sample_lcm_upscale(model, x, sigmas, total_upscale=2.0, upscale_method="nearest-exact", upscale_steps=2)
    assert [shape for shape, _ in model.calls] == [(1, 2, 4, 4), (1, 2, 6, 6), (1, 2, 8, 8)]
    # the same steps written out: the noise continues the seed's CPU stream after the initial noise
    gen = torch.Generator().manual_seed(9)
    torch.randn((1, 2, 4, 4), generator=gen)
    y = x
    for size, sigma in ((6, 2.0), (8, 1.0), (8, 0.0)):
        y = torch.nn.functional.interpolate(y * 0.5, size=(size, size), mode="nearest-exact")
        if sigma > 0:
            y = y + sigma * torch.randn((1, 2, size, size), generator=gen)
    assert torch.allclose(out, y, atol=1e-6)


def test_option_nodes_sample_the_tiny_sd(engine):
    g = Graph()
    m = SD(g)
    sigmas = g.node("BasicScheduler", model=m.model, scheduler="karras", steps=4, denoise=1.0)
    noise = g.node("RandomNoise", noise_seed=21)

    def run(key, name, **options):
        return custom(g, m, key, sigmas=sigmas, noise=noise, sampler_node=g.node(name, **options))

    outs = [
        run("seeds_default", "SamplerSEEDS2", solver_type="phi_1", eta=1.0, s_noise=1.0, r=0.5),
        run("seeds_phi2", "SamplerSEEDS2", solver_type="phi_2", eta=0.0, s_noise=1.0, r=1.0),
        custom(g, m, "seeds_select", "seeds_2", sigmas=sigmas, noise=noise),
        run("lcm_up", "SamplerLCMUpscale", scale_ratio=1.5, scale_steps=-1, upscale_method="bislerp"),
        run("lcm_up_one", "SamplerLCMUpscale", scale_ratio=1.0, scale_steps=-1, upscale_method="bilinear"),
    ]
    preview_all(g, outs)
    result = engine.run(g).raise_for_status()
    assert torch.equal(samples(result, "seeds_default"), samples(result, "seeds_select"))  # the KSampler name
    phi2 = samples(result, "seeds_phi2")
    assert torch.isfinite(phi2).all() and not torch.equal(phi2, samples(result, "seeds_default"))
    up = samples(result, "lcm_up")
    assert up.shape == (1, 4, 12, 12) and torch.isfinite(up).all() and up.std() > 1e-3
    assert samples(result, "lcm_up_one").shape == (1, 4, 8, 8)
