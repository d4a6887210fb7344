"""The speed and guidance model patches (issue 18 point 4): EasyCache, LazyCache, FreeU, FreeU_V2,
PerturbedAttentionGuidance, SelfAttentionGuidance, DifferentialDiffusion, ModelAttentionBackend and
TorchCompileModel — their /object_info against ComfyUI's facts, and each run in a graph on the tiny SD 1.x
model (and the tiny flow transformer where the patch applies to it) showing its effect: steps skipped and
counted, neutral settings equal to the unpatched model, the input MODEL and the shared network left as
they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from nodegraph_nodes.sampling import attention_guidance as ag
from nodegraph_nodes.sampling.differential_diffusion import DifferentialMask
from nodegraph_nodes.sampling.freeu import fourier_filter
from nodegraph_nodes.sampling.model_sampling import discrete
from nodegraph_nodes.sampling.speed_patches import TorchCompilePatch

from tests.sampling.test_sampling_nodes import SD, Flow, ksampler, preview_all, samples

FACTS = json.loads((Path(__file__).resolve().parents[1] / "data" / "comfy_node_specs.json").read_text())["nodes"]
FROM_FACTS = ["TorchCompileModel", "EasyCache", "FreeU", "FreeU_V2", "PerturbedAttentionGuidance",
              "SelfAttentionGuidance", "DifferentialDiffusion"]


@pytest.mark.parametrize("name", FROM_FACTS)
def test_object_info_matches_comfyui_facts(name):
    fact = FACTS[name]
    info = default_registry(packs=False).object_info(name)[name]
    assert info["category"] == fact["category"]
    assert info["output"] == fact["outputs"] and info["output_name"] == fact["output_names"]
    for section in ("required", "optional"):
        ours = info["input"].get(section, {})
        assert list(ours) == list(fact[section]), section
        for key, spec in fact[section].items():
            head, options = ours[key]
            assert (head if isinstance(head, str) else "COMBO") == spec["type"], key
            if "options" in spec:
                assert head == spec["options"], key
            for field in ("default", "min", "max", "step"):
                if field in spec:
                    assert options[field] == spec[field], (key, field)


def test_object_info_of_the_newer_nodes():
    info = default_registry(packs=False).object_info()
    lazy, easy = info["LazyCache"], info["EasyCache"]
    assert lazy["input"] == {**easy["input"], "required": {
        **{k: v for k, v in easy["input"]["required"].items()},
        "model": ["MODEL", {"tooltip": "The model to add LazyCache to."}],
        "start_percent": ["FLOAT", {**easy["input"]["required"]["start_percent"][1],
                                    "tooltip": "The relative sampling step to begin use of LazyCache."}],
        "end_percent": ["FLOAT", {**easy["input"]["required"]["end_percent"][1],
                                  "tooltip": "The relative sampling step to end use of LazyCache."}]}}
    backend = info["ModelAttentionBackend"]
    assert list(backend["input"]["required"]) == ["model", "attention"]
    assert backend["input"]["required"]["attention"][0][:2] == ["pytorch attention", "comfy kitchen attention"]
    assert backend["input"]["required"]["attention"][1]["default"] == "pytorch attention"
    assert backend["output"] == ["MODEL"]


def assert_near(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to float error on the scale of the latents (the tiny random SD model's reach hundreds)."""
    assert (a - b).abs().max() <= rel * b.abs().max(), float((a - b).abs().max() / b.abs().max())


def _run(engine, build):
    g = Graph()
    nodes = build(g)
    preview_all(g, list(nodes.values()))
    result = engine.run(g).raise_for_status()
    return result, {key: samples(result, f"k_{key}") for key in nodes}


