"""InfiniteTalk's audio adapter (nodes/dit/wan_infinitetalk.py) against MeiGen-AI's own module code run on the
same tiny random weights (tests/data/wan_infinitetalk_official/README.md): audio windows and projection for one
and two speakers, the speaker attention map, and each block's audio cross-attention, to 1e-4."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nodegraph_nodes.dit.wan_infinitetalk import (InfiniteTalkAdapter, InfiniteTalkConfig, audio_windows,
                                                   frame_groups, is_infinitetalk, speaker_attention_map,
                                                   speaker_positions)

DATA = Path(__file__).parents[1] / "data" / "wan_infinitetalk_official"
FRAMES, GRID_FRAMES, FRAME_TOKENS = 9, 3, 6


@pytest.fixture(scope="module")
def recorded():
    sd = load_file(DATA / "adapter.safetensors")
    return sd, load_file(DATA / "reference.safetensors")


def test_config_read_off_the_weights(recorded):
    sd, _ = recorded
    assert is_infinitetalk(sd)
    assert InfiniteTalkConfig.from_state_dict(sd) == InfiniteTalkConfig(
        dim=32, num_blocks=2, audio_row=24, intermediate_dim=16, context_tokens=4, token_dim=12)
    with pytest.raises(ValueError, match="patch.safetensors: not an InfiniteTalk adapter"):
        InfiniteTalkConfig.from_state_dict({"x": torch.zeros(1)}, "patch.safetensors")


def test_audio_tokens_match_the_official_code(recorded):
    sd, ref = recorded
    adapter = InfiniteTalkAdapter.from_state_dict(sd, num_heads=4)
    feats = [ref["features_1"], ref["features_2"]]
    with torch.no_grad():
        single = adapter.audio_tokens(feats[:1], 0, FRAMES)
        two = adapter.audio_tokens(feats, 0, FRAMES)
    assert single.shape == (3, 4, 12) and two.shape == (3, 8, 12)
    torch.testing.assert_close(single, ref["tokens_single"], atol=1e-4, rtol=0)
    torch.testing.assert_close(two, ref["tokens_two"], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="speaker 1's audio features have shape"):
        adapter.audio_tokens([torch.zeros(10, 4, 8)], 0, FRAMES)


def test_audio_windows_clamp_and_group():
    feats = torch.arange(10.0)[:, None, None]
    win = audio_windows([feats], 0, FRAMES)
    assert win.shape == (1, 9, 5, 1, 1)
    assert win[0, 0, :, 0, 0].tolist() == [0, 0, 0, 1, 2] and win[0, 8, :, 0, 0].tolist() == [6, 7, 8, 9, 9]
    first, latter = frame_groups(win)
    assert first.shape == (1, 1, 5, 1, 1) and latter.shape == (1, 2, 8, 1, 1)
    # latent frame 1 = video frames 1..4: frame 1's window up to its centre, frames 2 and 3's centres, frame 4's rest
    assert latter[0, 0, :, 0, 0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="1 \\+ 4·k"):
        frame_groups(win[:, :8])


def test_speaker_map_and_block_outputs_match_the_official_code(recorded):
    sd, ref = recorded
    adapter = InfiniteTalkAdapter.from_state_dict(sd, num_heads=4)
    attn_map = speaker_attention_map(ref["q"], ref["k"], FRAME_TOKENS, ref["masks"])
    torch.testing.assert_close(attn_map, ref["attn_map"], atol=1e-6, rtol=0)
    positions = speaker_positions(attn_map)
    assert set(positions[attn_map.argmax(0) == 2].tolist()) <= {12.0}
    with torch.no_grad():
        single = adapter.audio_tokens([ref["features_1"]], 0, FRAMES)
        two = adapter.audio_tokens([ref["features_1"], ref["features_2"]], 0, FRAMES)
        for i, block in enumerate(adapter.blocks):
            torch.testing.assert_close(block(ref["x"], single, GRID_FRAMES), ref[f"block{i}_single"],
                                       atol=1e-4, rtol=0)
            out_two = block(ref["x"], two, GRID_FRAMES, positions)
            torch.testing.assert_close(out_two, ref[f"block{i}_two"], atol=1e-4, rtol=0)
            # the speakers' rotary positions matter: without them the output is another one
            assert (block(ref["x"], two, GRID_FRAMES) - out_two).abs().max() > 1e-3
        # a batch of two (cond and uncond together) gives each item the single-item result
        both = adapter.blocks[0](torch.cat([ref["x"], ref["x"]]), single, GRID_FRAMES)
        torch.testing.assert_close(both, ref["block0_single"].expand(2, -1, -1), atol=1e-5, rtol=0)


#: the official block's module names → a diffusers ``WanTransformerBlock``'s
OFFICIAL_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k", "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}


def diffusers_blocks(full: dict) -> torch.nn.ModuleList:
    """The recorded official blocks' Wan weights in diffusers ``WanTransformerBlock``s (dim 32, ffn 64, 4 heads)."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    blocks = torch.nn.ModuleList()
    for i in range(2):
        block = WanTransformerBlock(32, 64, 4, cross_attn_norm=True, eps=1e-6, added_kv_proj_dim=32)
        sd = {}
        for key, value in full.items():
            key = key[len(f"blocks.{i}."):] if key.startswith(f"blocks.{i}.") else None
            if key is None or key.startswith(("audio_cross_attn", "norm_x")):
                continue
            if key == "modulation":
                sd["scale_shift_table"] = value
                continue
            module, leaf = key.rsplit(".", 1)
            sd[f"{OFFICIAL_TO_DIFFUSERS[module]}.{leaf}"] = value
        block.load_state_dict(sd, strict=True)
        blocks.append(block)
    return blocks


@pytest.mark.parametrize("speakers", [1, 2])
def test_hooked_diffusers_blocks_match_the_official_block(recorded, speakers):
    """Two diffusers Wan blocks with the audio hooks equal the official ``WanAttentionBlock`` (self-attention,
    image/text cross-attention, audio cross-attention, FFN) on the same weights; the hooks go when the
    context closes."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from nodegraph_nodes.dit.wan_infinitetalk_patch import AudioCall, attach_audio

    sd, ref = recorded
    blocks_ref = load_file(DATA / "blocks_reference.safetensors")
    blocks = diffusers_blocks(load_file(DATA / "blocks.safetensors"))
    adapter = InfiniteTalkAdapter.from_state_dict(sd, num_heads=4)
    rotary = WanRotaryPosEmbed(8, (1, 2, 2), 1024)(torch.zeros(1, 16, 3, 4, 6))  # grid 3 × 2 × 3
    feats = [ref["features_1"], ref["features_2"]][:speakers]
    masks = ref["masks"] if speakers == 2 else None
    expected = blocks_ref["blocks_single" if speakers == 1 else "blocks_two"]

    def run():
        h = ref["x"]
        for block in blocks:
            h = block(h, blocks_ref["context"], blocks_ref["e"], rotary)
        return h

    with torch.no_grad():
        tokens = adapter.audio_tokens(feats, 0, FRAMES)
        with attach_audio(blocks, AudioCall(adapter, tokens, 1.0, masks)):
            hooked = run()
        plain = run()
    torch.testing.assert_close(hooked, expected, atol=1e-4, rtol=0)
    assert (plain - expected).abs().max() > 1.0
