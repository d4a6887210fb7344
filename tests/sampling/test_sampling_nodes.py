"""The sampling nodes: /object_info entries against ComfyUI's specs (written out below), and every node run
in a graph on the tiny SD 1.x model and the tiny flow transformer — every KSampler sampler name,
KSampler ≡ SamplerCustomAdvanced(RandomNoise, CFGGuider, KSamplerSelect, BasicScheduler), a SplitSigmas
two-stage run ≡ the one-stage run for the deterministic samplers, KSamplerAdvanced's window ≡ the
SplitSigmas composition, the noise/guider/scheduler/sigma nodes, and the model patches."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from nodegraph_nodes.sampling.samplers import SAMPLER_NAMES
from nodegraph_nodes.sampling.sigmas import SCHEDULER_NAMES

CKPT = "tiny_sd15.safetensors"

# -- ComfyUI's specs ------------------------------------------------------------------------------
# name → (category, required inputs as /object_info writes them, outputs, output names)

M, C, L = ["MODEL", {}], ["CONDITIONING", {}], ["LATENT", {}]
SEED = ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}]
CFG = ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}]
STEPS = ["INT", {"default": 20, "min": 1, "max": 10000}]
DENOISE = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]


def _f(default, lo=0.0, hi=100.0, step=0.01):
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "round": False}]


SMAX, SMIN = _f(14.614642, hi=5000.0), _f(0.0291675, hi=5000.0)
SAMPLERS = "samplers/"
SPECS = {
    "SamplerCustom": ("sampling/custom_sampling", {
        "model": M, "add_noise": ["BOOLEAN", {"default": True}], "noise_seed": SEED, "cfg": CFG, "positive": C,
        "negative": C, "sampler": ["SAMPLER", {}], "sigmas": ["SIGMAS", {}], "latent_image": L},
        ["LATENT", "LATENT"], ["output", "denoised_output"]),
    "SamplerCustomAdvanced": ("sampling/custom_sampling", {
        "noise": ["NOISE", {}], "guider": ["GUIDER", {}], "sampler": ["SAMPLER", {}], "sigmas": ["SIGMAS", {}],
        "latent_image": L}, ["LATENT", "LATENT"], ["output", "denoised_output"]),
    "KSamplerSelect": ("sampling/custom_sampling/samplers", {"sampler_name": [SAMPLER_NAMES, {}]}, ["SAMPLER"], ["SAMPLER"]),
    "RandomNoise": ("sampling/custom_sampling/noise", {"noise_seed": SEED}, ["NOISE"], ["NOISE"]),
    "DisableNoise": ("sampling/custom_sampling/noise", {}, ["NOISE"], ["NOISE"]),
    "AddNoise": ("_for_testing/custom_sampling/noise", {"model": M, "noise": ["NOISE", {}], "sigmas": ["SIGMAS", {}],
                                                         "latent_image": L}, ["LATENT"], ["LATENT"]),
    "BasicScheduler": ("sampling/custom_sampling/schedulers", {
        "model": M, "scheduler": [SCHEDULER_NAMES, {}], "steps": STEPS, "denoise": DENOISE}, ["SIGMAS"], ["SIGMAS"]),
    "KarrasScheduler": ("sampling/custom_sampling/schedulers", {
        "steps": STEPS, "sigma_max": SMAX, "sigma_min": SMIN, "rho": _f(7.0)}, ["SIGMAS"], ["SIGMAS"]),
    "ExponentialScheduler": ("sampling/custom_sampling/schedulers", {
        "steps": STEPS, "sigma_max": SMAX, "sigma_min": SMIN}, ["SIGMAS"], ["SIGMAS"]),
    "PolyexponentialScheduler": ("sampling/custom_sampling/schedulers", {
        "steps": STEPS, "sigma_max": SMAX, "sigma_min": SMIN, "rho": _f(1.0)}, ["SIGMAS"], ["SIGMAS"]),
    "LaplaceScheduler": ("sampling/custom_sampling/schedulers", {
        "steps": STEPS, "sigma_max": SMAX, "sigma_min": SMIN, "mu": _f(0.0, -10.0, 10.0, 0.1),
        "beta": _f(0.5, 0.0, 10.0, 0.1)}, ["SIGMAS"], ["SIGMAS"]),
    "VPScheduler": ("sampling/custom_sampling/schedulers", {
        "steps": STEPS, "beta_d": _f(19.9, hi=5000.0), "beta_min": _f(0.1, hi=5000.0),
        "eps_s": _f(0.001, 0.0, 1.0, 0.0001)}, ["SIGMAS"], ["SIGMAS"]),
    "BetaSamplingScheduler": ("sampling/custom_sampling/schedulers", {
        "model": M, "steps": STEPS, "alpha": _f(0.6, hi=50.0), "beta": _f(0.6, hi=50.0)}, ["SIGMAS"], ["SIGMAS"]),
    "SDTurboScheduler": ("sampling/custom_sampling/schedulers", {
        "model": M, "steps": ["INT", {"default": 1, "min": 1, "max": 10}],
        "denoise": ["FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01}]}, ["SIGMAS"], ["SIGMAS"]),
    "AlignYourStepsScheduler": ("sampling/custom_sampling/schedulers", {
        "model_type": [["SD1", "SDXL", "SVD"], {}], "steps": ["INT", {"default": 10, "min": 1, "max": 10000}],
        "denoise": DENOISE}, ["SIGMAS"], ["SIGMAS"]),
    "ManualSigmas": ("_for_testing/custom_sampling", {"sigmas": ["STRING", {"default": "1, 0.5"}]}, ["SIGMAS"], ["SIGMAS"]),
    "SplitSigmas": ("sampling/custom_sampling/sigmas", {
        "sigmas": ["SIGMAS", {}], "step": ["INT", {"default": 0, "min": 0, "max": 10000}]},
        ["SIGMAS", "SIGMAS"], ["high_sigmas", "low_sigmas"]),
    "SplitSigmasDenoise": ("sampling/custom_sampling/sigmas", {"sigmas": ["SIGMAS", {}], "denoise": DENOISE},
                           ["SIGMAS", "SIGMAS"], ["high_sigmas", "low_sigmas"]),
    "FlipSigmas": ("sampling/custom_sampling/sigmas", {"sigmas": ["SIGMAS", {}]}, ["SIGMAS"], ["SIGMAS"]),
    "SetFirstSigma": ("sampling/custom_sampling/sigmas", {
        "sigmas": ["SIGMAS", {}], "sigma": _f(136.0, 0.0, 20000.0, 0.001)}, ["SIGMAS"], ["SIGMAS"]),
    "ExtendIntermediateSigmas": ("sampling/custom_sampling/sigmas", {
        "sigmas": ["SIGMAS", {}], "steps": ["INT", {"default": 2, "min": 1, "max": 100}],
        "start_at_sigma": _f(-1.0, -1.0, 20000.0), "end_at_sigma": _f(12.0, 0.0, 20000.0),
        "spacing": [["linear", "cosine", "sine"], {}]}, ["SIGMAS"], ["SIGMAS"]),
    "SamplingPercentToSigma": ("sampling/custom_sampling/sigmas", {
        "model": M, "sampling_percent": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.0001}],
        "return_actual_sigma": ["BOOLEAN", {"default": False}]}, ["FLOAT"], ["sigma_value"]),
    "CFGGuider": ("sampling/custom_sampling/guiders", {"model": M, "positive": C, "negative": C, "cfg": CFG},
                  ["GUIDER"], ["GUIDER"]),
    "BasicGuider": ("sampling/custom_sampling/guiders", {"model": M, "conditioning": C}, ["GUIDER"], ["GUIDER"]),
    "DualCFGGuider": ("sampling/custom_sampling/guiders", {
        "model": M, "cond1": C, "cond2": C, "negative": C, "cfg_conds": CFG, "cfg_cond2_negative": CFG,
        "style": [["regular", "nested"], {}]}, ["GUIDER"], ["GUIDER"]),
    "SamplerEulerAncestral": ("sampling/custom_sampling/samplers", {"eta": _f(1.0), "s_noise": _f(1.0)}, ["SAMPLER"], ["SAMPLER"]),
    "SamplerEulerAncestralCFGPP": ("sampling/custom_sampling/samplers", {
        "eta": _f(1.0, hi=1.0), "s_noise": _f(1.0, hi=10.0)}, ["SAMPLER"], ["SAMPLER"]),
    "SamplerEulerCFGpp": ("_for_testing", {"version": [["regular", "alternative"], {}]}, ["SAMPLER"], ["SAMPLER"]),
    "SamplerLMS": ("sampling/custom_sampling/samplers", {"order": ["INT", {"default": 4, "min": 1, "max": 100}]},
                   ["SAMPLER"], ["SAMPLER"]),
    "SamplerDPMPP_3M_SDE": ("sampling/custom_sampling/samplers", {
        "eta": _f(1.0), "s_noise": _f(1.0), "noise_device": [["gpu", "cpu"], {}]}, ["SAMPLER"], ["SAMPLER"]),
    "SamplerDPMPP_2M_SDE": ("sampling/custom_sampling/samplers", {
        "solver_type": [["midpoint", "heun"], {}], "eta": _f(1.0), "s_noise": _f(1.0),
        "noise_device": [["gpu", "cpu"], {}]}, ["SAMPLER"], ["SAMPLER"]),
    "SamplerDPMPP_SDE": ("sampling/custom_sampling/samplers", {
        "eta": _f(1.0), "s_noise": _f(1.0), "r": _f(0.5), "noise_device": [["gpu", "cpu"], {}]}, ["SAMPLER"], ["SAMPLER"]),
    "SamplerDPMPP_2S_Ancestral": ("sampling/custom_sampling/samplers", {"eta": _f(1.0), "s_noise": _f(1.0)},
                                  ["SAMPLER"], ["SAMPLER"]),
    "SamplerDPMAdaptative": ("sampling/custom_sampling/samplers", {
        "order": ["INT", {"default": 3, "min": 2, "max": 3}], "rtol": _f(0.05), "atol": _f(0.0078), "h_init": _f(0.05),
        "pcoeff": _f(0.0), "icoeff": _f(1.0), "dcoeff": _f(0.0), "accept_safety": _f(0.81), "eta": _f(0.0),
        "s_noise": _f(1.0)}, ["SAMPLER"], ["SAMPLER"]),
    "SamplerER_SDE": ("sampling/custom_sampling/samplers", {
        "solver_type": [["ER-SDE", "Reverse-time SDE", "ODE"], {}], "max_stage": ["INT", {"default": 3, "min": 1, "max": 3}],
        "eta": _f(1.0), "s_noise": _f(1.0)}, ["SAMPLER"], ["SAMPLER"]),
    "SamplerSASolver": ("sampling/custom_sampling/samplers", {
        "model": M, "eta": _f(1.0, hi=10.0), "sde_start_percent": ["FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.001}],
        "sde_end_percent": ["FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.001}], "s_noise": _f(1.0),
        "predictor_order": ["INT", {"default": 3, "min": 1, "max": 6}], "corrector_order": ["INT", {"default": 4, "min": 0, "max": 6}],
        "use_pece": ["BOOLEAN", {}], "simple_order_2": ["BOOLEAN", {}]}, ["SAMPLER"], ["SAMPLER"]),
    "SamplerLCM": ("sampling/custom_sampling/samplers", {
        "s_noise": _f(1.0, hi=64.0), "s_noise_end": _f(1.0, hi=64.0), "noise_clip_std": _f(0.0, hi=10.0)},
        ["SAMPLER"], ["SAMPLER"]),
    "ModelSamplingDiscrete": ("advanced/model", {
        "model": M, "sampling": [["eps", "v_prediction", "lcm", "x0", "img_to_img"], {}],
        "zsnr": ["BOOLEAN", {"default": False}]}, ["MODEL"], ["MODEL"]),
    "ModelSamplingContinuousEDM": ("advanced/model", {
        "model": M, "sampling": [["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"], {}],
        "sigma_max": _f(120.0, 0.0, 1000.0, 0.001), "sigma_min": _f(0.002, 0.0, 1000.0, 0.001)}, ["MODEL"], ["MODEL"]),
    "ModelSamplingContinuousV": ("advanced/model", {
        "model": M, "sampling": [["v_prediction"], {}], "sigma_max": _f(500.0, 0.0, 1000.0, 0.001),
        "sigma_min": _f(0.03, 0.0, 1000.0, 0.001)}, ["MODEL"], ["MODEL"]),
    "ModelSamplingSD3": ("advanced/model", {"model": M, "shift": ["FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01}]},
                         ["MODEL"], ["MODEL"]),
    "ModelSamplingAuraFlow": ("advanced/model", {
        "model": M, "shift": ["FLOAT", {"default": 1.73, "min": 0.0, "max": 100.0, "step": 0.01}]}, ["MODEL"], ["MODEL"]),
    "ModelSamplingFlux": ("advanced/model", {
        "model": M, "max_shift": ["FLOAT", {"default": 1.15, "min": 0.0, "max": 100.0, "step": 0.01}],
        "base_shift": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 100.0, "step": 0.01}],
        "width": ["INT", {"default": 1024, "min": 16, "max": 16384, "step": 8}],
        "height": ["INT", {"default": 1024, "min": 16, "max": 16384, "step": 8}]}, ["MODEL"], ["MODEL"]),
    "RescaleCFG": ("advanced/model", {"model": M, "multiplier": ["FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}]},
                   ["MODEL"], ["MODEL"]),
    "CFGNorm": ("advanced/guidance", {"model": M, "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}]},
                ["MODEL"], ["patched_model"]),
    "CFGZeroStar": ("advanced/guidance", {"model": M}, ["MODEL"], ["patched_model"]),
}


#: optional inputs, where a node has them: today's ComfyUI gives ModelSamplingAuraFlow an optional
#: ``sampling`` (comfy_extras/nodes_model_advanced.py, Comfy-Org/ComfyUI 691e827)
OPTIONAL = {"ModelSamplingAuraFlow": {"sampling": [["flow", "img_to_img_velocity"], {}]}}


def _comparable(spec: list) -> list:
    """An input spec without tooltips, and without the default a combo takes anyway (its first choice)."""
    head, options = spec
    options = {k: v for k, v in options.items() if k != "tooltip"}
    if isinstance(head, list) and options.get("default") == head[0]:
        options.pop("default")
    return [head, options]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_object_info_matches_comfyui(name):
    category, required, output, output_name = SPECS[name]
    info = default_registry(packs=False).object_info(name)[name]
    assert info["category"] == category
    assert {k: _comparable(v) for k, v in info["input"]["required"].items()} == required
    assert info["input_order"]["required"] == list(required)
    optional = {k: _comparable(v) for k, v in info["input"].get("optional", {}).items()}
    assert optional == OPTIONAL.get(name, {})
    assert info["output"] == output
    assert info["output_name"] == output_name


def test_ksampler_offers_every_sampler_and_scheduler():
    info = default_registry(packs=False).object_info("KSampler")["KSampler"]["input"]["required"]
    assert info["sampler_name"][0] == SAMPLER_NAMES and len(SAMPLER_NAMES) == 42
    assert info["scheduler"][0] == SCHEDULER_NAMES


# -- graphs ---------------------------------------------------------------------------------------------

class SD:
    """Builders for graphs on the tiny SD 1.x checkpoint."""

    def __init__(self, g: Graph):
        self.g = g
        self.ck = g.node("CheckpointLoaderSimple", "ck", ckpt_name=CKPT)
        self.model = self.ck.out(0)
        self.pos = g.node("CLIPTextEncode", "pos", text="a red fox in snow", clip=self.ck.out(1))
        self.neg = g.node("CLIPTextEncode", "neg", text="blue sky", clip=self.ck.out(1))
        self.latent = g.node("EmptyLatentImage", "lat", width=64, height=64, batch_size=1)


class Flow:
    def __init__(self, g: Graph):
        self.g = g
        self.model = g.node("TinyFlowModelLoader", "flow")
        self.pos = g.node("TinyFlowConditioning", "fpos", seed=1)
        self.neg = g.node("TinyFlowConditioning", "fneg", seed=2)
        self.latent = g.node("EmptyLatentImage", "flat", width=64, height=64, batch_size=1)


def custom(g, m, node_id, sampler="euler", scheduler="simple", steps=3, seed=7, cfg=4.0, sigmas=None, latent=None,
           noise=None, model=None, sampler_node=None):
    model = model if model is not None else m.model
    noise = noise if noise is not None else g.node("RandomNoise", noise_seed=seed)
    guider = g.node("CFGGuider", model=model, positive=m.pos, negative=m.neg, cfg=cfg)
    sampler_node = sampler_node if sampler_node is not None else g.node("KSamplerSelect", sampler_name=sampler)
    if sigmas is None:
        sigmas = g.node("BasicScheduler", model=model, scheduler=scheduler, steps=steps, denoise=1.0)
    return g.node("SamplerCustomAdvanced", node_id, noise=noise, guider=guider, sampler=sampler_node, sigmas=sigmas,
                  latent_image=latent if latent is not None else m.latent)


def ksampler(g, m, node_id, sampler="euler", scheduler="simple", steps=3, seed=7, cfg=4.0, model=None):
    return g.node("KSampler", node_id, model=model if model is not None else m.model, seed=seed, steps=steps, cfg=cfg,
                  sampler_name=sampler, scheduler=scheduler, positive=m.pos, negative=m.neg, latent_image=m.latent,
                  denoise=1.0)


def preview_all(g: Graph, nodes) -> None:
    for n in nodes:
        g.node("PreviewAny", source=n.out(0))


def samples(result, node_id: str, index: int = 0) -> torch.Tensor:
    return result.value(node_id, index)["samples"]


@pytest.mark.parametrize("family", ["sd1", "flow"])
def test_every_sampler_runs(engine, family):
    g = Graph()
    m = SD(g) if family == "sd1" else Flow(g)
    sigmas = g.node("BasicScheduler", model=m.model, scheduler="simple", steps=4, denoise=1.0)
    noise = g.node("RandomNoise", noise_seed=11)
    nodes = [custom(g, m, f"s_{name}", name, sigmas=sigmas, noise=noise) for name in SAMPLER_NAMES]
    preview_all(g, nodes)
    result = engine.run(g).raise_for_status()
    for name in SAMPLER_NAMES:
        out = samples(result, f"s_{name}")
        assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all(), name
        assert out.std() > 1e-3, name
    assert torch.equal(samples(result, "s_ddim"), samples(result, "s_euler"))  # ComfyUI's ddim is euler
    assert not torch.equal(samples(result, "s_euler"), samples(result, "s_dpmpp_2m"))


@pytest.mark.parametrize("family,sampler,scheduler", [
    ("sd1", "euler", "karras"), ("sd1", "dpmpp_2m", "simple"), ("sd1", "euler_ancestral", "sgm_uniform"),
    ("sd1", "dpmpp_2m_sde", "exponential"), ("sd1", "heun", "beta"), ("sd1", "ddim", "ddim_uniform"),
    ("sd1", "lcm", "linear_quadratic"), ("sd1", "res_multistep", "kl_optimal"),
    ("flow", "euler", "simple"), ("flow", "dpmpp_2m", "normal"), ("flow", "euler_ancestral", "beta")])
def test_ksampler_is_the_custom_sampling_composition(engine, family, sampler, scheduler):
    g = Graph()
    m = SD(g) if family == "sd1" else Flow(g)
    a = ksampler(g, m, "ks", sampler, scheduler, steps=4)
    b = custom(g, m, "custom", sampler, scheduler, steps=4)
    preview_all(g, [a, b])
    result = engine.run(g).raise_for_status()
    assert torch.equal(samples(result, "ks"), samples(result, "custom"))


def test_ksampler_normal_composes_on_a_patched_model(engine):
    """'normal' on the SD checkpoint keeps the diffusers-pipeline path; once a ModelSampling node sets the
    model's sampling, KSampler normal is the core's composition too."""
    g = Graph()
    m = SD(g)
    patched = g.node("ModelSamplingDiscrete", "msd", model=m.model, sampling="eps", zsnr=False)
    a = ksampler(g, m, "ks", "euler", "normal", steps=4, model=patched)
    b = custom(g, m, "custom", "euler", "normal", steps=4, model=patched)
    plain = ksampler(g, m, "plain", "euler", "normal", steps=4)
    preview_all(g, [a, b, plain])
    result = engine.run(g).raise_for_status()
    assert torch.equal(samples(result, "ks"), samples(result, "custom"))
    assert not torch.equal(samples(result, "ks"), samples(result, "plain"))
    torch.testing.assert_close(samples(result, "ks"), samples(result, "plain"), rtol=0.05, atol=0.05 * float(
        samples(result, "plain").abs().max()))  # the same schedule formula, small differences


@pytest.mark.parametrize("family", ["sd1", "flow"])
@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm_2", "ddim"])
def test_split_sigmas_two_stages_equal_one(engine, family, sampler):
    g = Graph()
    m = SD(g) if family == "sd1" else Flow(g)
    sigmas = g.node("BasicScheduler", model=m.model, scheduler="karras", steps=6, denoise=1.0)
    split = g.node("SplitSigmas", sigmas=sigmas, step=3)
    smp = g.node("KSamplerSelect", sampler_name=sampler)
    one = custom(g, m, "one", sigmas=sigmas, sampler_node=smp)
    first = custom(g, m, "first", sigmas=split.out(0), sampler_node=smp)
    second = custom(g, m, "second", sigmas=split.out(1), sampler_node=smp, latent=first.out(0),
                    noise=g.node("DisableNoise"))
    preview_all(g, [one, second])
    result = engine.run(g).raise_for_status()
    ref = samples(result, "one")
    torch.testing.assert_close(samples(result, "second"), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_ksampler_advanced_window_is_split_sigmas(engine):
    g = Graph()
    m = SD(g)
    adv = g.node("KSamplerAdvanced", "adv", model=m.model, add_noise="enable", noise_seed=7, steps=6, cfg=4.0,
                 sampler_name="euler", scheduler="karras", positive=m.pos, negative=m.neg, latent_image=m.latent,
                 start_at_step=0, end_at_step=3, return_with_leftover_noise="enable")
    rest = g.node("KSamplerAdvanced", "rest", model=m.model, add_noise="disable", noise_seed=7, steps=6, cfg=4.0,
                  sampler_name="euler", scheduler="karras", positive=m.pos, negative=m.neg, latent_image=adv,
                  start_at_step=3, end_at_step=10000, return_with_leftover_noise="disable")
    sigmas = g.node("BasicScheduler", model=m.model, scheduler="karras", steps=6, denoise=1.0)
    split = g.node("SplitSigmas", sigmas=sigmas, step=3)
    high = custom(g, m, "high", sigmas=split.out(0))
    full = ksampler(g, m, "full", "euler", "karras", steps=6)
    preview_all(g, [adv, rest, high, full])
    result = engine.run(g).raise_for_status()
    assert torch.equal(samples(result, "adv"), samples(result, "high"))
    ref = samples(result, "full")
    torch.testing.assert_close(samples(result, "rest"), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_samplercustom_and_denoised_output(engine):
    g = Graph()
    m = SD(g)
    sigmas = g.node("BasicScheduler", model=m.model, scheduler="simple", steps=3, denoise=1.0)
    smp = g.node("KSamplerSelect", sampler_name="euler")
    sc = g.node("SamplerCustom", "sc", model=m.model, add_noise=True, noise_seed=7, cfg=4.0, positive=m.pos,
                negative=m.neg, sampler=smp, sigmas=sigmas, latent_image=m.latent)
    adv = custom(g, m, "adv", sigmas=sigmas, sampler_node=smp)
    nonoise = g.node("SamplerCustom", "nonoise", model=m.model, add_noise=False, noise_seed=7, cfg=4.0,
                     positive=m.pos, negative=m.neg, sampler=smp, sigmas=sigmas, latent_image=m.latent)
    preview_all(g, [sc, adv, nonoise])
    g.node("PreviewAny", source=sc.out(1))
    result = engine.run(g).raise_for_status()
    assert torch.equal(samples(result, "sc"), samples(result, "adv"))
    assert torch.equal(samples(result, "sc", 1), samples(result, "adv", 1))
    # the last step ends at sigma 0, where euler's result is the denoised prediction of that step
    torch.testing.assert_close(samples(result, "sc"), samples(result, "sc", 1))
    assert not torch.equal(samples(result, "nonoise"), samples(result, "sc"))


def test_guiders(engine):
    g = Graph()
    m = SD(g)
    sigmas = g.node("BasicScheduler", model=m.model, scheduler="simple", steps=3, denoise=1.0)
    smp = g.node("KSamplerSelect", sampler_name="euler")
    noise = g.node("RandomNoise", noise_seed=3)

    def run(node_id, guider):
        return g.node("SamplerCustomAdvanced", node_id, noise=noise, guider=guider, sampler=smp, sigmas=sigmas,
                      latent_image=m.latent)

    basic = run("basic", g.node("BasicGuider", model=m.model, conditioning=m.pos))
    cfg1 = run("cfg1", g.node("CFGGuider", model=m.model, positive=m.pos, negative=m.neg, cfg=1.0))
    dual_one = run("dual1", g.node("DualCFGGuider", model=m.model, cond1=m.pos, cond2=m.pos, negative=m.neg,
                                   cfg_conds=3.0, cfg_cond2_negative=4.0, style="regular"))
    cfg4 = run("cfg4", g.node("CFGGuider", model=m.model, positive=m.pos, negative=m.neg, cfg=4.0))
    nested = run("nested", g.node("DualCFGGuider", model=m.model, cond1=m.pos, cond2=m.neg, negative=m.neg,
                                  cfg_conds=4.0, cfg_cond2_negative=1.0, style="nested"))
    preview_all(g, [basic, cfg1, dual_one, cfg4, nested])
    result = engine.run(g).raise_for_status()
    assert torch.equal(samples(result, "basic"), samples(result, "cfg1"))  # cfg 1 skips the negative
    ref = samples(result, "cfg4")
    tol = dict(rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # cond1 == cond2: the first scale drops out, the second is plain CFG
    torch.testing.assert_close(samples(result, "dual1"), ref, **tol)
    # nested with cond2 == negative and cfg2 = 1: plain CFG at cfg_conds
    torch.testing.assert_close(samples(result, "nested"), ref, **tol)


def test_noise_scheduler_and_sigma_nodes(engine):
    g = Graph()
    m = SD(g)
    nodes = {
        "basic": g.node("BasicScheduler", model=m.model, scheduler="karras", steps=4, denoise=0.5),
        "karras": g.node("KarrasScheduler", steps=4, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0),
        "exp": g.node("ExponentialScheduler", steps=4, sigma_max=14.614642, sigma_min=0.0291675),
        "poly": g.node("PolyexponentialScheduler", steps=4, sigma_max=14.614642, sigma_min=0.0291675, rho=1.0),
        "laplace": g.node("LaplaceScheduler", steps=4, sigma_max=14.614642, sigma_min=0.0291675, mu=0.0, beta=0.5),
        "vp": g.node("VPScheduler", steps=4, beta_d=19.9, beta_min=0.1, eps_s=0.001),
        "beta": g.node("BetaSamplingScheduler", model=m.model, steps=4, alpha=0.6, beta=0.6),
        "turbo": g.node("SDTurboScheduler", model=m.model, steps=2, denoise=1.0),
        "ays": g.node("AlignYourStepsScheduler", model_type="SD1", steps=10, denoise=1.0),
        "manual": g.node("ManualSigmas", sigmas="14.6, 3.0, 0.5, 0"),
    }
    split = g.node("SplitSigmas", "split", sigmas=nodes["manual"], step=2)
    split_d = g.node("SplitSigmasDenoise", "split_d", sigmas=nodes["manual"], denoise=0.5)
    flip = g.node("FlipSigmas", "flip", sigmas=nodes["manual"])
    first = g.node("SetFirstSigma", "first", sigmas=nodes["manual"], sigma=20.0)
    extend = g.node("ExtendIntermediateSigmas", "extend", sigmas=nodes["manual"], steps=2, start_at_sigma=-1.0,
                    end_at_sigma=2.0, spacing="linear")
    pct = g.node("SamplingPercentToSigma", "pct", model=m.model, sampling_percent=0.0, return_actual_sigma=True)
    pct_mid = g.node("SamplingPercentToSigma", "pct_mid", model=m.model, sampling_percent=0.5, return_actual_sigma=False)
    noisy = g.node("AddNoise", "noisy", model=m.model, noise=g.node("RandomNoise", noise_seed=1), sigmas=nodes["manual"],
                   latent_image=m.latent)
    named = {}
    for key, node in nodes.items():
        named[key] = g.node("PreviewAny", source=node)
    for node in (split, split_d, flip, first, extend, pct, pct_mid, noisy):
        g.node("PreviewAny", source=node.out(0))
    g.node("PreviewAny", source=split.out(1))
    result = engine.run(g).raise_for_status()

    def val(node, i=0):
        return result.value(node.id, i)

    manual = torch.tensor([14.6, 3.0, 0.5, 0.0])
    torch.testing.assert_close(val(nodes["manual"]), manual)
    assert len(val(nodes["basic"])) == 5 and len(val(nodes["karras"])) == 5 and len(val(nodes["ays"])) == 11
    assert float(val(nodes["karras"])[0]) == pytest.approx(14.614642) and float(val(nodes["exp"])[-2]) == pytest.approx(0.0291675)
    assert len(val(nodes["poly"])) == 5 and len(val(nodes["laplace"])) == 4 and len(val(nodes["vp"])) == 5
    assert len(val(nodes["beta"])) <= 5 and len(val(nodes["turbo"])) == 3
    torch.testing.assert_close(val(split), manual[:3])
    torch.testing.assert_close(val(split, 1), manual[2:])
    torch.testing.assert_close(val(split_d, 1), manual[1:])
    torch.testing.assert_close(val(flip), torch.tensor([0.0001, 0.5, 3.0, 14.6]))
    assert float(val(first)[0]) == 20.0 and len(val(extend)) == 6
    assert val(pct) == pytest.approx(14.614642, rel=1e-6)
    assert 0.5 < val(pct_mid) < 3.0
    lat = val(noisy)["samples"]
    assert lat.shape == (1, 4, 8, 8) and 5 < float(lat.std() * 0.18215) < 25  # noise at |14.6 - 0| in model space


def test_sampler_option_nodes_run(engine):
    g = Graph()
    m = SD(g)
    sigmas = g.node("BasicScheduler", model=m.model, scheduler="karras", steps=3, denoise=1.0)
    noise = g.node("RandomNoise", noise_seed=5)
    options = {
        "SamplerEulerAncestral": dict(eta=0.5, s_noise=1.0),
        "SamplerEulerAncestralCFGPP": dict(eta=1.0, s_noise=1.0),
        "SamplerEulerCFGpp": dict(version="alternative"),
        "SamplerLMS": dict(order=3),
        "SamplerDPMPP_3M_SDE": dict(eta=1.0, s_noise=1.0, noise_device="cpu"),
        "SamplerDPMPP_2M_SDE": dict(solver_type="heun", eta=1.0, s_noise=1.0, noise_device="gpu"),
        "SamplerDPMPP_SDE": dict(eta=1.0, s_noise=1.0, r=0.5, noise_device="cpu"),
        "SamplerDPMPP_2S_Ancestral": dict(eta=1.0, s_noise=1.0),
        "SamplerDPMAdaptative": dict(order=2, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
                                     accept_safety=0.81, eta=0.0, s_noise=1.0),
        "SamplerER_SDE": dict(solver_type="Reverse-time SDE", max_stage=2, eta=0.5, s_noise=1.0),
        "SamplerSASolver": dict(model=m.model, eta=1.0, sde_start_percent=0.2, sde_end_percent=0.8, s_noise=1.0,
                                predictor_order=2, corrector_order=2, use_pece=True, simple_order_2=False),
        "SamplerLCM": dict(s_noise=1.0, s_noise_end=0.5, noise_clip_std=2.0),
    }
    outs = [custom(g, m, f"o_{name}", sigmas=sigmas, noise=noise, sampler_node=g.node(name, **kw))
            for name, kw in options.items()]
    plain_ea = custom(g, m, "plain_ea", "euler_ancestral", sigmas=sigmas, noise=noise)
    preview_all(g, outs + [plain_ea])
    result = engine.run(g).raise_for_status()
    for name in options:
        out = samples(result, f"o_{name}")
        assert torch.isfinite(out).all() and out.std() > 1e-3, name
    assert not torch.equal(samples(result, "o_SamplerEulerAncestral"), samples(result, "plain_ea"))  # eta 0.5


def test_model_patches(engine):
    g = Graph()
    m = SD(g)
    f = Flow(g)
    patches = {
        "v": g.node("ModelSamplingDiscrete", model=m.model, sampling="v_prediction", zsnr=True),
        "lcm": g.node("ModelSamplingDiscrete", model=m.model, sampling="lcm", zsnr=False),
        "x0": g.node("ModelSamplingDiscrete", model=m.model, sampling="x0", zsnr=False),
        "edm": g.node("ModelSamplingContinuousEDM", model=m.model, sampling="edm", sigma_max=80.0, sigma_min=0.002),
        "cv": g.node("ModelSamplingContinuousV", model=m.model, sampling="v_prediction", sigma_max=500.0, sigma_min=0.03),
        "rescale": g.node("RescaleCFG", model=m.model, multiplier=0.7),
        "norm": g.node("CFGNorm", model=m.model, strength=1.0),
        "zero": g.node("CFGZeroStar", model=m.model),
        "sd3": g.node("ModelSamplingSD3", model=f.model, shift=3.0),
        "aura": g.node("ModelSamplingAuraFlow", model=f.model, shift=1.73, sampling="flow"),
        "flux": g.node("ModelSamplingFlux", model=f.model, max_shift=1.15, base_shift=0.5, width=64, height=64),
    }
    outs = []
    for key, model in patches.items():
        mm = f if key in ("sd3", "aura", "flux") else m
        outs.append(ksampler(g, mm, f"k_{key}", "euler", "simple", steps=3, model=model))
    base = ksampler(g, m, "k_base", "euler", "simple", steps=3)
    fbase = ksampler(g, f, "k_fbase", "euler", "simple", steps=3)
    pcts = {k: g.node("SamplingPercentToSigma", f"p_{k}", model=patches[k], sampling_percent=0.0, return_actual_sigma=True)
            for k in ("edm", "cv", "sd3", "aura", "flux", "lcm")}
    preview_all(g, outs + [base, fbase] + list(pcts.values()))
    result = engine.run(g).raise_for_status()
    for key in patches:
        out = samples(result, f"k_{key}")
        assert torch.isfinite(out).all(), key
        ref = samples(result, "k_fbase" if key in ("sd3", "aura", "flux") else "k_base")
        if key != "sd3":  # the tiny flow model's own sampling is SD3 shift 3
            assert not torch.equal(out, ref), key
    assert torch.equal(samples(result, "k_sd3"), samples(result, "k_fbase"))
    assert result.value("p_edm", 0) == pytest.approx(80.0, rel=1e-5)
    assert result.value("p_cv", 0) == pytest.approx(500.0, rel=1e-5)
    assert result.value("p_sd3", 0) == pytest.approx(1.0) and result.value("p_aura", 0) == pytest.approx(1.0)
    assert result.value("p_lcm", 0) == pytest.approx(14.614641, rel=1e-5)


def test_model_sampling_edm_playground_is_a_clear_error(engine):
    g = Graph()
    m = SD(g)
    p = g.node("ModelSamplingContinuousEDM", "pg", model=m.model, sampling="edm_playground_v2.5", sigma_max=80.0,
               sigma_min=0.002)
    g.node("PreviewAny", source=p)
    failure = engine.run(g).failure
    assert failure is not None and failure.node_id == "pg" and "latent format" in failure.exception_message


def test_model_sampling_aura_flow_img_to_img_velocity_is_a_clear_error(engine):
    """Today's ComfyUI offers 'img_to_img_velocity' (Marigold v2); it validates (templates save it) and
    fails at run time naming the input."""
    g = Graph()
    f = Flow(g)
    p = g.node("ModelSamplingAuraFlow", "au", model=f.model, shift=1.73, sampling="img_to_img_velocity")
    g.node("PreviewAny", source=p)
    failure = engine.run(g).failure
    assert failure is not None and failure.node_id == "au"
    assert "ModelSamplingAuraFlow.sampling" in failure.exception_message and "'flow'" in failure.exception_message


# -- conditioning and inpainting through the core (karras: not the diffusers path) --------------------

def _cond_run(engine, extra, scheduler="karras"):
    g = Graph()
    m = SD(g)
    pos = extra(g, m.pos, m.ck.out(1))
    ks = g.node("KSampler", "ks", model=m.model, seed=3, steps=4, cfg=5.0, sampler_name="euler", scheduler=scheduler,
                positive=pos, negative=m.neg, latent_image=g.node("EmptyLatentImage", width=128, height=64, batch_size=1),
                denoise=1.0)
    g.node("PreviewAny", source=ks)
    return engine.run(g).raise_for_status().value("ks")["samples"]


def test_area_and_timestep_range_conditioning(engine):
    def area(x):
        def extra(g, pos, clip):
            other = g.node("CLIPTextEncode", text="a blue house", clip=clip)
            a = g.node("ConditioningSetArea", conditioning=other, width=64, height=64, x=x, y=0, strength=1.0)
            return g.node("ConditioningCombine", conditioning_1=pos, conditioning_2=a)
        return extra

    def ranged(start, end):
        def extra(g, pos, clip):
            other = g.node("CLIPTextEncode", text="a blue house", clip=clip)
            r = g.node("ConditioningSetTimestepRange", conditioning=other, start=start, end=end)
            return g.node("ConditioningCombine", conditioning_1=pos, conditioning_2=r)
        return extra

    base = _cond_run(engine, lambda g, pos, clip: pos)
    right = _cond_run(engine, area(64))
    d = (right - base).abs()
    assert d.max() > 1e-3 and d[..., 8:].mean() > d[..., :4].mean()  # mostly where the area is
    full = _cond_run(engine, ranged(0.0, 1.0))
    never = _cond_run(engine, ranged(1.0, 1.0))
    early = _cond_run(engine, ranged(0.0, 0.5))
    assert (full - base).abs().max() > 1e-3
    assert (never - base).abs().max() < 0.01 * (full - base).abs().max()  # outside its range: as if absent
    assert not torch.allclose(early, full) and not torch.allclose(early, base)


def test_inpainting_keeps_the_unmasked_latent(engine):
    g = Graph()
    m = SD(g)
    src = g.node("RandomNoise", noise_seed=2)
    filled = g.node("AddNoise", "filled", model=m.model, noise=src, sigmas=g.node("ManualSigmas", sigmas="1, 0"),
                    latent_image=m.latent)
    mask = g.node("SolidMask", value=0.0, width=64, height=64)
    hole = g.node("MaskComposite", destination=mask, source=g.node("SolidMask", value=1.0, width=32, height=32),
                  x=16, y=16, operation="add")
    masked = g.node("SetLatentNoiseMask", samples=filled, mask=hole)
    outs = []
    for sampler in ("euler", "ddim", "dpmpp_2m"):
        outs.append(g.node("KSampler", f"ks_{sampler}", model=m.model, seed=1, steps=3, cfg=5.0, sampler_name=sampler,
                           scheduler="karras", positive=m.pos, negative=m.neg, latent_image=masked, denoise=1.0))
    preview_all(g, outs + [filled])
    result = engine.run(g).raise_for_status()
    before = samples(result, "filled")
    for sampler in ("euler", "ddim", "dpmpp_2m"):
        out = samples(result, f"ks_{sampler}")
        torch.testing.assert_close(out[..., :2, :], before[..., :2, :], rtol=1e-5, atol=1e-5)  # rows outside the hole
        assert (out[..., 3:5, 3:5] - before[..., 3:5, 3:5]).abs().max() > 1e-2  # inside: sampled
