"""--vram-budget-gb / --lowvram for the flow families: the tiny SD3.5, Flux.1, Qwen-Image and Z-Image files in fp16 (as
the releases ship them, bf16/fp16) run on the CPU (computing in fp32) through ComfyUI's nodes with a
budget smaller than the transformer: the transformer and the text encoders are streamed block by block,
the materialised fp32 weights stay under the budget, and the image equals the unbudgeted run's."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.dit.qwen_fixtures import qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.dit.test_flux_parity import flux_graph
from tests.dit.test_qwen_image import qwen_graph
from tests.dit.test_sd3_parity import sd3_graph
from tests.dit.test_z_image import z_graph
from tests.helpers.engines import make_engine

FLOW_FP16 = ("diffusion_models/tiny_sd35_mmdit.safetensors", "diffusion_models/tiny_flux_dev.safetensors",
             "text_encoders/tiny_clip_l.safetensors", "text_encoders/tiny_clip_g.safetensors",
             "text_encoders/tiny_t5xxl.safetensors")
QWEN_FP16 = ("diffusion_models/tiny_qwen_image.safetensors", "diffusion_models/tiny_z_image.safetensors",
             "text_encoders/tiny_qwen_2.5_vl.safetensors", "text_encoders/tiny_qwen_3.safetensors")


def _fp16_copy(src, dst, files):
    shutil.copytree(src / "models", dst / "models", symlinks=True)
    for name in files:
        path = dst / "models" / name
        sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(path)).items()}
        path.unlink()
        save_file(sd, str(path))
    return dst


@pytest.fixture(scope="module")
def flow_fp16(flow_root, tiny_sd3, tiny_flux, tmp_path_factory):
    return _fp16_copy(flow_root, tmp_path_factory.mktemp("flow_fp16"), FLOW_FP16)


@pytest.fixture(scope="module")
def qwen_fp16(qwen_root, tiny_qwen_image, tiny_z_image, tmp_path_factory):
    return _fp16_copy(qwen_root, tmp_path_factory.mktemp("qwen_fp16"), QWEN_FP16)


def _transformer(manager):
    for e in manager._models.values():
        if "transformer" in str(e.key) and e.model is not None:
            return e
    raise AssertionError("no transformer loaded")


CASES = {
    "sd3": ("flow_fp16", lambda: sd3_graph("separate")),
    "flux": ("flow_fp16", lambda: flux_graph("separate", "ksampler")),
    "qwen_image": ("qwen_fp16", lambda: qwen_graph("files")),
    "z_image": ("qwen_fp16", lambda: z_graph("files", cfg=2.0)),
}


@pytest.mark.parametrize("family", list(CASES))
def test_budget_streams_blocks_and_keeps_the_image(request, tmp_path, flow_registry, family):
    root_fixture, graph = CASES[family]
    root = request.getfixturevalue(root_fixture)
    whole = make_engine(root, tmp_path / "whole", flow_registry)
    try:
        image = whole.run(graph()).raise_for_status().value("out")
        models = whole.services["models"]
        assert models.memory.peak == 0  # unbudgeted: cast to fp32 once at load, nothing materialised on use
        transformer = _transformer(models)
        full = sum(p.numel() * 4 for p in transformer.model.parameters())
        from nodegraph.offload import Placement

        # each placed model's smallest footprint: resident part + one streamed block (fp16 → fp32)
        floors = {e.key: Placement(e.model.half(), torch.float32).plan("cpu", None, stream_all=True).peak_bound
                  for e in models._models.values() if e.placed and e.model is not None}
    finally:
        whole.close()
    budget = (floors[transformer.key] + full) // 2
    assert budget < full  # the transformer does not fit the budget
    # a text encoder whose resident part (embeddings) exceeds the budget streams at its floor
    limit = max(budget, *floors.values())
    for name, kwargs in {"budget": {"vram_budget": budget}, "lowvram": {"low_vram": True}}.items():
        engine = make_engine(root, tmp_path / name, flow_registry, **kwargs)
        try:
            out = engine.run(graph()).raise_for_status().value("out")
            manager = engine.services["models"]
            entry = _transformer(manager)
            assert entry.placement is not None and {p.dtype for p in entry.model.parameters()} == {torch.float16}
            if name == "budget":
                assert entry.placement.plan("cpu", budget).streams
                assert 0 < manager.memory.peak <= limit
            assert manager.memory.current == 0 or name == "budget"
            torch.testing.assert_close(out, image, rtol=0, atol=1e-6)
        finally:
            engine.close()
    assert image.std() > 0.01
