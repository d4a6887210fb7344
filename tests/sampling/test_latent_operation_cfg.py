"""LatentApplyOperationCFG on the tiny SD 1.x model: the latent operation reshapes the guidance direction
through the sampling core's pre-CFG patches (CFGGuider and BasicGuider), only inside its schedule window."""

from __future__ import annotations

import torch

from nodegraph.builder import Graph

from tests.sampling.test_sampling_nodes import SD, custom, preview_all, samples


def test_latent_apply_operation_cfg(engine):
    g = Graph()
    m = SD(g)
    sigmas = g.node("BasicScheduler", model=m.model, scheduler="karras", steps=3, denoise=1.0)
    noise = g.node("RandomNoise", noise_seed=3)
    tonemap = g.node("LatentOperationTonemapReinhard", multiplier=0.5)
    identity = g.node("LatentOperationSharpen", sharpen_radius=1, sigma=1.0, alpha=0.0)  # kernel = delta
    patched = g.node("LatentApplyOperationCFG", model=m.model, operation=tonemap)
    never = g.node("LatentApplyOperationCFG", model=m.model, operation=tonemap, start_percent=1.0, end_percent=1.0)
    same = g.node("LatentApplyOperationCFG", model=m.model, operation=identity)
    runs = {
        "base": custom(g, m, "base", sigmas=sigmas, noise=noise),
        "tonemap": custom(g, m, "tonemap", sigmas=sigmas, noise=noise, model=patched),
        "never": custom(g, m, "never", sigmas=sigmas, noise=noise, model=never),
        "identity": custom(g, m, "identity", sigmas=sigmas, noise=noise, model=same),
    }
    basic = {}
    for key, model in (("basic_base", m.model), ("basic_tonemap", patched)):
        guider = g.node("BasicGuider", model=model, conditioning=m.pos)
        basic[key] = g.node("SamplerCustomAdvanced", key, noise=noise, guider=guider,
                            sampler=g.node("KSamplerSelect", sampler_name="euler"), sigmas=sigmas,
                            latent_image=m.latent)
    preview_all(g, list(runs.values()) + list(basic.values()))
    result = engine.run(g).raise_for_status()
    base = samples(result, "base")
    assert torch.equal(samples(result, "never"), base)              # outside its window: untouched
    assert torch.allclose(samples(result, "identity"), base, atol=1e-4)
    tonemapped = samples(result, "tonemap")
    assert torch.isfinite(tonemapped).all() and (tonemapped - base).abs().max() > 1e-3
    assert (samples(result, "basic_tonemap") - samples(result, "basic_base")).abs().max() > 1e-3
