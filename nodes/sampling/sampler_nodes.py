"""ComfyUI's ``Sampler…`` option nodes: a SAMPLER with its options set (eta, s_noise, order, solver type,
…). ``noise_device`` picks where the SDE samplers' Brownian tree lives (``gpu``: the latent's device,
the ``_gpu`` sampler names; ``cpu``: the same noise on every device).
"""

from __future__ import annotations

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling.lcm_upscale import UPSCALE_METHODS
from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.sa_solver import tau_interval
from nodegraph_nodes.sampling.samplers import Sampler, sampler_object
from nodegraph_nodes.sampling.types import SAMPLER

CATEGORY = "sampling/custom_sampling/samplers"


def _f(default: float, lo: float = 0.0, hi: float = 100.0) -> Input:
    return Input(FLOAT, default=default, min=lo, max=hi, step=0.01, round=False)


def _device_name(name: str, noise_device: str) -> str:
    return name if noise_device == "cpu" else name + "_gpu"


class SamplerEulerAncestral(Node):
    category = CATEGORY
    eta = _f(1.0)
    s_noise = _f(1.0)
    outputs = (Output(SAMPLER),)

    def execute(self, eta: float, s_noise: float) -> tuple:
        return (sampler_object("euler_ancestral", {"eta": eta, "s_noise": s_noise}),)


class SamplerEulerAncestralCFGPP(Node):
    category = CATEGORY
    display_name = "SamplerEulerAncestralCFG++"
    eta = _f(1.0, hi=1.0)
    s_noise = _f(1.0, hi=10.0)
    outputs = (Output(SAMPLER),)

    def execute(self, eta: float, s_noise: float) -> tuple:
        return (sampler_object("euler_ancestral_cfg_pp", {"eta": eta, "s_noise": s_noise}),)


class SamplerEulerCFGpp(Node):
    """Euler with CFG++: ``regular`` steps along the unguided noise, ``alternative`` corrects Euler's
    derivative by the guidance difference."""

    category = "_for_testing"
    display_name = "SamplerEulerCFG++"
    experimental = True
    version = Input(COMBO, choices=["regular", "alternative"])
    outputs = (Output(SAMPLER),)

    def execute(self, version: str) -> tuple:
        if version == "alternative":
            return (Sampler("euler_cfg_pp_alternative"),)
        return (sampler_object("euler_cfg_pp"),)


class SamplerLMS(Node):
    category = CATEGORY
    order = Input(INT, default=4, min=1, max=100)
    outputs = (Output(SAMPLER),)

    def execute(self, order: int) -> tuple:
        return (sampler_object("lms", {"order": order}),)


class SamplerDPMPP_3M_SDE(Node):
    category = CATEGORY
    eta = _f(1.0)
    s_noise = _f(1.0)
    noise_device = Input(COMBO, choices=["gpu", "cpu"])
    outputs = (Output(SAMPLER),)

    def execute(self, eta: float, s_noise: float, noise_device: str) -> tuple:
        return (sampler_object(_device_name("dpmpp_3m_sde", noise_device), {"eta": eta, "s_noise": s_noise}),)


class SamplerDPMPP_2M_SDE(Node):
    category = CATEGORY
    solver_type = Input(COMBO, choices=["midpoint", "heun"])
    eta = _f(1.0)
    s_noise = _f(1.0)
    noise_device = Input(COMBO, choices=["gpu", "cpu"])
    outputs = (Output(SAMPLER),)

    def execute(self, solver_type: str, eta: float, s_noise: float, noise_device: str) -> tuple:
        return (sampler_object(_device_name("dpmpp_2m_sde", noise_device),
                               {"eta": eta, "s_noise": s_noise, "solver_type": solver_type}),)


class SamplerDPMPP_SDE(Node):
    category = CATEGORY
    eta = _f(1.0)
    s_noise = _f(1.0)
    r = _f(0.5)
    noise_device = Input(COMBO, choices=["gpu", "cpu"])
    outputs = (Output(SAMPLER),)

    def execute(self, eta: float, s_noise: float, r: float, noise_device: str) -> tuple:
        return (sampler_object(_device_name("dpmpp_sde", noise_device), {"eta": eta, "s_noise": s_noise, "r": r}),)


class SamplerDPMPP_2S_Ancestral(Node):
    category = CATEGORY
    eta = _f(1.0)
    s_noise = _f(1.0)
    outputs = (Output(SAMPLER),)

    def execute(self, eta: float, s_noise: float) -> tuple:
        return (sampler_object("dpmpp_2s_ancestral", {"eta": eta, "s_noise": s_noise}),)


class SamplerDPMAdaptative(Node):
    category = CATEGORY
    order = Input(INT, default=3, min=2, max=3)
    rtol = _f(0.05)
    atol = _f(0.0078)
    h_init = _f(0.05)
    pcoeff = _f(0.0)
    icoeff = _f(1.0)
    dcoeff = _f(0.0)
    accept_safety = _f(0.81)
    eta = _f(0.0)
    s_noise = _f(1.0)
    outputs = (Output(SAMPLER),)

    def execute(self, order: int, rtol: float, atol: float, h_init: float, pcoeff: float, icoeff: float,
                dcoeff: float, accept_safety: float, eta: float, s_noise: float) -> tuple:
        return (sampler_object("dpm_adaptive", {
            "order": order, "rtol": rtol, "atol": atol, "h_init": h_init, "pcoeff": pcoeff, "icoeff": icoeff,
            "dcoeff": dcoeff, "accept_safety": accept_safety, "eta": eta, "s_noise": s_noise}),)


