"""Sigma schedules: the nine KSampler schedulers equal ComfyUI's values (written out in comfy_sigmas.py)
for SD 1.x's and SD3's sampling settings at 1, 4, 20 and 30 steps; the bound-based schedulers, KSampler's
schedule rules and the sigma tools against hand-checked values."""

from __future__ import annotations

import math

import pytest
import torch

from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling import sigmas as sg

from tests.sampling.comfy_sigmas import EXPECTED

SETTINGS = {"SD1": msl.discrete(), "SD3": msl.sd3_flow(3.0)}


@pytest.mark.parametrize("setting", sorted(EXPECTED))
@pytest.mark.parametrize("scheduler", sg.SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 4, 20, 30])
def test_scheduler_equals_comfyui(setting, scheduler, steps):
    ours = sg.calculate_sigmas(SETTINGS[setting], scheduler, steps)
    expected = torch.tensor(EXPECTED[setting][scheduler][steps], dtype=torch.float32)
    if scheduler == "kl_optimal" and steps == 1:  # ComfyUI computes 0/0 here (NaN); we start at sigma_max
        assert torch.isnan(expected[0])
        expected[0] = SETTINGS[setting].sigma_max
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


def test_scheduler_names_are_comfyuis_in_order():
    assert sg.SCHEDULER_NAMES == ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                                  "linear_quadratic", "kl_optimal"]
    with pytest.raises(sg.SchedulerError, match="unknown scheduler 'fancy'"):
        sg.calculate_sigmas(SETTINGS["SD1"], "fancy", 4)


def test_bound_schedulers():
    k = sg.karras(3, 0.1, 10.0, rho=7.0)
    mid = ((10.0 ** (1 / 7) + 0.5 * (0.1 ** (1 / 7) - 10.0 ** (1 / 7))) ** 7)
    torch.testing.assert_close(k, torch.tensor([10.0, mid, 0.1, 0.0]))
    torch.testing.assert_close(sg.exponential(3, 0.1, 10.0), torch.tensor([10.0, 1.0, 0.1, 0.0]))
    torch.testing.assert_close(sg.polyexponential(3, 0.1, 10.0, rho=1.0), torch.tensor([10.0, 1.0, 0.1, 0.0]))
    lap = sg.laplace(5, 0.03, 14.6)
    assert len(lap) == 5 and float(lap[0]) == pytest.approx(14.6) and float(lap[2]) == pytest.approx(1.0)
    vp = sg.vp(2, beta_d=19.9, beta_min=0.1, eps_s=1e-3)
    assert float(vp[0]) == pytest.approx(math.sqrt(math.expm1(19.9 / 2 + 0.1)), rel=1e-5) and float(vp[-1]) == 0
    kl = sg.kl_optimal(3, 0.1, 10.0)
    torch.testing.assert_close(kl, torch.tensor([10.0, math.tan((math.atan(0.1) + math.atan(10.0)) / 2), 0.1, 0.0]))


def test_align_your_steps_and_sd_turbo():
    ays = sg.align_your_steps("SD1", 10)
    torch.testing.assert_close(ays, torch.tensor(sg.AYS_NOISE_LEVELS["SD1"][:-1] + [0.0]))
    assert len(sg.align_your_steps("SDXL", 20)) == 21
    assert len(sg.align_your_steps("SD1", 10, denoise=0.5)) == 6
    assert len(sg.align_your_steps("SD1", 10, denoise=0.0)) == 0
    ms = SETTINGS["SD1"]
    turbo = sg.sd_turbo(ms, 2)
    torch.testing.assert_close(turbo, torch.stack([ms.sigma(torch.tensor(999)), ms.sigma(torch.tensor(899)),
                                                   torch.tensor(0.0)]))
    assert float(sg.sd_turbo(ms, 1, denoise=0.5)[0]) == pytest.approx(float(ms.sigma(torch.tensor(499))))


def test_basic_scheduler_denoise_takes_the_tail():
    ms = SETTINGS["SD1"]
    full = sg.calculate_sigmas(ms, "karras", 8)
    torch.testing.assert_close(sg.basic_scheduler(ms, "karras", 4, denoise=0.5), full[-5:])
    assert len(sg.basic_scheduler(ms, "karras", 4, denoise=0.0)) == 0


def test_ksampler_schedule_rules():
    ms = SETTINGS["SD1"]
    normal = sg.calculate_sigmas(ms, "normal", 5)
    torch.testing.assert_close(sg.ksampler_sigmas(ms, "euler", "normal", 5), normal)
    # dpm_2 / uni_pc: one step more, the penultimate sigma dropped
    longer = sg.calculate_sigmas(ms, "normal", 6)
    torch.testing.assert_close(sg.ksampler_sigmas(ms, "dpm_2", "normal", 5), torch.cat([longer[:-2], longer[-1:]]))
    # KSamplerAdvanced's window: steps [1, 3) with and without leftover noise
    cut = sg.ksampler_sigmas(ms, "euler", "normal", 5, window=sg.StepWindow(1, 3, force_full_denoise=False))
    torch.testing.assert_close(cut, normal[1:4])
    full = sg.ksampler_sigmas(ms, "euler", "normal", 5, window=sg.StepWindow(1, 3, force_full_denoise=True))
    torch.testing.assert_close(full, torch.cat([normal[1:3], torch.zeros(1)]))
    assert sg.ksampler_sigmas(ms, "euler", "normal", 5, window=sg.StepWindow(5, 10000)) is None
    torch.testing.assert_close(sg.ksampler_sigmas(ms, "euler", "normal", 4, denoise=0.5),
                               sg.calculate_sigmas(ms, "normal", 8)[-5:])


def test_sigma_tools():
    s = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    high, low = sg.split_at(s, 2)
    torch.testing.assert_close(high, torch.tensor([10.0, 5.0, 2.0]))
    torch.testing.assert_close(low, torch.tensor([2.0, 1.0, 0.0]))
    high, low = sg.split_denoise(s, 0.5)
    torch.testing.assert_close(high, torch.tensor([10.0, 5.0, 2.0]))
    torch.testing.assert_close(low, torch.tensor([2.0, 1.0, 0.0]))
    torch.testing.assert_close(sg.flip(s), torch.tensor([0.0001, 1.0, 2.0, 5.0, 10.0]))
    ext = sg.extend_intermediate(torch.tensor([10.0, 4.0, 0.0]), 2, -1.0, 5.0, "linear")
    torch.testing.assert_close(ext, torch.tensor([10.0, 7.0, 4.0, 0.0]))
    torch.testing.assert_close(sg.parse_manual("1, 0.5 .25 -1e-1"), torch.tensor([1.0, 0.5, 0.25, -0.1]))
    with pytest.raises(ValueError, match="no numbers"):
        sg.parse_manual("none")
