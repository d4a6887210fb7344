"""FluxKVCache: Flux.2 Klein edits with reference images through ComfyUI's nodes (UNETLoader, CLIPLoader type
flux2, VAELoader, LoadImage → VAEEncode → ReferenceLatent, FluxKVCache, CFGGuider cfg 1 with a zeroed
negative, Flux2Scheduler, SamplerCustomAdvanced) equal diffusers' Flux2KleinKVPipeline on the same tiny
weights, seed and steps; the cached run equals the run that recomputes the reference K/V at every step; the
official image_flux2_klein_9b_kv_image_edit template runs on the tiny files under its names."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.template_runs import last_saved_image
from tests.dit.tiny_flux2 import build_flux2, build_klein, scheduler
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT, SEED, STEPS = "the man wears the hat", 7, 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux2_kv_models")
    flux2 = build_flux2(root)
    return root, build_klein(root, flux2.vae)


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny[0], tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def _pixels(seed: int, size: int = 64):
    import numpy as np

    return (np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8)


def _inputs(engine, names: list[str], size: int = 64) -> None:
    from pathlib import Path

    from PIL import Image

    folder = Path(engine.paths.input_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(_pixels(i, size), "RGB").save(folder / name)


def kv_graph(references: list[str], kv: bool = True, seed: int = SEED, cfg: float = 1.0) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_flux2_klein.safetensors", weight_dtype="default").out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_qwen_3_klein.safetensors", type="flux2").out(0)
    vae = g.node("VAELoader", vae_name="tiny_flux2_vae.safetensors").out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("ConditioningZeroOut", conditioning=pos)
    for name in references:
        latent = g.node("VAEEncode", pixels=g.node("LoadImage", image=name).out(0), vae=vae)
        pos = g.node("ReferenceLatent", conditioning=pos, latent=latent)
        neg = g.node("ReferenceLatent", conditioning=neg, latent=latent)
    if kv:
        model = g.node("FluxKVCache", model=model).out(0)
    guider = g.node("CFGGuider", model=model, positive=pos, negative=neg, cfg=cfg)
    sca = g.node("SamplerCustomAdvanced", noise=g.node("RandomNoise", noise_seed=seed), guider=guider,
                 sampler=g.node("KSamplerSelect", sampler_name="euler"),
                 sigmas=g.node("Flux2Scheduler", steps=STEPS, width=64, height=64),
                 latent_image=g.node("EmptyFlux2LatentImage", width=64, height=64, batch_size=1))
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=sca.out(0), vae=vae))
    return g


def kv_pipeline(klein, images: list) -> torch.Tensor:
    from diffusers import Flux2KleinKVPipeline

    pipe = Flux2KleinKVPipeline(scheduler=scheduler(), vae=klein.vae, text_encoder=klein.text_encoder,
                                tokenizer=klein.tokenizer, transformer=klein.transformer)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 128, 4, 4), SEED)
    try:
        with torch.no_grad():
            out = pipe(prompt=PROMPT, image=images, num_inference_steps=STEPS, latents=noise, height=64, width=64,
                       output_type="pt").images
    finally:  # the pipeline put KV processors on the shared transformer; the plain ones back
        from diffusers.models.transformers.transformer_flux2 import (Flux2AttnProcessor,
                                                                    Flux2ParallelSelfAttnProcessor)

        for block in klein.transformer.transformer_blocks:
            block.attn.set_processor(Flux2AttnProcessor())
        for block in klein.transformer.single_transformer_blocks:
            block.attn.set_processor(Flux2ParallelSelfAttnProcessor())
    return out.permute(0, 2, 3, 1)


@pytest.mark.parametrize("count", [1, 2])
def test_flux_kv_cache_matches_klein_kv_pipeline(engine, tiny, count):
    """One and two reference images: the nodes with FluxKVCache equal Flux2KleinKVPipeline(image=…) at 1e-4."""
    from PIL import Image

    names = [f"ref{i}.png" for i in range(count)]
    _inputs(engine, names)
    image = engine.run(kv_graph(names)).raise_for_status().value("out")
    ref = kv_pipeline(tiny[1], [Image.fromarray(_pixels(i), "RGB") for i in range(count)])
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def _fresh(tiny, tmp_path, name: str, inputs: list[str]):
    """Another engine (its own output cache and its own copy of the network)."""
    eng = make_engine(tiny[0], tmp_path / name, default_registry(packs=False))
    _inputs(eng, inputs)
    return eng


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_flux_kv_cache_is_exact_and_differs_from_the_plain_reference_path(engine, tiny, tmp_path, monkeypatch,
                                                                          cfg):
    """The cached run equals the run that extracts the reference K/V at every step (the references see
    neither text, image nor timestep); only the first step extracts (cfg 2: the zeroed negative with the
    same references too). Without FluxKVCache the same MODEL runs the plain reference path (full attention,
    the step's timestep on the references), which gives another image."""
    from nodegraph_nodes.dit.flux2_kv import Flux2KVRunner

    names = ["a.png", "b.png"]
    _inputs(engine, names)
    calls = {"extract": 0, "cached": 0, "parts": 0}
    net_call = Flux2KVRunner.__call__

    def counting(self, x_in, timestep, parts):
        before = dict(self.entries)
        out = net_call(self, x_in, timestep, parts)
        calls["parts"] += len(parts)
        for i in range(len(parts)):
            calls["cached" if before.get(i) is self.entries[i] else "extract"] += 1
        return out

    monkeypatch.setattr(Flux2KVRunner, "__call__", counting)
    cached = engine.run(kv_graph(names, cfg=cfg)).raise_for_status().value("out")
    per_step = 1 if cfg == 1.0 else 2
    assert calls["parts"] == STEPS * per_step
    assert calls["extract"] in (1, per_step) and calls["extract"] + calls["cached"] == calls["parts"]
    monkeypatch.setattr(Flux2KVRunner, "reuse", False)
    calls.update(extract=0, cached=0, parts=0)
    other = _fresh(tiny, tmp_path, "recompute", names)
    try:
        recomputed = other.run(kv_graph(names, cfg=cfg)).raise_for_status().value("out")
    finally:
        other.close()
    assert calls == {"extract": STEPS * per_step, "cached": 0, "parts": STEPS * per_step}
    assert torch.allclose(cached, recomputed, atol=1e-5), (cached - recomputed).abs().max()
    plain = engine.run(kv_graph(names, kv=False, cfg=cfg)).raise_for_status().value("out")
    assert not torch.allclose(cached, plain, atol=1e-3)


def test_flux_kv_cache_restores_the_attention_processors(engine, tiny, tmp_path):
    """The network is shared: after a FluxKVCache run, a plain run on the same engine equals a plain run on
    a fresh engine (whose network never had the KV processors)."""
    _inputs(engine, ["a.png"])
    engine.run(kv_graph(["a.png"])).raise_for_status()
    after = engine.run(kv_graph(["a.png"], kv=False, seed=SEED + 1)).raise_for_status().value("out")
    other = _fresh(tiny, tmp_path, "fresh", ["a.png"])
    try:
        fresh = other.run(kv_graph(["a.png"], kv=False, seed=SEED + 1)).raise_for_status().value("out")
    finally:
        other.close()
    assert torch.equal(after, fresh)


def test_flux_kv_cache_refuses_other_models(make):
    """A MODEL that is not a Flux.2 transformer is an error naming the node's input."""
    from nodegraph_nodes.dit.flux2_kv import FluxKVCache
    from nodegraph_nodes.dit.model import FlowModel

    node = make(FluxKVCache)
    with pytest.raises(TypeError, match=r"FluxKVCache\.model: .*Flux\.2.*sd3"):
        node.execute(model=FlowModel(handle=None, family="sd3"))
    with pytest.raises(TypeError, match=r"FluxKVCache\.model: .*cannot be sampled"):
        node.execute(model=object())


def test_flux2_klein_kv_template_runs(engine, tiny, monkeypatch):
    """ComfyUI's image_flux2_klein_9b_kv_image_edit template (the installed comfyui-workflow-templates-json
    package) on the tiny Klein under its file names: two reference images scaled to 0.01 megapixels instead
    of 1 (the canvas follows the first through GetImageSize), 4 steps as in the template."""
    import json
    import shutil

    from nodegraph.workflow.loader import load_workflow_data

    from tests.helpers.package_templates import package_templates

    paths = package_templates(lambda name: name == "image_flux2_klein_9b_kv_image_edit.json")
    assert len(paths) == 1
    models = tiny[0] / "models"
    for src, dst in (("diffusion_models/tiny_flux2_klein.safetensors",
                      "diffusion_models/flux-2-klein-9b-kv-fp8.safetensors"),
                     ("text_encoders/tiny_qwen_3_klein.safetensors", "text_encoders/qwen_3_8b_fp8mixed.safetensors"),
                     ("vae/tiny_flux2_vae.safetensors", "vae/flux2-vae.safetensors")):
        shutil.copy(models / src, models / dst)
    _inputs(engine, ["man_in_street.png", "safari_outfit.png"], size=96)
    api = load_workflow_data(json.loads(paths[0].read_text()), engine.registry).api
    for n in api.values():
        if n["class_type"] == "ImageScaleToTotalPixels":
            n["inputs"]["megapixels"] = 0.01
    from nodegraph_nodes.dit.flux2_kv import Flux2KVRunner

    runners = []
    init = Flux2KVRunner.__init__

    def recording(self, base):
        init(self, base)
        runners.append(self)

    monkeypatch.setattr(Flux2KVRunner, "__init__", recording)
    result = engine.run(api).raise_for_status()
    assert len(runners) == 1 and len(runners[0].entries) == 1  # the positive's references, cached
    kinds = [api[n]["class_type"] for n in result.executed]
    assert {"FluxKVCache", "UNETLoader", "CLIPLoader", "CFGGuider", "Flux2Scheduler", "SamplerCustomAdvanced",
            "SaveImage"} <= set(kinds)
    assert kinds.count("ReferenceLatent") == 4  # two images on the positive and the zeroed negative
    image = last_saved_image(engine.paths.output_dir)
    assert image.shape == (96, 96, 3) and image.std() > 0.01