class SamplerER_SDE(Node):
    category = CATEGORY
    solver_type = Input(COMBO, choices=["ER-SDE", "Reverse-time SDE", "ODE"])
    max_stage = Input(INT, default=3, min=1, max=3)
    eta = Input(FLOAT, default=1.0, min=0.0, max=100.0, step=0.01, round=False, tooltip=(
        "Stochastic strength of reverse-time SDE.\nWhen eta=0, it reduces to deterministic ODE. "
        "This setting doesn't apply to ER-SDE solver type."))
    s_noise = _f(1.0)
    outputs = (Output(SAMPLER),)

    def execute(self, solver_type: str, max_stage: int, eta: float, s_noise: float) -> tuple:
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0, 0
        options = {"s_noise": s_noise, "max_stage": max_stage}
        if solver_type != "ER-SDE":
            options["noise_scaler"] = _PowerScaler(eta)
        return (sampler_object("er_sde", options),)


class _PowerScaler:
    """The reverse-time SDE's noise scaler ``x ** (eta + 1)`` (a class, so the SAMPLER compares by value)."""

    def __init__(self, eta: float):
        self.eta = eta

    def __call__(self, x):
        return x ** (self.eta + 1)

    def __eq__(self, other) -> bool:
        return isinstance(other, _PowerScaler) and other.eta == self.eta

    def __hash__(self) -> int:
        return hash(("power", self.eta))


class SamplerSASolver(Node):
    category = CATEGORY
    model = Input(MODEL)
    eta = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01, round=False)
    sde_start_percent = Input(FLOAT, default=0.2, min=0.0, max=1.0, step=0.001)
    sde_end_percent = Input(FLOAT, default=0.8, min=0.0, max=1.0, step=0.001)
    s_noise = _f(1.0)
    predictor_order = Input(INT, default=3, min=1, max=6)
    corrector_order = Input(INT, default=4, min=0, max=6)
    use_pece = Input(BOOLEAN)
    simple_order_2 = Input(BOOLEAN)
    outputs = (Output(SAMPLER),)

    def execute(self, model, eta: float, sde_start_percent: float, sde_end_percent: float, s_noise: float,
                predictor_order: int, corrector_order: int, use_pece: bool = False,
                simple_order_2: bool = False) -> tuple:
        ms = require_sampling_model(model, "SamplerSASolver.model").model_sampling
        tau = tau_interval(ms.percent_to_sigma(sde_start_percent), ms.percent_to_sigma(sde_end_percent), eta=eta)
        return (sampler_object("sa_solver", {"tau_func": tau, "s_noise": s_noise, "predictor_order": predictor_order,
                                             "corrector_order": corrector_order, "use_pece": use_pece,
                                             "simple_order_2": simple_order_2}),)


class SamplerLCM(Node):
    """LCM with adjustable per-step noise: ``s_noise`` at the first step ramping to ``s_noise_end``;
    ``noise_clip_std`` clamps the fresh noise (0: off)."""

    category = CATEGORY
    s_noise = _f(1.0, hi=64.0)
    s_noise_end = _f(1.0, hi=64.0)
    noise_clip_std = _f(0.0, hi=10.0)
    outputs = (Output(SAMPLER),)

    def execute(self, s_noise: float, s_noise_end: float, noise_clip_std: float) -> tuple:
        return (sampler_object("lcm", {"s_noise": s_noise, "s_noise_end": s_noise_end,
                                       "noise_clip_std": noise_clip_std}),)


class SamplerSEEDS2(Node):
    """This sampler node can represent multiple samplers: seeds_2 (the default setting); exp_heun_2_x0
    (solver_type phi_2, r 1.0, eta 0.0); exp_heun_2_x0_sde (solver_type phi_2, r 1.0, eta 1.0, s_noise
    1.0)."""

    category = CATEGORY
    solver_type = Input(COMBO, choices=["phi_1", "phi_2"])
    eta = Input(FLOAT, default=1.0, min=0.0, max=100.0, step=0.01, round=False, tooltip="Stochastic strength")
    s_noise = Input(FLOAT, default=1.0, min=0.0, max=100.0, step=0.01, round=False, tooltip="SDE noise multiplier")
    r = Input(FLOAT, default=0.5, min=0.01, max=1.0, step=0.01, round=False,
              tooltip="Relative step size for the intermediate stage (c2 node)")
    outputs = (Output(SAMPLER),)

    def execute(self, solver_type: str, eta: float, s_noise: float, r: float) -> tuple:
        return (sampler_object("seeds_2", {"eta": eta, "s_noise": s_noise, "r": r, "solver_type": solver_type}),)


class SamplerLCMUpscale(Node):
    """LCM that scales the latent up between steps, reaching scale_ratio after scale_steps steps (-1: half
    the steps), with upscale_method (bislerp: spherical blends of the channel vectors)."""

    category = CATEGORY
    scale_ratio = Input(FLOAT, default=1.0, min=0.1, max=20.0, step=0.01)
    scale_steps = Input(INT, default=-1, min=-1, max=1000, step=1)
    upscale_method = Input(COMBO, choices=UPSCALE_METHODS)
    outputs = (Output(SAMPLER),)

    def execute(self, scale_ratio: float, scale_steps: int, upscale_method: str) -> tuple:
        return (Sampler("lcm_upscale", {"total_upscale": scale_ratio, "upscale_method": upscale_method,
                                        "upscale_steps": None if scale_steps < 0 else scale_steps}),)
