"""Wan 2.2 S2V: the transformer built by UNETLoader's conversion from a tiny original-layout file equals the
official code's outputs recorded in tests/data/wan_s2v_official (first chunk, FramePack motion, the official
audio padding)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nodegraph_nodes.dit import wan_s2v
from tests.dit.tiny_wan_s2v import CONFIG, s2v_original_layout, s2v_transformer

DATA = Path(__file__).parent.parent / "data" / "wan_s2v_official" / "official_outputs.safetensors"
CASES = {"first_chunk": (None, (0, 0)), "extend": ("motion", (0, 0)), "extend_long": ("motion_long", (0, 0)),
         "official_audio_pad": ("motion", (73, 19))}


@pytest.fixture(scope="module")
def recorded():
    data = load_file(str(DATA))
    sd = s2v_original_layout(s2v_transformer(), "model.diffusion_model.")
    weights = {k[len("model.diffusion_model."):]: v for k, v in sd.items()}
    assert abs(sum(float(v.double().sum()) for v in weights.values()) - float(data["weights_sum"])) < 1e-6
    return data, wan_s2v.build_transformer(weights, torch.float32), sd


def test_detection_and_config(recorded):
    _, net, sd = recorded
    assert wan_s2v.detect_prefix(list(sd)) == "model.diffusion_model."
    assert wan_s2v.detect_prefix([k for k in sd if not k.startswith("model.diffusion_model.casual")]) is None
    for key, value in CONFIG.items():
        assert getattr(net.config, key) == value, key
    assert net.injected == {0: 0, 4: 1}


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_the_official_transformer(recorded, case):
    data, net, _ = recorded
    motion, pad = CASES[case]
    context = torch.cat([data["context"], torch.zeros(512 - data["context"].shape[0], data["context"].shape[1])])
    with torch.no_grad():
        out = net(data["x"], data["timestep"], context[None], data["audio"], reference=data["reference"],
                  control=data["control"], motion=data[motion] if motion else None, audio_pad=pad)
    assert out.shape == data[case].shape
    assert (out - data[case]).abs().max() < 1e-4
