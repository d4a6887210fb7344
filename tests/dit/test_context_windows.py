"""ContextWindowsManual (:mod:`nodegraph_nodes.sampling.context_windows`): the window schedules and fuse weights
against ComfyUI's documented numbers, the patched runner against a hand-written windowed loop over the tiny Wan
transformer (pyramid fuse, causal anchor frame, retained concat frame 0), FreeNoise against a hand-written
shuffle, and in a graph: a window covering every frame equals plain sampling, a shorter one changes it."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from nodegraph_nodes.sampling import context_windows as cw
from nodegraph_nodes.sampling.model import CondPart
from nodegraph_nodes.sampling.model_sampling import sd3_flow
from nodegraph_nodes.sampling.run_patches import PatchRun

from tests.dit.tiny_wan import TEXT_WIDTH, build_wan, wan_transformer
from tests.helpers.engines import make_engine


def test_static_schedule_and_pyramid_weights():
    s = cw.ContextSettings(21, 8)
    assert cw.context_windows(22, s) == [list(range(0, 21)), list(range(1, 22))]  # the Wan Animate 2 templates'
    s = cw.ContextSettings(4, 1)
    assert cw.context_windows(9, s) == [[0, 1, 2, 3], [3, 4, 5, 6], [5, 6, 7, 8]]
    assert cw.context_windows(4, s) == [[0, 1, 2, 3]]
    assert cw.context_windows(7, cw.ContextSettings(3, 0, "batched")) == [[0, 1, 2], [3, 4, 5], [6]]
    assert cw.pyramid_weights(4) == [1, 2, 2, 1] and cw.pyramid_weights(5) == [1, 2, 3, 2, 1]
    for step in range(4):  # uniform windows cover every frame at every step
        for name in ("standard_uniform", "looped_uniform"):
            windows = cw.context_windows(12, cw.ContextSettings(4, 1, name), step)
            assert sorted({i for w in windows for i in w}) == list(range(12)), (name, step)


def test_freenoise_matches_a_hand_written_shuffle():
    noise = torch.randn(1, 2, 10, 2, 2)
    s = cw.ContextSettings(4, 1, dim=2, freenoise=True)
    want = noise.clone()
    gen = torch.Generator("cpu").manual_seed(5)
    for start in range(0, 10 - 4, 3):
        count = min(3, 10 - (start + 4))
        src = torch.randperm(count, generator=gen) + start
        want[:, :, start + 4:start + 4 + count] = want[:, :, src]
    assert torch.equal(cw.freenoise(noise, s, 5), want)
    assert torch.equal(noise[:, :, :4], want[:, :, :4])


class _NetRunner:
    """Calls a diffusers Wan transformer with each part's states and ``concat`` extra (the test's own runner)."""

    device, dtype = "cpu", torch.float32

    def __init__(self, net):
        self.net = net
        self.calls: list[tuple] = []

    def __call__(self, x, t, parts):
        self.calls.append(parts[0].extras["context_window"].frames if "context_window" in parts[0].extras else None)
        xs = torch.cat([x, parts[0].extras["concat"]], dim=1)
        return self.net(hidden_states=xs, timestep=t, encoder_hidden_states=parts[0].cond, return_dict=False)[0]


@torch.no_grad()
def test_context_window_runner_equals_a_hand_written_windowed_loop():
    net = wan_transformer(36, 43).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 9, 4, 4, generator=g)
    concat = torch.randn(1, 20, 9, 4, 4, generator=g)
    states = torch.randn(1, 7, TEXT_WIDTH, generator=g)
    t = torch.tensor([700.0])
    parts = [CondPart(states, {"concat": concat}, 1)]
    s = cw.ContextSettings(4, 1, dim=2, cond_retain=(0,), causal_window_fix=True)
    inner = _NetRunner(net)
    run = PatchRun(inner, torch.tensor([0.7, 0.0]), sd3_flow(5.0, 1000.0))
    got = cw.ContextWindowRunner(inner, s, run)(x, t, parts)

    total, count = torch.zeros(1, 16, 9, 4, 4), torch.zeros(9)
    for window in ([0, 1, 2, 3], [3, 4, 5, 6], [5, 6, 7, 8]):
        frames = window if window[0] == 0 else [window[0] - 1] + window
        c = concat[:, :, frames].clone()
        c[:, :, 0] = concat[:, :, 0]  # cond_retain_index_list "0"
        out = net(hidden_states=torch.cat([x[:, :, frames], c], 1), timestep=t, encoder_hidden_states=states,
                  return_dict=False)[0]
        if window[0] != 0:
            out = out[:, :, 1:]
        w = torch.tensor([1.0, 2.0, 2.0, 1.0])
        total[:, :, window] += out * w.view(1, 1, -1, 1, 1)
        count[window] += w
    want = total / count.view(1, 1, -1, 1, 1)
    assert inner.calls == [(0, 1, 2, 3), (2, 3, 4, 5, 6), (4, 5, 6, 7, 8)]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

    inner.calls.clear()  # a window covering every frame is the plain call
    whole = cw.ContextWindowRunner(inner, cw.ContextSettings(9, 2, dim=2, causal_window_fix=True), run)(x, t, parts)
    plain = net(hidden_states=torch.cat([x, concat], 1), timestep=t, encoder_hidden_states=states,
                return_dict=False)[0]
    assert inner.calls == [None]
    assert torch.equal(whole, plain)


# -- in a graph -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    return build_wan(tmp_path_factory.mktemp("wan_cw_models"), shift=5.0)


def _graph(context: dict | None) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_wan2.1_t2v.safetensors", weight_dtype="default").out(0)
    model = g.node("ModelSamplingSD3", model=model, shift=5.0).out(0)
    if context is not None:
        model = g.node("ContextWindowsManual", model=model, **{
            "context_overlap": 1, "context_schedule": "standard_static", "context_stride": 1, "closed_loop": False,
            "fuse_method": "pyramid", "dim": 2, "freenoise": True, "cond_retain_index_list": "",
            "split_conds_to_windows": False, "latent_retain_index_list": "", "causal_window_fix": True,
            **context}).out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    pos = g.node("CLIPTextEncode", text="a red fox", clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    lat = g.node("EmptyHunyuanLatentVideo", width=32, height=32, length=21, batch_size=1)  # 6 latent frames
    ks = g.node("KSampler", "ks", model=model, seed=4, steps=2, cfg=3.0, sampler_name="euler", scheduler="simple",
           positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=ks)
    return g


def test_context_windows_in_a_graph(tiny_wan, tmp_path):
    eng = make_engine(tiny_wan.root, tmp_path, default_registry(packs=False))
    try:
        def run(context):
            return eng.run(_graph(context)).raise_for_status().value("ks", 0)["samples"]

        plain = run(None)
        assert torch.equal(run({"context_length": 6}), plain)  # one window over all 6 frames (no FreeNoise either)
        windowed = run({"context_length": 4})
        assert windowed.shape == plain.shape and torch.isfinite(windowed).all()
        assert not torch.allclose(windowed, plain, atol=1e-4)
    finally:
        eng.close()


def test_wan_context_windows_manual_counts_video_frames(tiny_wan, tmp_path):
    """WanContextWindowsManual (lengths in video frames, dim 2) is ContextWindowsManual with the converted lengths."""
    from nodegraph_nodes.sampling.context_windows import ContextWindowsPatch

    eng = make_engine(tiny_wan.root, tmp_path, default_registry(packs=False))
    try:
        g = Graph()
        model = g.node("UNETLoader", unet_name="tiny_wan2.1_t2v.safetensors", weight_dtype="default").out(0)
        wan = g.node("WanContextWindowsManual", "wan", model=model, context_length=17, context_overlap=8,
                     context_schedule="standard_static", context_stride=1, closed_loop=False, fuse_method="pyramid",
                     freenoise=False, retain_first_frame=True, split_conds_to_windows=False)
        g.node("PreviewAny", source=wan)
        patched = eng.run(g).raise_for_status().value("wan")
        patch = next(p for p in patched.sampling_patches.model_patches if isinstance(p, ContextWindowsPatch))
        assert patch.settings == cw.ContextSettings(5, 2, "standard_static", 1, False, "pyramid", 2, False, (0,), (),
                                                    True)
    finally:
        eng.close()


@torch.no_grad()
def test_windowed_sampling_equals_a_hand_written_loop(tiny_wan, tmp_path):
    """SamplerCustom (euler, cfg 3) on the patched model equals a hand-written loop: FreeNoise on the seeded noise,
    then at each sigma the tiny Wan transformer run window by window (pyramid weights, causal anchor frame) for the
    prompt and the empty prompt, guidance, an euler step."""
    from nodegraph_nodes.dit.qwen_image import WAN21
    from tests.helpers.noise import engine_noise

    eng = make_engine(tiny_wan.root, tmp_path, default_registry(packs=False))
    try:
        g = Graph()
        model = g.node("UNETLoader", unet_name="tiny_wan2.1_t2v.safetensors", weight_dtype="default").out(0)
        model = g.node("ModelSamplingSD3", model=model, shift=5.0).out(0)
        model = g.node("ContextWindowsManual", model=model, context_length=4, context_overlap=1,
                       context_schedule="standard_static", context_stride=1, closed_loop=False, fuse_method="pyramid",
                       dim=2, freenoise=True, cond_retain_index_list="", split_conds_to_windows=False,
                       latent_retain_index_list="", causal_window_fix=True).out(0)
        clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
        pos = g.node("CLIPTextEncode", "pos", text="a red fox", clip=clip)
        neg = g.node("CLIPTextEncode", "neg", text="", clip=clip)
        lat = g.node("EmptyHunyuanLatentVideo", width=32, height=32, length=21, batch_size=1)
        sigmas = g.node("BasicScheduler", "sigmas", model=model, scheduler="simple", steps=3, denoise=1.0)
        sampler = g.node("KSamplerSelect", sampler_name="euler")
        out = g.node("SamplerCustom", "out", model=model, add_noise=True, noise_seed=9, cfg=3.0, positive=pos,
                     negative=neg, sampler=sampler, sigmas=sigmas, latent_image=lat)
        for node in (out, pos, neg, sigmas):
            g.node("PreviewAny", source=node)
        result = eng.run(g).raise_for_status()
        got = result.value("out", 0)["samples"]
        states = [result.value(name)[0][0] for name in ("pos", "neg")]
        schedule = result.value("sigmas")
    finally:
        eng.close()

    net = tiny_wan.transformer
    noise, _ = engine_noise((1, 16, 6, 4, 4), 9)
    noise[:, :, 4:6] = noise[:, :, torch.randperm(2, generator=torch.Generator().manual_seed(9))]  # FreeNoise
    x = noise * schedule[0]
    windows = ([0, 1, 2, 3], [2, 3, 4, 5])
    for sigma, following in zip(schedule[:-1], schedule[1:]):
        t = (sigma * 1000).reshape(1)
        velocities = []
        for text in states:
            total, count = torch.zeros_like(x), torch.zeros(6)
            for window in windows:
                frames = window if window[0] == 0 else [window[0] - 1] + window
                v = net(hidden_states=x[:, :, frames], timestep=t, encoder_hidden_states=text, return_dict=False)[0]
                v = v[:, :, -len(window):]
                w = torch.tensor([1.0, 2.0, 2.0, 1.0])
                total[:, :, window] += v * w.view(1, 1, -1, 1, 1)
                count[window] += w
            velocities.append(total / count.view(1, 1, -1, 1, 1))
        cond, uncond = velocities
        x = x + (following - sigma) * (uncond + 3.0 * (cond - uncond))
    want = WAN21.process_out(x)
    assert (got - want).abs().max() < 1e-4 * want.abs().max(), float((got - want).abs().max())
