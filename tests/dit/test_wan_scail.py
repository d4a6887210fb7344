"""SCAIL-2: the transformer built by UNETLoader's conversion from a tiny original-layout file equals the official
code's outputs recorded in tests/data/scail2_official (Animation / Replacement Mode, additional references, the
history mask); the loader's detection; WanSCAILToVideo's conditions; one sampler step is the transformer on them;
ComfyUI's SCAIL-2 templates (fp16 and int8_convrot files) run end to end on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit import wan_scail
from nodegraph_nodes.dit.wan_scail_model import ScailInputs
from tests.dit.tiny_wan_scail import CONFIG, official_inputs, scail_original_layout, scail_transformer

DATA = Path(__file__).parent.parent / "data" / "scail2_official" / "official_outputs.safetensors"
#: case → (replacement mode, additional references, history mask)
CASES = {"animation": (False, False, False), "replacement": (True, False, False),
         "replacement_additional": (True, True, False), "animation_additional": (False, True, False),
         "animation_history": (False, False, True)}


@pytest.fixture(scope="module")
def recorded():
    data = {**load_file(str(DATA)), **official_inputs()}
    sd = scail_original_layout(scail_transformer(), "model.diffusion_model.")
    weights = {k[len("model.diffusion_model."):]: v for k, v in sd.items()}
    assert abs(sum(float(v.double().sum()) for v in weights.values()) - float(data["weights_sum"])) < 1e-6
    return data, wan_scail.build_transformer(weights, torch.float32), sd


def test_detection_and_config(recorded):
    _, net, sd = recorded
    assert wan_scail.detect_prefix(list(sd)) == "model.diffusion_model."
    assert wan_scail.detect_prefix([k for k in sd if "patch_embedding_pose" not in k]) is None
    for key, value in CONFIG.items():
        assert getattr(net.config, key) == value, key
    first = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if "patch_embedding_mask" not in k}
    with pytest.raises(ModelFileError, match="SCAIL \\(first version\\)"):
        wan_scail.build_transformer(first, torch.float32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_the_official_transformer(recorded, case):
    data, net, _ = recorded
    replace, additional, history = CASES[case]
    reference, mask = data["reference"], data["reference_mask"]
    if additional:  # additional references first, the primary next to the video
        reference = torch.cat([data["additional"], reference], dim=2)
        mask = torch.cat([data["additional_mask"], mask], dim=2)
    mask = torch.cat([mask, torch.zeros(1, 28, 3, 16, 24)], dim=2)
    context = torch.cat([data["context"], torch.zeros(512 - data["context"].shape[0], data["context"].shape[1])])
    inputs = ScailInputs(image=data["clip"], reference=reference, reference_mask=mask, pose=data["pose"],
                         pose_mask=data["pose_mask"], history=data["history"] if history else None, replace=replace)
    with torch.no_grad():
        out = net(data["x"], data["timestep"], context[None], inputs)
    assert out.shape == data[case].shape == (1, 16, 3, 16, 24)
    assert (out - data[case]).abs().max() < 1e-4
