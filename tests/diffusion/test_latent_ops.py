"""The latent arithmetic and layout nodes (nodes/diffusion/latent_ops.py): /object_info entries against
ComfyUI's specs (written out below), each node called with a test context on small latents whose
expected values are written out or follow from ComfyUI's formulas, and a graph through the engine."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.context import NodeContext, Paths, RunContext
from nodegraph.events import EventBus
from nodegraph.registry import default_registry
from nodegraph_nodes.diffusion import latent_ops as lo

MAX = 16384
L = ["LATENT", {}]
POS8 = ["INT", {"default": 0, "min": 0, "max": MAX, "step": 8}]

# name → (category, required, optional, outputs), as ComfyUI's /object_info writes them
COMFY_SPECS = {
    "LatentComposite": ("latent", {"samples_to": L, "samples_from": L, "x": POS8, "y": POS8, "feather": POS8}, {},
                        ["LATENT"]),
    "LatentCompositeMasked": ("latent", {"destination": L, "source": L, "x": POS8, "y": POS8,
                                         "resize_source": ["BOOLEAN", {"default": False}]},
                              {"mask": ["MASK", {}]}, ["LATENT"]),
    "LatentBlend": ("_for_testing", {"samples1": L, "samples2": L,
                                     "blend_factor": ["FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01}]},
                    {}, ["LATENT"]),
    "LatentAdd": ("latent/advanced", {"samples1": L, "samples2": L}, {}, ["LATENT"]),
    "LatentSubtract": ("latent/advanced", {"samples1": L, "samples2": L}, {}, ["LATENT"]),
    "LatentMultiply": ("latent/advanced", {"samples": L, "multiplier": [
        "FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}]}, {}, ["LATENT"]),
    "LatentInterpolate": ("latent/advanced", {"samples1": L, "samples2": L, "ratio": [
        "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]}, {}, ["LATENT"]),
    "LatentBatch": ("latent/batch", {"samples1": L, "samples2": L}, {}, ["LATENT"]),
    "LatentConcat": ("latent/advanced", {"samples1": L, "samples2": L, "dim": [
        ["x", "-x", "y", "-y", "t", "-t"], {"default": "x"}]}, {}, ["LATENT"]),
    "LatentCrop": ("latent/transform", {"samples": L,
                                        "width": ["INT", {"default": 512, "min": 64, "max": MAX, "step": 8}],
                                        "height": ["INT", {"default": 512, "min": 64, "max": MAX, "step": 8}],
                                        "x": POS8, "y": POS8}, {}, ["LATENT"]),
    "LatentFlip": ("latent/transform", {"samples": L, "flip_method": [
        ["x-axis: vertically", "y-axis: horizontally"], {"default": "x-axis: vertically"}]}, {}, ["LATENT"]),
    "LatentRotate": ("latent/transform", {"samples": L, "rotation": [
        ["none", "90 degrees", "180 degrees", "270 degrees"], {"default": "none"}]}, {}, ["LATENT"]),
    "LatentCut": ("latent/advanced", {"samples": L, "dim": [["x", "y", "t"], {"default": "x"}],
                                      "index": ["INT", {"default": 0, "min": -MAX, "max": MAX, "step": 1}],
                                      "amount": ["INT", {"default": 1, "min": 1, "max": MAX, "step": 1}]},
                  {}, ["LATENT"]),
    "LatentCutToBatch": ("latent/advanced", {"samples": L, "dim": [["t", "x", "y"], {"default": "t"}],
                                             "slice_size": ["INT", {"default": 1, "min": 1, "max": MAX, "step": 1}]},
                         {}, ["LATENT"]),
    "LatentBatchSeedBehavior": ("latent/advanced", {"samples": L, "seed_behavior": [
        ["random", "fixed"], {"default": "fixed"}]}, {}, ["LATENT"]),
    "LatentApplyOperation": ("latent/advanced/operations", {"samples": L, "operation": ["LATENT_OPERATION", {}]},
                             {}, ["LATENT"]),
    "LatentApplyOperationCFG": ("latent/advanced/operations", {"model": ["MODEL", {}],
                                                               "operation": ["LATENT_OPERATION", {}]},
                                {"start_percent": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}],
                                 "end_percent": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}]},
                                ["MODEL"]),
    "LatentOperationTonemapReinhard": ("latent/advanced/operations", {"multiplier": [
        "FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}]}, {}, ["LATENT_OPERATION"]),
    "LatentOperationSharpen": ("latent/advanced/operations", {
        "sharpen_radius": ["INT", {"default": 9, "min": 1, "max": 31, "step": 1}],
        "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}],
        "alpha": ["FLOAT", {"default": 0.1, "min": 0.0, "max": 5.0, "step": 0.01}]}, {}, ["LATENT_OPERATION"]),
}


def _no_tooltips(section: dict) -> dict:
    return {k: [v[0], {o: x for o, x in v[1].items() if o != "tooltip"}] for k, v in section.items()}


@pytest.mark.parametrize("name", sorted(COMFY_SPECS))
def test_object_info_matches_comfyui(name):
    category, required, optional, output = COMFY_SPECS[name]
    info = default_registry(packs=False).object_info(name)[name]
    assert info["category"] == category
    assert _no_tooltips(info["input"]["required"]) == required
    assert info["input_order"]["required"] == list(required)
    assert _no_tooltips(info["input"].get("optional", {})) == optional
    assert info["output"] == output


@pytest.fixture
def make(tmp_path):
    run = RunContext(prompt_id="t", bus=EventBus(), interrupt=threading.Event(), paths=Paths.under(tmp_path))

    def factory(cls):
        return cls(NodeContext(run, "1", cls.__name__))
    return factory


def lat(t: torch.Tensor, **extra) -> dict:
    return {"samples": t, **extra}


def grid(b=1, c=2, h=4, w=4) -> torch.Tensor:
    return torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)


# -- composite / blend -------------------------------------------------------------------------------

def test_latent_composite_pastes_and_feathers(make):
    dest = torch.zeros(1, 1, 4, 6)
    src = torch.ones(1, 1, 2, 2)
    (out,) = make(lo.LatentComposite).execute(lat(dest, noise_mask="kept"), lat(src), 16, 8, 0)
    expected = torch.zeros(1, 1, 4, 6)
    expected[..., 1:3, 2:4] = 1.0
    assert torch.equal(out["samples"], expected) and out["noise_mask"] == "kept"
    # feather 8 px = one cell: the pasted border is weighted 1/1 … (a one-cell feather keeps full weight)
    (one,) = make(lo.LatentComposite).execute(lat(dest), lat(src), 16, 8, 8)
    assert torch.equal(one["samples"], expected)
    # feather 16 px = two cells on a 4×4 source inside a 6×8 destination: edge cells weigh 1/2, inner 1
    big = torch.ones(1, 1, 4, 4)
    (two,) = make(lo.LatentComposite).execute(lat(torch.zeros(1, 1, 6, 8)), lat(big), 16, 8, 16)
    region = two["samples"][0, 0, 1:5, 2:6]
    assert region[0, 0] == pytest.approx(0.25) and region[1, 1] == pytest.approx(1.0)
    assert region[0, 1] == pytest.approx(0.5) and region[1, 0] == pytest.approx(0.5)
    # a source running past the edge is cut to fit
    (edge,) = make(lo.LatentComposite).execute(lat(torch.zeros(1, 1, 4, 4)), lat(torch.ones(1, 1, 4, 4)), 16, 16, 0)
    assert edge["samples"].sum() == 4 and edge["samples"][0, 0, 2:, 2:].eq(1).all()
    with pytest.raises(ValueError, match="outside samples_to"):
        make(lo.LatentComposite).execute(lat(dest), lat(src), 48, 0, 0)


def test_latent_composite_masked(make):
    dest = torch.zeros(2, 1, 4, 4)
    src = torch.full((1, 1, 2, 2), 2.0)
    mask = torch.tensor([[[1.0, 0.0], [0.5, 1.0]]])
    (out,) = make(lo.LatentCompositeMasked).execute(lat(dest), lat(src), 8, 8, False, mask)
    expected = torch.zeros(2, 1, 4, 4)
    expected[:, 0, 1:3, 1:3] = torch.tensor([[2.0, 0.0], [1.0, 2.0]])
    assert torch.equal(out["samples"], expected)
    (resized,) = make(lo.LatentCompositeMasked).execute(lat(dest), lat(src), 0, 0, True, None)
    assert torch.equal(resized["samples"], torch.full((2, 1, 4, 4), 2.0))
    (clipped,) = make(lo.LatentCompositeMasked).execute(lat(dest), lat(src), 24, 24, False, None)
    assert clipped["samples"][0, 0].sum() == 2.0 and clipped["samples"][0, 0, 3, 3] == 2.0
    with pytest.raises(ValueError, match="batch of 3"):
        make(lo.LatentCompositeMasked).execute(lat(dest), lat(torch.ones(3, 1, 2, 2)), 0, 0, False, None)


def test_latent_blend(make):
    a, b = torch.full((1, 4, 2, 2), 4.0), torch.full((1, 4, 2, 2), 2.0)
    (out,) = make(lo.LatentBlend).execute(lat(a), lat(b), 0.25)
    assert torch.allclose(out["samples"], torch.full((1, 4, 2, 2), 2.5))
    (scaled,) = make(lo.LatentBlend).execute(lat(a), lat(torch.full((1, 4, 4, 4), 2.0)), 0.5)
    assert scaled["samples"].shape == (1, 4, 2, 2) and torch.allclose(scaled["samples"], torch.full((1, 4, 2, 2), 3.0))
    with pytest.raises(ValueError, match="channels"):
        make(lo.LatentBlend).execute(lat(a), lat(torch.ones(1, 3, 2, 2)), 0.5)


# -- arithmetic -------------------------------------------------------------------------------------

def test_add_subtract_multiply(make):
    a, b = grid(2), torch.ones(1, 2, 4, 4)
    (s,) = make(lo.LatentAdd).execute(lat(a, batch_index=[3, 4]), lat(b))
    assert torch.equal(s["samples"], a + 1) and s["batch_index"] == [3, 4]
    (d,) = make(lo.LatentSubtract).execute(lat(a), lat(b))
    assert torch.equal(d["samples"], a - 1)
    (m,) = make(lo.LatentMultiply).execute(lat(a), -0.5)
    assert torch.equal(m["samples"], a * -0.5)
    # samples2 of another size is scaled (bilinear, centre) to samples1's: a constant stays constant
    (r,) = make(lo.LatentAdd).execute(lat(a), lat(torch.full((1, 2, 8, 8), 3.0)))
    assert torch.allclose(r["samples"], a + 3)
    with pytest.raises(ValueError, match="'samples2' has a batch of 3"):
        make(lo.LatentAdd).execute(lat(a), lat(torch.ones(3, 2, 4, 4)))


def test_latent_interpolate(make):
    # one cell: samples1 = (3, 4) (length 5), samples2 = (0, 2) (length 2)
    s1 = torch.tensor([3.0, 4.0]).reshape(1, 2, 1, 1)
    s2 = torch.tensor([0.0, 2.0]).reshape(1, 2, 1, 1)
    (one,) = make(lo.LatentInterpolate).execute(lat(s1), lat(s2), 1.0)
    assert torch.allclose(one["samples"], s1)
    (zero,) = make(lo.LatentInterpolate).execute(lat(s1), lat(s2), 0.0)
    assert torch.allclose(zero["samples"], s2)
    (half,) = make(lo.LatentInterpolate).execute(lat(s1), lat(s2), 0.5)
    direction = torch.tensor([0.6 * 0.5, 0.8 * 0.5 + 0.5])
    expected = direction / direction.norm() * 3.5          # lengths 5 and 2 averaged
    assert torch.allclose(half["samples"].flatten(), expected, atol=1e-6)
    # a batch of two works (ComfyUI 0.3.64's broadcast needed batch 1)
    (two,) = make(lo.LatentInterpolate).execute(lat(s1.repeat(2, 1, 1, 1)), lat(s2), 0.5)
    assert torch.allclose(two["samples"][1].flatten(), expected, atol=1e-6)


# -- batches and layout -----------------------------------------------------------------------------

def test_latent_batch_and_seed_behavior(make):
    a, b = grid(2), torch.ones(1, 2, 4, 4)
    (out,) = make(lo.LatentBatch).execute(lat(a), lat(b, batch_index=[7]))
    assert torch.equal(out["samples"], torch.cat([a, b])) and out["batch_index"] == [0, 1, 7]
    (fixed,) = make(lo.LatentBatchSeedBehavior).execute(out, "fixed")
    assert fixed["batch_index"] == [0, 0, 0]
    (rand,) = make(lo.LatentBatchSeedBehavior).execute(out, "random")
    assert "batch_index" not in rand and torch.equal(rand["samples"], out["samples"])


def test_latent_concat(make):
    a, b = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 3)
    (x,) = make(lo.LatentConcat).execute(lat(a), lat(b), "x")
    assert x["samples"].shape == (1, 2, 2, 5) and x["samples"][..., 2:].eq(1).all()
    (mx,) = make(lo.LatentConcat).execute(lat(a), lat(b), "-x")
    assert mx["samples"][..., :3].eq(1).all() and mx["samples"][..., 3:].eq(0).all()
    (t,) = make(lo.LatentConcat).execute(lat(torch.zeros(1, 2, 3, 2, 2)), lat(torch.ones(1, 2, 1, 2, 2)), "t")
    assert t["samples"].shape == (1, 2, 4, 2, 2) and t["samples"][:, :, 3].eq(1).all()
    with pytest.raises(ValueError, match="cannot be joined along y"):
        make(lo.LatentConcat).execute(lat(a), lat(b), "y")


def test_crop_flip_rotate(make):
    s = grid(1, 1, 16, 16)
    (crop,) = make(lo.LatentCrop).execute(lat(s), 64, 80, 16, 8)
    assert torch.equal(crop["samples"], s[..., 1:11, 2:10])
    (late,) = make(lo.LatentCrop).execute(lat(s), 64, 64, 120, 120)   # kept 8 cells inside
    assert torch.equal(late["samples"], s[..., 8:16, 8:16])
    small = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    (fx,) = make(lo.LatentFlip).execute(lat(small), "x-axis: vertically")
    assert fx["samples"].flatten().tolist() == [3.0, 4.0, 1.0, 2.0]
    (fy,) = make(lo.LatentFlip).execute(lat(small), "y-axis: horizontally")
    assert fy["samples"].flatten().tolist() == [2.0, 1.0, 4.0, 3.0]
    turns = {r: make(lo.LatentRotate).execute(lat(small), r)[0]["samples"].flatten().tolist()
             for r in ["none", "90 degrees", "180 degrees", "270 degrees"]}
    assert turns == {"none": [1.0, 2.0, 3.0, 4.0], "90 degrees": [3.0, 1.0, 4.0, 2.0],
                     "180 degrees": [4.0, 3.0, 2.0, 1.0], "270 degrees": [2.0, 4.0, 1.0, 3.0]}


def test_latent_cut(make):
    s = grid(1, 1, 4, 6)
    (x,) = make(lo.LatentCut).execute(lat(s), "x", 1, 2)
    assert torch.equal(x["samples"], s[..., 1:3])
    (neg,) = make(lo.LatentCut).execute(lat(s), "y", -1, 5)
    assert torch.equal(neg["samples"], s[..., 3:, :])
    (past,) = make(lo.LatentCut).execute(lat(s), "x", 10, 4)
    assert torch.equal(past["samples"], s[..., 5:])
    video = torch.arange(2 * 1 * 5 * 1 * 1, dtype=torch.float32).reshape(2, 1, 5, 1, 1)
    (t,) = make(lo.LatentCut).execute(lat(video), "t", 1, 3)
    assert torch.equal(t["samples"], video[:, :, 1:4])


def test_latent_cut_to_batch(make):
    video = torch.arange(1 * 2 * 5 * 1 * 1, dtype=torch.float32).reshape(1, 2, 5, 1, 1)
    (frames,) = make(lo.LatentCutToBatch).execute(lat(video), "t", 1)
    assert frames["samples"].shape == (5, 2, 1, 1, 1)
    assert frames["samples"][:, 0].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert frames["samples"][:, 1].flatten().tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    (pairs,) = make(lo.LatentCutToBatch).execute(lat(video), "t", 2)       # the fifth frame is dropped
    assert pairs["samples"].shape == (2, 2, 2, 1, 1) and pairs["samples"][1, 0].flatten().tolist() == [2.0, 3.0]
    image = grid(1, 1, 2, 6)
    (cols,) = make(lo.LatentCutToBatch).execute(lat(image), "x", 3)
    assert torch.equal(cols["samples"], torch.cat([image[..., :3], image[..., 3:]]))
    same = lat(image)
    assert make(lo.LatentCutToBatch).execute(same, "t", 2)[0] is same      # an image latent's t is channels


# -- latent operations --------------------------------------------------------------------------------

def test_tonemap_reinhard_values(make):
    # two cells: (3, 4) of length 5 and (0, 1) of length 1; mean 3, std √8, white point 5√8 + 3
    latent = torch.tensor([[[[3.0, 0.0]], [[4.0, 1.0]]]])
    (op,) = make(lo.LatentOperationTonemapReinhard).execute(1.0)
    top = 5 * math.sqrt(8) + 3

    def mapped(length):
        return (length / top) / (length / top + 1) * top

    (out,) = make(lo.LatentApplyOperation).execute(lat(latent), op)
    expected = torch.tensor([[[[0.6 * mapped(5), 0.0]], [[0.8 * mapped(5), mapped(1)]]]])
    assert torch.allclose(out["samples"], expected, atol=1e-5)
    assert op(latent=latent).shape == latent.shape and isinstance(op, lo.LatentOperation)


def test_sharpen_operation(make):
    flat = torch.ones(1, 4, 8, 8)
    (op,) = make(lo.LatentOperationSharpen).execute(2, 1.0, 0.5)
    assert torch.allclose(op(latent=flat), flat, atol=1e-5)          # nothing to sharpen
    edge = torch.ones(1, 4, 8, 8)
    edge[:, 0, :, 4:] = 3.0
    out = op(latent=edge)
    assert out.shape == edge.shape
    # the contrast across the edge grows: the bright side brighter, the dark side darker (channel 0)
    assert float(out[0, 0, 4, 4]) > 3.0 and float(out[0, 0, 4, 3]) < 1.0
    assert torch.allclose(out[..., :2], edge[..., :2], atol=1e-4)     # far from the edge: unchanged


def test_operation_in_guidance_formula():
    op = lo.LatentOperation("double", lambda latent: latent * 2)
    patch = lo._OperationInGuidance(op, sigma_start=10.0, sigma_end=1.0)
    cond, uncond = torch.full((1, 1, 1, 1), 5.0), torch.full((1, 1, 1, 1), 1.0)
    out = patch({"conds_out": [cond, uncond], "sigma": torch.tensor([5.0])})
    assert out[0].item() == 9.0 and out[1] is uncond                 # 2·(5 − 1) + 1
    assert patch({"conds_out": [cond], "sigma": torch.tensor([5.0])})[0].item() == 10.0
    skipped = patch({"conds_out": [cond, uncond], "sigma": torch.tensor([11.0])})
    assert skipped[0] is cond


# -- through the engine -------------------------------------------------------------------------------

def test_latent_graph_runs_in_the_engine(tmp_path):
    from nodegraph import Engine

    g = Graph()
    a = g.node("EmptyLatentImage", width=64, height=64, batch_size=2)
    m = g.node("LatentMultiply", samples=a, multiplier=2.0)
    ones = g.node("LatentAdd", samples1=a, samples2=g.node("LatentMultiply", samples=a, multiplier=0.0))
    batch = g.node("LatentBatch", "batch", samples1=m, samples2=ones)
    cut = g.node("LatentCut", "cut", samples=batch, dim="x", index=2, amount=3)
    g.node("PreviewAny", source=cut)
    engine = Engine(default_registry(packs=False), paths=Paths.under(tmp_path), device="cpu", threads=1)
    try:
        result = engine.run(g).raise_for_status()
    finally:
        engine.close()
    out = result.value("cut")
    assert out["samples"].shape == (4, 4, 8, 3) and out["batch_index"] == [0, 1, 0, 1]
