"""--vram-budget-gb / --lowvram for the flow families: the tiny SD3.5 and Flux.1 files saved in fp16 (as
the releases ship them, bf16/fp16) run on the CPU (computing in fp32) through ComfyUI's nodes with a
budget smaller than the transformer: the transformer and the text encoders are streamed block by block,
the materialised fp32 weights stay under the budget, and the image equals the unbudgeted run's."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.dit.test_flux_parity import flux_graph
from tests.dit.test_sd3_parity import sd3_graph
from tests.helpers.engines import make_engine

FP16_FILES = ("diffusion_models/tiny_sd35_mmdit.safetensors", "diffusion_models/tiny_flux_dev.safetensors",
              "text_encoders/tiny_clip_l.safetensors", "text_encoders/tiny_clip_g.safetensors",
              "text_encoders/tiny_t5xxl.safetensors")


@pytest.fixture(scope="module")
def fp16_root(flow_root, tiny_sd3, tiny_flux, tmp_path_factory):
    root = tmp_path_factory.mktemp("flow_fp16")
    shutil.copytree(flow_root / "models", root / "models", symlinks=True)
    for name in FP16_FILES:
        path = root / "models" / name
        sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(path)).items()}
        path.unlink()
        save_file(sd, str(path))
    return root


def _transformer_bytes(engine, family: str) -> int:
    """The fp32 bytes of the loaded transformer (what an unbudgeted run materialises)."""
    for e in engine.services["models"]._models.values():
        if "transformer" in str(e.key) and e.model is not None and family in type(e.model).__name__.lower():
            return sum(p.numel() * 4 for p in e.model.parameters())
    raise AssertionError("no transformer loaded")


@pytest.mark.parametrize("family,graph,budget", [
    ("sd3", lambda: sd3_graph("separate"), 1_000_000),
    ("flux", lambda: flux_graph("separate", "ksampler"), 3_500_000),
])
def test_budget_streams_blocks_and_keeps_the_image(fp16_root, tmp_path, flow_registry, family, graph, budget):
    images, managers = {}, {}
    for name, kwargs in {"whole": {}, "budget": {"vram_budget": budget}, "lowvram": {"low_vram": True}}.items():
        engine = make_engine(fp16_root, tmp_path / name, flow_registry, **kwargs)
        try:
            images[name] = engine.run(graph()).raise_for_status().value("out")
            managers[name] = engine.services["models"]
            if name == "whole":
                full = _transformer_bytes(engine, family)
        finally:
            engine.close()
    assert full > budget  # the transformer alone does not fit
    budgeted = managers["budget"]
    streamed = [e for e in budgeted._models.values() if e.placement is not None
                and e.placement.plan("cpu", budget).streams]
    assert any("transformer" in str(e.key) for e in streamed)
    assert 0 < budgeted.memory.peak <= budget
    assert managers["whole"].memory.peak == 0  # unbudgeted: cast to fp32 once at load, nothing placed
    for entry in budgeted._models.values():  # the weights stay in the file's dtype (no fp32 copy held)
        if entry.placement is not None and "transformer" in str(entry.key):
            assert {p.dtype for p in entry.model.parameters()} == {torch.float16}
    assert managers["lowvram"].memory.current == 0
    torch.testing.assert_close(images["budget"], images["whole"], rtol=0, atol=1e-6)
    torch.testing.assert_close(images["lowvram"], images["whole"], rtol=0, atol=1e-6)
    assert images["whole"].std() > 0.01
