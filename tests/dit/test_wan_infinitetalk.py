"""InfiniteTalk's audio adapter (nodes/dit/wan_infinitetalk.py) against MeiGen-AI's own module code run on the
same tiny random weights (tests/data/wan_infinitetalk_official/README.md): audio windows and projection for one
and two speakers, the speaker attention map, and each block's audio cross-attention, to 1e-4."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from nodegraph_nodes.dit.wan_infinitetalk import (InfiniteTalkAdapter, InfiniteTalkConfig, audio_windows,
                                                   frame_groups, is_infinitetalk, speaker_attention_map,
                                                   speaker_positions)
from tests.helpers.engines import engine_fixture

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
    short = audio_windows([feats[:6]], 0, FRAMES)  # past the audio: padded with its first row, then clamped
    assert short[0, 8, :, 0, 0].tolist() == [0, 0, 0, 0, 0] and short[0, 4, :, 0, 0].tolist() == [2, 3, 4, 5, 0]
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


# -- the node on tiny files ---------------------------------------------------------------------------------

TEMPLATE = "video_wan2_1_infinitetalk"


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """The tiny Wan files (tests/dit/tiny_wan.py), a tiny wav2vec2 large file and a tiny adapter for them."""
    from tests.dit.tiny_wan import build_wan
    from tests.dit.tiny_wan_infinitetalk import write_adapter
    from tests.dit.tiny_wan_s2v import write_audio_encoder

    root = tmp_path_factory.mktemp("wan_infinitetalk_models")
    tiny = build_wan(root)
    write_audio_encoder(root / "models")
    write_adapter(root / "models")
    return tiny


engine = engine_fixture()


def _inputs(engine):
    import numpy as np
    from PIL import Image

    from tests.dit.test_wan_s2v import write_mp3

    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    write_mp3(engine.paths.input_dir / "voice.mp3", 1.0)
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(
        engine.paths.input_dir / "face.png")


@dataclass
class Loaders:
    """The tiny Wan I2V model, text encoder, VAE, InfiniteTalk patch and the encoded ``voice.mp3`` in a graph."""

    model: Any
    clip: Any
    vae: Any
    patch: Any
    enc: Any


def _loaders(g) -> Loaders:
    model = g.node("UNETLoader", unet_name="tiny_wan_i2v.safetensors", weight_dtype="default").out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    patch = g.node("ModelPatchLoader", name="tiny_infinitetalk_single.safetensors").out(0)
    enc = g.node("AudioEncoderEncode", audio_encoder=g.node("AudioEncoderLoader",
                 audio_encoder_name="tiny_wav2vec2_large.safetensors").out(0),
                 audio=g.node("LoadAudio", audio="voice.mp3").out(0)).out(0)
    return Loaders(model, clip, vae, patch, enc)


def test_node_samples_with_the_audio(engine, tiny_env):
    """UNETLoader → WanInfiniteTalkToVideo → KSampler (2 euler steps, cfg 1): the audio (``audio_scale`` 1 against
    0) changes the result, the conditioning is WanImageToVideo's; the extend chunk trims ``motion_frame_count``
    frames and its first latent frame is the VAE latent of the last previous frame."""
    from nodegraph.builder import Graph

    _inputs(engine)
    g = Graph()
    ld = _loaders(g)
    model, clip, vae, patch, enc = ld.model, ld.clip, ld.vae, ld.patch, ld.enc
    pos, neg = g.node("CLIPTextEncode", text="a face talking", clip=clip), g.node("CLIPTextEncode", text="", clip=clip)
    image = g.node("LoadImage", image="face.png").out(0)
    size = dict(width=32, height=32, length=5)

    def sample(name, m, p, n, latent):
        node = g.node("KSampler", name, model=m, seed=3, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
                      positive=p, negative=n, latent_image=latent, denoise=1.0)
        g.node("PreviewAny", source=node.out(0))
        return node

    for scale in (0.0, 1.0):
        it = g.node("WanInfiniteTalkToVideo", f"it{scale}", mode="single_speaker", model=model, model_patch=patch,
                    positive=pos, negative=neg, vae=vae, audio_encoder_output_1=enc, start_image=image,
                    motion_frame_count=2, audio_scale=scale, **size)
        sample(f"s{scale}", it.out(0), it.out(1), it.out(2), it.out(3))
    i2v = g.node("WanImageToVideo", "i2v", positive=pos, negative=neg, vae=vae, start_image=image, batch_size=1,
                 **size)
    sample("plain", model, i2v.out(0), i2v.out(1), i2v.out(2))
    frames = g.node("VAEDecode", samples=g.node("KSampler", "s_ext_src", model=model, seed=3, steps=1, cfg=1.0,
                                                sampler_name="euler", scheduler="simple", positive=i2v.out(0),
                                                negative=i2v.out(1), latent_image=i2v.out(2), denoise=1.0).out(0),
                    vae=vae).out(0)
    ext = g.node("WanInfiniteTalkToVideo", "ext", mode="single_speaker", model=model, model_patch=patch,
                 positive=pos, negative=neg, vae=vae, audio_encoder_output_1=enc, start_image=image,
                 previous_frames=frames, motion_frame_count=1, audio_scale=1.0, **size)
    sample("s_ext", ext.out(0), ext.out(1), ext.out(2), ext.out(3))
    g.node("PreviewAny", source=ext.out(4))
    last = g.node("VAEEncode", "last", vae=vae, pixels=g.node("ImageFromBatch", image=frames, batch_index=4,
                                                                length=1).out(0))
    g.node("PreviewAny", source=last.out(0))
    result = engine.run(g.to_api()).raise_for_status()
    silent, talking = result.value("s0.0", 0)["samples"], result.value("s1.0", 0)["samples"]
    assert silent.shape == (1, 16, 2, 4, 4) and torch.isfinite(talking).all()
    assert (talking - silent).abs().max() > 1e-3
    it_pos, i2v_pos = result.value("it1.0", 1)[0][1], result.value("i2v", 0)[0][1]
    assert torch.equal(it_pos["concat_latent_image"], i2v_pos["concat_latent_image"])
    assert torch.equal(it_pos["concat_mask"], i2v_pos["concat_mask"])
    assert torch.equal(result.value("it1.0", 3)["samples"], result.value("i2v", 2)["samples"])
    assert result.value("it1.0", 4) == 0 and result.value("ext", 4) == 1
    extended = result.value("s_ext", 0)["samples"]
    torch.testing.assert_close(extended[:, :, 0], result.value("last", 0)["samples"].reshape(1, 16, 4, 4), atol=1e-4,
                               rtol=0)


def test_infinitetalk_template_runs(engine, tiny_env):
    """ComfyUI's official InfiniteTalk template (the installed comfyui_workflow_templates_json package, MIT) on the
    tiny files under its names (the lightx2v LoRA: a tiny LoRA in Wan's original names), two speakers (their
    clips joined by AudioConcat, Painter masks left blank as saved), made smaller (32×32, 5 frames a chunk, 2
    steps, 1 motion frame): the first chunk and the extend chunk run and both videos are saved with the audio."""
    import numpy as np
    from PIL import Image

    from tests.dit.template_runs import package_template_api, set_inputs, set_primitive_ints
    from tests.dit.test_wan_s2v import write_mp3
    from tests.dit.test_wan_vace import write_original_lora
    from tests.dit.tiny_qwen import copy_as

    copy_as(tiny_env.root, {
        "diffusion_models/tiny_wan_i2v.safetensors": "diffusion_models/Wan2_1-I2V-14B-480p_fp8_e4m3fn_scaled_KJ.safetensors",
        "text_encoders/tiny_umt5_xxl.safetensors": "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "vae/tiny_wan_2.1_vae.safetensors": "vae/Wan2_1_VAE_bf16.safetensors",
        "model_patches/tiny_infinitetalk_single.safetensors": "model_patches/wan2.1_infiniteTalk_multi_fp16.safetensors",
        "audio_encoders/tiny_wav2vec2_large.safetensors": "audio_encoders/wav2vec2-chinese-base_fp16.safetensors"})
    loras = tiny_env.root / "models" / "loras"
    loras.mkdir(exist_ok=True)
    write_original_lora(tiny_env.i2v_transformer, loras / "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors")
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    write_mp3(engine.paths.input_dir / "audio_speaker1_woman.mp3", 0.5)
    write_mp3(engine.paths.input_dir / "audio_speaker2_man.mp3", 0.5)
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
        engine.paths.input_dir / "two_character_talking.png")
    api = package_template_api(TEMPLATE, engine.registry)
    set_primitive_ints(api, {832: 32, 480: 32})
    set_inputs(api, {"WanInfiniteTalkToVideo": {"length": 5, "motion_frame_count": 1},
                     "BasicScheduler": {"steps": 2}})
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert executed.count("WanInfiniteTalkToVideo") == 2 and executed.count("SamplerCustomAdvanced") == 2
    assert {"AudioConcat", "Painter", "ModelPatchLoader", "LoraLoaderModelOnly", "SaveVideo"} <= set(executed)
    import av

    counts = []
    for path in sorted(engine.paths.output_dir.rglob("*.mp4")):
        with av.open(str(path)) as container:
            counts.append(sum(1 for _ in container.decode(video=0)))
            assert container.streams.audio  # the joined speakers' audio
    # the first chunk alone, and both chunks batched (the extend chunk keeps its motion frame, as the template does)
    assert sorted(counts) == [5, 10]


def test_node_two_speakers(engine, tiny_env):
    """two_speakers with a left and a right mask: the speakers' map is taken inside the real model (attn1 hook) and
    the result differs from one speaker's; without the second clip or the masks the node says what is missing."""
    from nodegraph.builder import Graph
    from nodegraph.errors import ExecutionFailed

    _inputs(engine)

    def graph(two: bool, masks: bool = True):
        g = Graph()
        ld = _loaders(g)
        model, clip, vae, patch, enc = ld.model, ld.clip, ld.vae, ld.patch, ld.enc
        pos = g.node("CLIPTextEncode", text="two faces talking", clip=clip)
        neg = g.node("CLIPTextEncode", text="", clip=clip)
        extra = {}
        if two:
            extra["mode.audio_encoder_output_2"] = enc
            if masks:
                left = g.node("SolidMask", value=1.0, width=16, height=32).out(0)
                canvas = g.node("SolidMask", value=0.0, width=32, height=32).out(0)
                extra["mode.mask_1"] = g.node("MaskComposite", destination=canvas, source=left, x=0, y=0,
                                              operation="add").out(0)
                extra["mode.mask_2"] = g.node("MaskComposite", destination=canvas, source=left, x=16, y=0,
                                              operation="add").out(0)
        it = g.node("WanInfiniteTalkToVideo", "it", mode="two_speakers" if two else "single_speaker", model=model,
                    model_patch=patch, positive=pos, negative=neg, vae=vae, audio_encoder_output_1=enc,
                    start_image=g.node("LoadImage", image="face.png").out(0), width=32, height=32, length=5,
                    motion_frame_count=1, audio_scale=1.0, **extra)
        s = g.node("KSampler", "s", model=it.out(0), seed=3, steps=1, cfg=1.0, sampler_name="euler",
                   scheduler="simple", positive=it.out(1), negative=it.out(2), latent_image=it.out(3), denoise=1.0)
        g.node("PreviewAny", source=s.out(0))
        return g.to_api()

    one = engine.run(graph(False)).raise_for_status().value("s", 0)["samples"]
    two = engine.run(graph(True)).raise_for_status().value("s", 0)["samples"]
    assert torch.isfinite(two).all() and (two - one).abs().max() > 1e-3
    with pytest.raises(ExecutionFailed, match="two_speakers needs"):
        engine.run(graph(True, masks=False)).raise_for_status()