def _patched_runs(engine, family, patches: dict, steps=3, cfg=4.0, scheduler="simple"):
    """KSampler on the unpatched model (``base``) and on each ``patches[key](g, model)``."""
    def build(g):
        m = SD(g) if family == "sd1" else Flow(g)
        out = {"base": ksampler(g, m, "k_base", "euler", scheduler, steps=steps, cfg=cfg)}
        for key, make in patches.items():
            out[key] = ksampler(g, m, f"k_{key}", "euler", scheduler, steps=steps, cfg=cfg, model=make(g, m.model))
        return out
    return _run(engine, build)


def _patch_of(result, node_id: str, cls):
    (patch,) = [p for p in result.value(node_id).sampling_patches.model_patches if isinstance(p, cls)]
    return patch


# -- step caching -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd1", "flow"])
@pytest.mark.parametrize("node", ["EasyCache", "LazyCache"])
def test_step_cache_skips_steps_and_counts_them(engine, family, node):
    from nodegraph_nodes.sampling.step_cache import EasyCachePatch, LazyCachePatch

    def cache(threshold, node_id):
        return lambda g, model: g.node(node, node_id, model=model, reuse_threshold=threshold, start_percent=0.0,
                                       end_percent=1.0, verbose=threshold > 1)
    result, out = _patched_runs(engine, family, {"off": cache(0.0, "c0"), "on": cache(3.0, "c3")}, steps=12)
    cls = EasyCachePatch if node == "EasyCache" else LazyCachePatch
    off, on = _patch_of(result, "c0", cls).last_stats, _patch_of(result, "c3", cls).last_stats
    assert off.steps == on.steps == 12
    assert off.skipped == 0 and torch.equal(out["off"], out["base"])  # threshold 0: nothing is reused
    assert on.skipped >= 3 and on.speedup > 1.3  # threshold 3: most judged steps reuse the residual
    assert not torch.equal(out["on"], out["base"])
    assert torch.isfinite(out["on"]).all()


def test_easycache_window_and_patched_copy(engine):
    """Outside start/end percent nothing is judged; the input MODEL keeps no patch."""
    def build(g):
        m = SD(g)
        late = g.node("EasyCache", "late", model=m.model, reuse_threshold=3.0, start_percent=1.0, end_percent=1.0,
                      verbose=True)
        return {"base": ksampler(g, m, "k_base", "euler", "simple", steps=6),
                "late": ksampler(g, m, "k_late", "euler", "simple", steps=6, model=late)}
    result, out = _run(engine, build)
    assert torch.equal(out["late"], out["base"])
    assert result.value("ck").sampling_patches.model_patches == ()


# -- FreeU ---------------------------------------------------------------------------------------------

def test_fourier_filter_is_diffusers_one():
    from diffusers.utils.torch_utils import fourier_filter as reference

    x = torch.randn(2, 8, 12, 10, generator=torch.Generator().manual_seed(0))
    for scale in (0.2, 0.9):
        torch.testing.assert_close(fourier_filter(x, 1, scale), reference(x, 1, scale), rtol=1e-5, atol=1e-5)


def test_freeu_junction_is_diffusers_apply_freeu():
    """One decoder junction as diffusers computes it (FreeU v1); *where* it applies is ComfyUI's rule
    (backbone width 4x / 2x the first block width), not diffusers' first two up stages."""
    from diffusers.utils.torch_utils import apply_freeu

    from nodegraph_nodes.sampling.freeu import freeu_pair

    g = torch.Generator().manual_seed(3)
    h, hsp = torch.randn(2, 64, 8, 8, generator=g), torch.randn(2, 32, 8, 8, generator=g)
    ours = freeu_pair(h, hsp, 1.3, 0.4, v2=False)
    ref = apply_freeu(0, h.clone(), hsp.clone(), b1=1.3, s1=0.4, b2=1.0, s2=1.0)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_freeu_hooks_the_junctions_comfyui_names(tiny_sd):
    from nodegraph_nodes.sampling.freeu import _decoder_junctions

    widths = [w for _, w in _decoder_junctions(tiny_sd.unet)]
    assert widths == [64, 64, 64, 32]  # block widths (32, 64), 2 resnets per up block: b2/s2 on the first three
    for resnet, width in _decoder_junctions(tiny_sd.unet):
        assert resnet.in_channels > width  # the rest of the input is the skip features


