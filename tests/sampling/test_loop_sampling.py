"""A Start Loop / End Loop around a KSampler on the tiny SD 1.x model: each iteration samples with its
iteration index as the seed, and the accumulated latents equal separate KSampler runs with those seeds
(the loop changes nothing about what each iteration computes)."""

from __future__ import annotations

import torch

from nodegraph.builder import Graph

from tests.sampling.test_sampling_nodes import SD, ksampler, preview_all


def test_loop_of_samplers_equals_separate_runs(engine):
    g = Graph()
    m = SD(g)
    loop = g.node("StartLoop", "loop", **{"mode": "For", "mode.start_iteration_index": 3, "mode.max_iteration": 5,
                                          "mode.step": 1, "cache_iterations": False})
    body = g.node("KSampler", "body", model=m.model, seed=loop.out(0), steps=2, cfg=4.0, sampler_name="euler",
                  scheduler="karras", positive=m.pos, negative=m.neg, latent_image=m.latent, denoise=1.0)
    end = g.node("EndLoop", "end", output_value=body, accumulate=True)
    singles = [ksampler(g, m, f"seed{seed}", "euler", "karras", steps=2, seed=seed) for seed in (3, 4)]
    preview_all(g, [end] + singles)
    result = engine.run(g).raise_for_status()
    looped = result.values["end"][0]
    assert len(looped) == 2
    for latent, seed in zip(looped, (3, 4)):
        assert torch.equal(latent["samples"], result.value(f"seed{seed}")["samples"])
