"""Model sampling: the families' settings against ComfyUI's values (written out), the parameterizations'
formulas, and a diffusers scheduler config read as the same settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nodegraph_nodes.sampling import model_sampling as msl

CONFIGS = Path(__file__).parents[2] / "nodes" / "diffusion" / "configs"
SHAPES_CONFIG = Path(__file__).parents[2] / "nodes" / "shapes" / "weights" / "generator" / "scheduler" / "scheduler_config.json"


def test_sd1_discrete_schedule():
    ms = msl.discrete()
    assert len(ms.sigmas) == 1000
    assert float(ms.sigma_min) == 0.029167158529162407 and float(ms.sigma_max) == 14.614641189575195
    assert ms.percent_to_sigma(0.5) == pytest.approx(1.6155803203582764, rel=1e-7)
    assert ms.percent_to_sigma(0.0) > 1e8 and ms.percent_to_sigma(1.0) == 0.0
    assert ms.timestep(torch.tensor([1.0, 5.0])).tolist() == [354, 795]  # nearest table entry
    assert float(ms.sigma(torch.tensor(999))) == pytest.approx(14.614641189575195, rel=1e-6)
    assert ms.max_denoise(torch.tensor([14.614641, 1.0, 0.0])) and not ms.max_denoise(torch.tensor([10.0, 0.0]))


def test_zero_terminal_snr_and_lcm_tables():
    zsnr = msl.discrete("v_prediction", zsnr=True)
    assert float(zsnr.sigma_max) == pytest.approx(4518.763671875, rel=1e-6)
    assert float(zsnr.sigma_min) == pytest.approx(0.029167158529162407, rel=1e-6)
    lcm = msl.discrete("lcm")
    assert len(lcm.sigmas) == 50 and float(lcm.sigmas[0]) == pytest.approx(0.13445067405700684, rel=1e-6)
    assert lcm.timestep(lcm.sigmas[:3]).tolist() == [19, 39, 59]  # on the 1000-step scale


def test_scheduler_configs_read_as_comfyui_settings():
    sd1 = msl.from_scheduler_config(json.loads((CONFIGS / "sd1" / "scheduler.json").read_text()))
    assert torch.equal(sd1.sigmas, msl.discrete().sigmas) and sd1.prediction == "eps"
    sd2 = json.loads((CONFIGS / "sd2" / "scheduler.json").read_text())
    assert msl.from_scheduler_config({**sd2, "prediction_type": "v_prediction"}).prediction == "v_prediction"
    shapes = msl.from_scheduler_config(json.loads(SHAPES_CONFIG.read_text()))  # diffusers "linear" = LDM sqrt_linear
    assert shapes.prediction == "v_prediction"
    assert float(shapes.sigma_min) == pytest.approx(0.01000049989670515, rel=1e-6)
    assert float(shapes.sigma_max) == pytest.approx(157.40728759765625, rel=1e-6)
    with pytest.raises(ValueError, match="prediction_type 'nonsense'"):
        msl.from_scheduler_config({"prediction_type": "nonsense"})


def test_flow_schedules():
    sd3 = msl.sd3_flow(3.0)
    assert float(sd3.sigma_max) == 1.0 and float(sd3.sigma_min) == pytest.approx(0.002994012087583542, rel=1e-6)
    assert sd3.percent_to_sigma(0.5) == pytest.approx(0.75) and sd3.is_flow
    assert float(sd3.timestep(torch.tensor(0.5))) == 500.0
    aura = msl.sd3_flow(1.73, multiplier=1.0)
    assert float(aura.timestep(torch.tensor(0.5))) == 0.5
    assert msl.flux_shift(1024, 1024) == pytest.approx(1.15) and msl.flux_shift(512, 512) == pytest.approx(0.63)
    flux = msl.flux_flow(1.15)
    assert len(flux.sigmas) == 10000 and float(flux.timestep(torch.tensor(0.3))) == pytest.approx(0.3)


def test_parameterizations():
    x, out, sigma = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor([2.0, 0.5])
    s = sigma.view(2, 1, 1, 1)
    eps = msl.discrete("eps")
    torch.testing.assert_close(eps.calculate_input(sigma, x), x / (s ** 2 + 1) ** 0.5)
    torch.testing.assert_close(eps.calculate_denoised(sigma, out, x), x - out * s)
    torch.testing.assert_close(eps.noise_scaling(sigma, out, x), out * s + x)
    torch.testing.assert_close(eps.noise_scaling(sigma, out, x, max_denoise=True), out * (1 + s ** 2) ** 0.5 + x)
    v = msl.discrete("v_prediction")
    torch.testing.assert_close(v.calculate_denoised(sigma, out, x), x / (s ** 2 + 1) - out * s / (s ** 2 + 1) ** 0.5)
    torch.testing.assert_close(msl.discrete("x0").calculate_denoised(sigma, out, x), out)
    flow = msl.sd3_flow(3.0)
    f = torch.tensor([0.8, 0.25])
    fs = f.view(2, 1, 1, 1)
    torch.testing.assert_close(flow.calculate_input(f, x), x)
    torch.testing.assert_close(flow.calculate_denoised(f, out, x), x - out * fs)
    torch.testing.assert_close(flow.noise_scaling(f, out, x), fs * out + (1 - fs) * x)
    torch.testing.assert_close(flow.inverse_noise_scaling(f, x), x / (1 - fs))
    edm = msl.continuous_edm("edm", 0.002, 80.0, 0.5)
    torch.testing.assert_close(edm.calculate_denoised(sigma, out, x),
                               x * 0.25 / (s ** 2 + 0.25) + out * s * 0.5 / (s ** 2 + 0.25) ** 0.5)
    assert float(edm.sigma_max) == pytest.approx(80.0, rel=1e-5)
    with pytest.raises(ValueError, match="unknown prediction type"):
        msl.ModelSampling(msl.FlowSchedule(), "velocity")