def test_freeu_neutral_equals_unpatched_and_defaults_change_the_image(engine):
    def freeu(node, **values):
        return lambda g, model: g.node(node, model=model, **values)
    result, out = _patched_runs(engine, "sd1", {
        "one": freeu("FreeU", b1=1.0, b2=1.0, s1=1.0, s2=1.0),
        "one_v2": freeu("FreeU_V2", b1=1.0, b2=1.0, s1=1.0, s2=1.0),
        "v1": freeu("FreeU", b1=1.1, b2=1.2, s1=0.9, s2=0.2),
        "v2": freeu("FreeU_V2", b1=1.3, b2=1.4, s1=0.9, s2=0.2),
        "neutral_then_v1": lambda g, model: g.node(
            "FreeU", model=g.node("FreeU", model=model, b1=1.0, b2=1.0, s1=1.0, s2=1.0), b1=1.1, b2=1.2, s1=0.9, s2=0.2),
        "v1_twice": lambda g, model: g.node(
            "FreeU", model=g.node("FreeU", model=model, b1=1.1, b2=1.2, s1=0.9, s2=0.2), b1=1.1, b2=1.2, s1=0.9, s2=0.2)})
    assert_near(out["one"], out["base"])  # b = s = 1: only the FFT round trip's float error
    assert_near(out["one_v2"], out["base"])
    for key in ("v1", "v2"):
        assert (out[key] - out["base"]).abs().max() > 1e-3, key
    assert (out["v1"] - out["v2"]).abs().max() > 1e-4
    assert_near(out["neutral_then_v1"], out["v1"])  # FreeU nodes stack (as in ComfyUI) …
    assert (out["v1_twice"] - out["v1"]).abs().max() > 1e-3  # … and both apply
    # the shared UNet is unhooked after the patched runs
    model = result.value("ck")
    with engine.services["models"].use(model.handle, "cpu") as unet:
        assert all(not r._forward_pre_hooks for block in unet.up_blocks for r in block.resnets)


def test_freeu_on_a_transformer_is_a_clear_error(engine):
    g = Graph()
    f = Flow(g)
    ks = ksampler(g, f, "ks", model=g.node("FreeU", model=f.model, b1=1.1, b2=1.2, s1=0.9, s2=0.2))
    g.node("PreviewAny", source=ks)
    failure = engine.run(g).failure
    assert failure is not None and "FreeU.model: works on UNet models" in failure.exception_message


# -- PAG and SAG --------------------------------------------------------------------------------------

def test_perturbed_attention_guidance(engine, tiny_sd):
    def pag(scale):
        return lambda g, model: g.node("PerturbedAttentionGuidance", model=model, scale=scale)
    _, out = _patched_runs(engine, "sd1", {"zero": pag(0.0), "three": pag(3.0)})
    assert torch.equal(out["zero"], out["base"])
    assert (out["three"] - out["base"]).abs().max() > 1e-3
    # what PAG perturbs: the middle block's self-attention becomes to_out(to_v(x))
    attn = tiny_sd.unet.mid_block.attentions[0].transformer_blocks[0].attn1
    x = torch.randn(2, 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(1))
    run = type("Run", (), {"options": {ag.PERTURB: True}})()
    with torch.no_grad(), ag.swapped_processors([attn], lambda original: ag.PerturbedProcessor(original, run)):
        perturbed = attn(x)
        run.options = {}
        plain = attn(x)
    torch.testing.assert_close(perturbed, attn.to_out[0](attn.to_v(x)).detach())
    torch.testing.assert_close(plain, attn(x).detach())
    assert not isinstance(attn.processor, ag.PerturbedProcessor)  # restored


