"""--vram-budget-gb / --lowvram for the flow families: the tiny SD3.5, Flux.1, Qwen-Image and Z-Image files in fp16 (as
the releases ship them, bf16/fp16) run on the CPU (computing in fp32) through ComfyUI's nodes with a
budget smaller than the transformer: the transformer and the text encoders are streamed block by block,
the materialised fp32 weights stay under the budget, and the image equals the unbudgeted run's."""

from __future__ import annotations

import pytest

from tests.dit.offload_runs import budgeted_run, fp16_copy, unbudgeted_run
from tests.dit.qwen_fixtures import qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.dit.test_flux_parity import flux_graph
from tests.dit.test_qwen_image import qwen_graph
from tests.dit.test_sd3_parity import sd3_graph
from tests.dit.test_z_image import z_graph

FLOW_FP16 = ("diffusion_models/tiny_sd35_mmdit.safetensors", "diffusion_models/tiny_flux_dev.safetensors",
             "text_encoders/tiny_clip_l.safetensors", "text_encoders/tiny_clip_g.safetensors",
             "text_encoders/tiny_t5xxl.safetensors")
QWEN_FP16 = ("diffusion_models/tiny_qwen_image.safetensors", "diffusion_models/tiny_z_image.safetensors",
             "text_encoders/tiny_qwen_2.5_vl.safetensors", "text_encoders/tiny_qwen_3.safetensors")


@pytest.fixture(scope="module")
def flow_fp16(flow_root, tiny_sd3, tiny_flux, tmp_path_factory):
    return fp16_copy(flow_root, tmp_path_factory.mktemp("flow_fp16"), FLOW_FP16)


@pytest.fixture(scope="module")
def qwen_fp16(qwen_root, tiny_qwen_image, tiny_z_image, tmp_path_factory):
    return fp16_copy(qwen_root, tmp_path_factory.mktemp("qwen_fp16"), QWEN_FP16)


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
    base = unbudgeted_run(root, tmp_path, flow_registry, graph)
    assert base.peak == 0  # unbudgeted: cast to fp32 once at load, nothing materialised on use
    for mode in ("budget", "lowvram"):
        current = budgeted_run(root, tmp_path, flow_registry, graph, base, mode)
        assert current == 0 or mode == "budget"
    assert base.image.std() > 0.01
