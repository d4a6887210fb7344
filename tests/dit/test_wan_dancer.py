"""The Wan-Dancer transformer (nodes/dit/wan_dancer*.py) against the official Wan-Dancer code run on the same tiny
random weights (tests/data/wan_dancer_official/README.md): the local (30 fps) and global (time-mapped rope, global
patching and head) forwards, without the reference image, with block 9 skipped; detection and conversion of the
official and the split-projection layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nodegraph_nodes.dit.wan_dancer import convert, detect_prefix, transformer_config
from nodegraph_nodes.dit.wan_dancer_model import WanDancerTransformer, time_mapped
from tests.dit.tiny_wan_dancer import INJECTORS, LAYERS, dancer_original_layout, dancer_transformer, official_inputs

DATA = Path(__file__).parents[1] / "data" / "wan_dancer_official"
PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def recorded():
    file_sd = dancer_original_layout(dancer_transformer())
    ref = load_file(DATA / "official_outputs.safetensors")
    total = sum(float(v.double().sum()) for v in file_sd.values())
    assert total == pytest.approx(float(ref["weights_sum"]), rel=1e-6), "the tiny weights' generator changed"
    sd = {k[len(PREFIX):]: v for k, v in file_sd.items()}
    net = WanDancerTransformer(**transformer_config(convert(sd)))
    net.load_state_dict(convert(sd), strict=True)
    return file_sd, net.eval(), ref


def _forward(net, fps: float, ref: bool = True) -> torch.Tensor:
    inp = official_inputs()
    with torch.no_grad():
        return net(torch.cat([inp["x"], inp["y"]], dim=1), inp["timestep"], inp["context"], inp["clip"],
                   inp["clip_ref"] if ref else None, inp["music"][None], fps=fps)


def test_detection_and_config(recorded):
    file_sd, net, _ = recorded
    assert detect_prefix(file_sd.keys()) == PREFIX
    assert detect_prefix([k for k in file_sd if "music_projection" not in k]) is None  # plain Wan 2.1 I2V
    cfg = net.config
    assert (cfg.num_layers, cfg.injectors, cfg.num_attention_heads, cfg.in_channels) == (LAYERS, INJECTORS, 2, 36)
    assert (cfg.music_features, cfg.music_dim, cfg.music_ffn, cfg.music_layers) == (35, 256, 1024, 2)


@pytest.mark.parametrize("case, fps, ref", [("local", 30.0, True), ("global_15", 15.0, True),
                                            ("global_10", 10.0, True), ("global_15_no_ref", 15.0, False)])
def test_equals_the_official_transformer(recorded, case, fps, ref):
    _, net, recorded_out = recorded
    out = _forward(net, fps, ref)
    assert (out - recorded_out[case]).abs().max() < 1e-4


def test_a_skipped_block_equals_the_official_skip_layer(recorded):
    # the official negative pass skips block 9; nodegraph's SkipLayerGuidanceDiTSimple passes a block's input on
    _, net, recorded_out = recorded
    block = net.blocks[9]
    block.forward = lambda hidden, *args, **kwargs: hidden
    try:
        out = _forward(net, 30.0)
    finally:
        del block.forward
    assert (out - recorded_out["local_skip9"]).abs().max() < 1e-4
    assert (out - recorded_out["local"]).abs().max() > 1e-2


def test_split_music_projections_load_the_same(recorded):
    # ComfyUI-style files may hold the music attention's q / k / v projections apart
    file_sd, net, _ = recorded
    sd = {k[len(PREFIX):]: v for k, v in file_sd.items()}
    for i in range(2):
        w = sd.pop(f"music_encoder.{i}.self_attn.in_proj_weight").chunk(3)
        b = sd.pop(f"music_encoder.{i}.self_attn.in_proj_bias").chunk(3)
        for name, wi, bi in zip("qkv", w, b):
            sd[f"music_encoder.{i}.self_attn.{name}_proj.weight"] = wi
            sd[f"music_encoder.{i}.self_attn.{name}_proj.bias"] = bi
    converted = convert(sd)
    for k, v in net.state_dict().items():
        assert torch.equal(converted[k], v), k
    # the official file's unused reference-latent convolution (ComfyUI: "never called") is dropped
    extra = convert({**sd, "ref_conv.weight": torch.zeros(256, 16, 2, 2), "ref_conv.bias": torch.zeros(256)})
    assert extra.keys() == converted.keys()
    del sd["music_encoder.1.self_attn.k_proj.bias"]
    with pytest.raises(Exception, match="music_encoder.1.self_attn.in_proj_bias"):
        convert(sd)


def test_the_time_map_spans_the_clip():
    table = torch.polar(torch.ones(200, 2, dtype=torch.float64),
                        torch.arange(200, dtype=torch.float64)[:, None] * torch.tensor([1.0, 0.1], dtype=torch.float64))
    mapped = time_mapped(table, 5, 10.0)  # 3 rows of the 30-fps table per frame; the last frame at int(15 + .5) - 1
    assert torch.allclose(mapped[0], table[0]) and torch.allclose(mapped[-1], table[14])
    assert torch.allclose(mapped[1], table[2] * (1 - (3.0 - 2)) + table[3] * (3.0 - 2), atol=1e-5)


def test_music_must_split_the_tokens(recorded):
    _, net, _ = recorded
    inp = official_inputs()
    x = torch.cat([inp["x"], inp["y"]], dim=1)[..., :6, :6]  # 3 × 3 tokens a frame: not a multiple of 8 groups
    with pytest.raises(ValueError, match="do not split into the music's 24 groups"):
        net(x, inp["timestep"], inp["context"], inp["clip"], None, inp["music"][None], fps=30.0)