def test_self_attention_guidance(engine):
    def sag(scale, blur=2.0):
        return lambda g, model: g.node("SelfAttentionGuidance", model=model, scale=scale, blur_sigma=blur)
    result, out = _patched_runs(engine, "sd1", {"zero": sag(0.0), "half": sag(0.5)}, cfg=4.0)
    assert_near(out["zero"], out["base"])  # only explicit vs SDPA attention's float error
    assert (out["half"] - out["base"]).abs().max() > 1e-3
    # at cfg 1 the negative is still computed (ComfyUI's disable_cfg1_optimization)
    _, out1 = _patched_runs(engine, "sd1", {"sag": sag(0.5)}, cfg=1.0)
    assert (out1["sag"] - out1["base"]).abs().max() > 1e-3
    with engine.services["models"].use(result.value("ck").handle, "cpu") as unet:  # processors restored
        assert not any(isinstance(p, (ag.RecordingProcessor, ag.PerturbedProcessor)) for p in unet.attn_processors.values())


def test_sag_blur_map():
    x0 = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(2))
    n = 2 * 4  # tokens of a 2x4 grid
    probs = torch.full((2, n, n), 1.0 / n)  # 2 heads, uniform: every key gets exactly 1 → not above 1
    torch.testing.assert_close(ag.blur_map(x0, probs, 2.0), x0)
    probs[:, :, 0] += 1.0  # every query attends much to key 0 (top-left cell)
    out = ag.blur_map(x0, probs, 2.0)
    torch.testing.assert_close(out[..., 4:, :], x0[..., 4:, :])  # lower half untouched
    torch.testing.assert_close(out[..., :4, :4], ag.gaussian_blur(x0, 9, 2.0)[..., :4, :4])
    assert ag._grid_rows(12, 0.75) == 3 and ag._grid_rows(16, 1.0) == 4


def test_attention_guidance_on_a_transformer_is_a_clear_error(engine):
    g = Graph()
    f = Flow(g)
    ks = ksampler(g, f, "ks", model=g.node("PerturbedAttentionGuidance", model=f.model, scale=3.0))
    g.node("PreviewAny", source=ks)
    failure = engine.run(g).failure
    assert failure is not None and "PerturbedAttentionGuidance.model: works on UNet models" in failure.exception_message


# -- DifferentialDiffusion ------------------------------------------------------------------------------

def test_differential_mask_thresholds():
    ms = discrete("eps")
    sigmas = torch.tensor([10.0, 5.0, 1.0, 0.0])
    mask = torch.linspace(0, 1, 11).reshape(1, 1, 1, 11)
    full = DifferentialMask(1.0)
    assert float(full.threshold(sigmas[0], sigmas, ms)) == pytest.approx(1.0)
    assert full(sigmas[0], mask, sigmas, ms).sum() == 1  # only mask 1 is denoised from the start
    last = float(ms.sigma_min)
    assert float(full.threshold(torch.tensor(last), sigmas, ms)) == pytest.approx(0.0, abs=1e-6)
    mid = full(sigmas[1], mask, sigmas, ms)
    assert set(mid.unique().tolist()) <= {0.0, 1.0} and 1 < mid.sum() < 11
    torch.testing.assert_close(DifferentialMask(0.25)(sigmas[1], mask, sigmas, ms), 0.25 * mid + 0.75 * mask)
    torch.testing.assert_close(DifferentialMask(0.0)(sigmas[1], mask, sigmas, ms), mid)  # ComfyUI: 0 counts as 1


