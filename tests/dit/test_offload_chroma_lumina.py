"""--vram-budget-gb / --lowvram for Chroma and Lumina 2: their tiny files in fp16 run on the CPU through
ComfyUI's nodes with a budget smaller than the transformer, which streams block by block; the
materialised weights stay under the budget and the image equals the unbudgeted run's (as
tests/dit/test_offload_flow.py does for SD3.5, Flux.1, Qwen-Image and Z-Image)."""

from __future__ import annotations

import pytest

from nodegraph.registry import default_registry

from tests.dit.offload_runs import budgeted_run, fp16_copy, unbudgeted_run
from tests.dit.test_chroma import chroma_graph
from tests.dit.test_lumina2 import lumina_graph
from tests.dit.tiny_chroma import build_chroma
from tests.dit.tiny_lumina2 import build_lumina2

CASES = {
    "chroma": (build_chroma, ("diffusion_models/tiny_chroma.safetensors", "text_encoders/tiny_t5xxl.safetensors"),
               lambda: chroma_graph("files")),
    "lumina2": (build_lumina2, ("diffusion_models/tiny_lumina_2.safetensors",
                                "text_encoders/tiny_gemma_2_2b.safetensors"), lambda: lumina_graph("files")),
}


@pytest.mark.parametrize("family", list(CASES))
def test_budget_streams_blocks_and_keeps_the_image(tmp_path_factory, tmp_path, family):
    build, fp16_files, graph = CASES[family]
    src = tmp_path_factory.mktemp(f"{family}_models")
    build(src)
    root = fp16_copy(src, tmp_path_factory.mktemp(f"{family}_fp16"), fp16_files)
    registry = default_registry(packs=False)
    base = unbudgeted_run(root, tmp_path, registry, graph)
    budgeted_run(root, tmp_path, registry, graph, base, "budget")
    assert base.image.std() > 0.01
