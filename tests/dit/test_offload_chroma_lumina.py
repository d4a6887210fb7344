"""--vram-budget-gb / --lowvram for Chroma and Lumina 2: their tiny files in fp16 run on the CPU through
ComfyUI's nodes with a budget smaller than the transformer, which streams block by block; the
materialised weights stay under the budget and the image equals the unbudgeted run's (as
tests/dit/test_offload_flow.py does for SD3.5, Flux.1, Qwen-Image and Z-Image)."""

from __future__ import annotations

import pytest
import torch

from nodegraph.registry import default_registry

from tests.dit.test_chroma import chroma_graph
from tests.dit.test_lumina2 import lumina_graph
from tests.dit.test_offload_flow import _fp16_copy, _transformer
from tests.dit.tiny_chroma import build_chroma
from tests.dit.tiny_lumina2 import build_lumina2
from tests.helpers.engines import make_engine

CASES = {
    "chroma": (build_chroma, ("diffusion_models/tiny_chroma.safetensors", "text_encoders/tiny_t5xxl.safetensors"),
               lambda: chroma_graph("files")),
    "lumina2": (build_lumina2, ("diffusion_models/tiny_lumina_2.safetensors",
                                "text_encoders/tiny_gemma_2_2b.safetensors"), lambda: lumina_graph("files")),
}


@pytest.mark.parametrize("family", list(CASES))
def test_budget_streams_blocks_and_keeps_the_image(tmp_path_factory, tmp_path, family):
    from nodegraph.offload import Placement

    build, fp16_files, graph = CASES[family]
    src = tmp_path_factory.mktemp(f"{family}_models")
    build(src)
    root = _fp16_copy(src, tmp_path_factory.mktemp(f"{family}_fp16"), fp16_files)
    registry = default_registry(packs=False)
    whole = make_engine(root, tmp_path / "whole", registry)
    try:
        image = whole.run(graph()).raise_for_status().value("out")
        models = whole.services["models"]
        transformer = _transformer(models)
        full = sum(p.numel() * 4 for p in transformer.model.parameters())
        floors = {e.key: Placement(e.model.half(), torch.float32).plan("cpu", None, stream_all=True).peak_bound
                  for e in models._models.values() if e.placed and e.model is not None}
    finally:
        whole.close()
    budget = (floors[transformer.key] + full) // 2
    assert budget < full
    limit = max(budget, *floors.values())
    engine = make_engine(root, tmp_path / "budget", registry, vram_budget=budget)
    try:
        out = engine.run(graph()).raise_for_status().value("out")
        manager = engine.services["models"]
        entry = _transformer(manager)
        assert entry.placement is not None and {p.dtype for p in entry.model.parameters()} == {torch.float16}
        assert entry.placement.plan("cpu", budget).streams
        assert 0 < manager.memory.peak <= limit
        torch.testing.assert_close(out, image, rtol=0, atol=1e-6)
    finally:
        engine.close()
    assert image.std() > 0.01