def test_differential_diffusion_inpaints_by_mask_value(engine):
    def build(g):
        m = SD(g)
        src = g.node("RandomNoise", noise_seed=2)
        filled = g.node("AddNoise", model=m.model, noise=src, sigmas=g.node("ManualSigmas", sigmas="1, 0"),
                        latent_image=m.latent)
        soft = g.node("SolidMask", value=0.5, width=64, height=64)
        full = g.node("MaskComposite", destination=soft, source=g.node("SolidMask", value=1.0, width=32, height=64),
                      x=0, y=0, operation="add")  # left half 1, right half 0.5
        masked = g.node("SetLatentNoiseMask", samples=filled, mask=full)
        dd = g.node("DifferentialDiffusion", model=m.model, strength=1.0)
        out = {}
        for key, model in (("base", m.model), ("dd", dd)):
            out[key] = g.node("KSampler", f"k_{key}", model=model, seed=1, steps=4, cfg=5.0, sampler_name="euler",
                              scheduler="karras", positive=m.pos, negative=m.neg, latent_image=masked, denoise=1.0)
        out["filled"] = filled
        g.node("PreviewAny", source=filled)
        return out
    g = Graph()
    nodes = build(g)
    preview_all(g, [nodes["base"], nodes["dd"]])
    result = engine.run(g).raise_for_status()
    base, dd = samples(result, "k_base"), samples(result, "k_dd")
    assert (dd - base).abs()[..., 4:].max() > 1e-2  # the soft half: sampled from a later step
    assert torch.isfinite(dd).all()


# -- ModelAttentionBackend and TorchCompileModel --------------------------------------------------------

@pytest.mark.parametrize("family", ["sd1", "flow"])
def test_model_attention_backend(engine, family):
    def backend(choice):
        return lambda g, model: g.node("ModelAttentionBackend", model=model, attention=choice)
    _, out = _patched_runs(engine, family, {"default": backend("pytorch attention"),
                                            "kitchen": backend("comfy kitchen attention"),
                                            "math": backend("pytorch math attention")})
    assert torch.equal(out["default"], out["base"])
    assert torch.equal(out["kitchen"], out["base"])  # not available here: PyTorch attention, as in ComfyUI
    assert_near(out["math"], out["base"])


def test_model_attention_backend_that_cannot_run_is_a_clear_error(engine):
    g = Graph()
    m = SD(g)
    ks = ksampler(g, m, "ks", model=g.node("ModelAttentionBackend", model=m.model,
                                            attention="pytorch memory efficient attention"))
    g.node("PreviewAny", source=ks)
    failure = engine.run(g).failure
    assert failure is not None and "ModelAttentionBackend.attention" in failure.exception_message


def test_torch_compile_patch_equals_uncompiled(engine):
    """The patch's mechanics with dynamo's cheap ``eager`` backend: same output, forward restored."""
    from tests.sampling.flow_model import tiny_flow_model

    def build(g):
        f = Flow(g)
        return {"base": ksampler(g, f, "k_base", "euler", "simple", steps=2)}
    _, out = _run(engine, build)
    model = tiny_flow_model()
    patch = TorchCompilePatch("eager")
    patched = model.with_sampling_patches(model.sampling_patches.with_model_patch(patch))
    from nodegraph_nodes.sampling import guiders, run
    from nodegraph_nodes.sampling.noise import RandomNoise
    from nodegraph_nodes.sampling.samplers import sampler_object
    from nodegraph_nodes.sampling.sigmas import ksampler_sigmas
    from tests.sampling.flow_model import flow_conditioning

    ctx = type("Ctx", (), {"device": "cpu", "check_interrupted": lambda self: None, "preview": lambda self, x: None,
                           "progress": lambda self, a, b: None})()
    sigmas = ksampler_sigmas(patched.model_sampling, "euler", "simple", 2, 1.0)
    guider = guiders.CFGGuider(patched, flow_conditioning(1), flow_conditioning(2), 4.0)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    got = run.sample(ctx, guider, sampler_object("euler"), sigmas, latent, RandomNoise(7)).output["samples"]
    assert_near(got, out["base"])
    assert len(patch.compiled) == 1 and "forward" not in vars(model.net)


@pytest.mark.slow
def test_torch_compile_model_node_inductor(engine):
    _, out = _patched_runs(engine, "flow", {
        "compiled": lambda g, model: g.node("TorchCompileModel", model=model, backend="inductor")}, steps=2)
    assert_near(out["compiled"], out["base"], 1e-4)
