"""WanDancerEncodeAudio's music features against librosa 0.11 run on the same track (the official recipe's steps,
tests/data/wan_dancer_official/README.md), its frame rate and prompt text, WanDancerVideo's keyframe mask, and
ComfyUI's official ``video_wan_dancer`` template end to end on tiny files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nodegraph_nodes.dit import wan_dancer_music as music
from nodegraph_nodes.dit.wan_dancer_nodes import WanDancerEncodeAudio, fps_prompt, keyframe_mask, music_fps
from tests.dit.tiny_wan_dancer import synthetic_song
from tests.helpers.engines import engine_fixture

DATA = Path(__file__).parents[1] / "data" / "wan_dancer_official"
TEMPLATE = "video_wan_dancer"


@pytest.fixture(scope="module")
def librosa_ref():
    return load_file(DATA / "librosa_features.safetensors")


def test_music_features_equal_librosa(librosa_ref):
    ref = librosa_ref["features"].numpy()
    start_bpm = float(librosa_ref["start_bpm"])
    assert music.start_tempo(synthetic_song(22050)) == pytest.approx(start_bpm)
    y = synthetic_song(music.LOAD_RATE)
    assert music.estimate_tuning(y, music.ANALYSIS_RATE, 36) == pytest.approx(float(librosa_ref["tuning"]))
    out = music.music_features(y, start_bpm)
    assert out.shape == ref.shape == (181, 35)
    assert np.abs(out[:, 0] - ref[:, 0]).max() < 1e-4 * np.abs(ref[:, 0]).max()  # onset strength
    assert np.abs(out[:, 1:21] - ref[:, 1:21]).max() < 1e-3  # MFCCs (dB scale, up to ~500)
    assert np.abs(out[:, 21:33] - ref[:, 21:33]).max() < 1e-4  # CENS chroma
    assert np.flatnonzero(out[:, 33]).tolist() == librosa_ref["peaks"].tolist()
    assert np.flatnonzero(out[:, 34]).tolist() == librosa_ref["beats"].tolist()


def test_the_constant_q_transform_peaks_at_a_sines_bin():
    # librosa halves the rate per octave with soxr, scipy's polyphase filter stands in (recorded against librosa
    # 0.11 on the song: at most 0.0038 of a peak of 3.18, in the lowest octaves); the chroma above equals librosa's
    for k in (40, 130, 240):
        freq = music.C1 * 2.0 ** (k / 36)
        y = (0.5 * np.sin(2 * np.pi * freq * np.arange(22050) / music.ANALYSIS_RATE)).astype(np.float32)
        cqt = music.cqt_magnitude(y, music.ANALYSIS_RATE, music.HOP, 252, 36, 0.0)
        assert cqt.shape == (252, 44) and int(cqt[:, 22].argmax()) == k


def test_encode_audio_node(librosa_ref):
    y = torch.from_numpy(synthetic_song(music.LOAD_RATE))
    audio = {"waveform": torch.stack([y, y])[None], "sample_rate": music.LOAD_RATE}  # stereo: averaged
    out, text = WanDancerEncodeAudio(None).execute(audio, 149, 0.7)
    ref = librosa_ref["features"]
    assert out["audio_feature"].shape == (1, 181, 35) and out["audio_inject_scale"] == 0.7
    assert torch.allclose(out["audio_feature"][0, :, :34], ref[:, :34], atol=1e-3)
    assert out["fps"] == 30.0 and text == ", 帧率是30fps。"
    out, text = WanDancerEncodeAudio(None).execute(audio, 49, 1.0)
    assert out["fps"] == 7.5 and text == "帧率是7.5000"


def test_frame_rate_rule():
    assert music_fps(300, 149) == 15.0  # 10 s for 149 frames: twice as fast
    assert music_fps(150, 149) == 30.0
    assert music_fps(700, 149) == 6.0  # int(4.70 + 0.5) = 5
    assert music_fps(1050, 149) == 4.2857  # 30 / 7, 4 decimals
    assert music_fps(20, 149) == 30.0  # shorter than the video: the divisor stays 1
    assert fps_prompt(7.5) == "帧率是7.5000" and fps_prompt(29.7) == ", 帧率是30fps。"


def test_keyframe_mask_layout():
    # keep frames 0 and 8 of 9 (white = keep); the model's channels (1 - concat_mask) are the official keyframe mask
    mask = torch.zeros(9, 16, 16)
    mask[0] = 1
    mask[8] = 1
    concat = keyframe_mask(mask, 9, 2, 2)
    assert concat.shape == (1, 4, 3, 2, 2)
    model_side = 1 - concat[0, :, :, 0, 0]  # [4 channels, 3 latent frames]
    assert model_side.T.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]]
    short = keyframe_mask(mask[:5], 9, 2, 2)  # missing frames: generated
    assert (1 - short[0, :, 2, 0, 0]).tolist() == [0, 0, 0, 0]


# -- the template -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """The tiny Wan text encoder, tokenizer, VAE and CLIP vision tower (tests/dit/tiny_wan.py) and two tiny
    Wan-Dancer files (global and local) under the template's names, with a tiny LoRA as the lightx2v one."""
    from tests.dit.test_wan_vace import write_original_lora
    from tests.dit.tiny_qwen import copy_as
    from tests.dit.tiny_wan import CLIP_VISION_WIDTH, build_wan
    from tests.dit.tiny_wan_dancer import write_dancer

    root = tmp_path_factory.mktemp("wan_dancer_models")
    tiny = build_wan(root)
    models = root / "models"
    write_dancer(models, 71, "wan2.2_dancer_14b_global_fp8_scaled.safetensors", image_dim=CLIP_VISION_WIDTH)
    net = write_dancer(models, 73, "wan2.2_dancer_14b_local_fp8_scaled.safetensors", image_dim=CLIP_VISION_WIDTH)
    copy_as(root, {"text_encoders/tiny_umt5_xxl.safetensors": "text_encoders/umt5_xxl_fp16.safetensors",
                   "vae/tiny_wan_2.1_vae.safetensors": "vae/Wan2_1_VAE_bf16.safetensors",
                   "clip_vision/tiny_clip_vision/model.safetensors": "clip_vision/clip_vision_h.safetensors"})
    (models / "loras").mkdir(exist_ok=True)
    write_original_lora(net, models / "loras" / "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors")
    return tiny


engine = engine_fixture()


def _frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_wan_dancer_template_runs(engine, tiny_env, monkeypatch):
    """ComfyUI's official Wan-Dancer template (the installed comfyui_workflow_templates_json package, MIT) on the tiny
    files under its names, at 32 × 64 and 2 steps a stage, the duration choice "10" (two local segments): 10 s of
    music make the global stage run at 15 fps (global patching, head and rope), its 149 frames (decoded latent frame
    by latent frame: 38) are padded into the two 149-frame local segments (30 fps: WanDancerPadKeyframesList's lists
    run the local stage twice), and both videos are saved."""
    from PIL import Image

    from tests.dit.template_runs import package_template_api
    from tests.dit.test_wan_s2v import write_mp3

    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    write_mp3(engine.paths.input_dir / "wan_dancer_reference_audio.mp3", 10.0)
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (96, 64, 3), dtype=np.uint8)).save(
        engine.paths.input_dir / "blue_dancer.png")
    api = package_template_api(TEMPLATE, engine.registry)
    for n in api.values():
        inputs = n["inputs"]
        if n["class_type"] == "PrimitiveInt" and inputs.get("value") in (720, 1280):  # width, height
            inputs["value"] = 32 if inputs["value"] == 720 else 64
        if n["class_type"] == "PrimitiveInt" and inputs.get("value") == 6:  # the global stage's steps
            inputs["value"] = 2
        if n["class_type"] == "BasicScheduler" and inputs.get("steps") == 6:  # the local stage's
            inputs["steps"] = 2
        if n["class_type"] == "CustomCombo" and inputs.get("choice") == "5":  # the duration: 10 s, two segments
            inputs.update(choice="10", index=1)
    from nodegraph_nodes.dit.wan_dancer_model import WanDancerTransformer

    rates = []  # the frame rate of each transformer call (the forward itself runs unchanged)
    forward = WanDancerTransformer.forward

    def spy(self, *args, **kwargs):
        rates.append(kwargs["fps"])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(WanDancerTransformer, "forward", spy)
    result = engine.run(api).raise_for_status()
    assert rates == [15.0] * 2 + [30.0] * 4  # 2 global steps (cfg 1), 2 local ones a segment
    executed = [api[n]["class_type"] for n in result.executed]
    assert executed.count("WanDancerVideo") == 2 and executed.count("WanDancerEncodeAudio") == 2  # nodes, not items
    assert {"WanDancerPadKeyframesList", "SamplerCustomAdvanced", "SamplerCustom", "LoraLoaderModelOnly",
            "SkipLayerGuidanceDiTSimple", "SaveVideo"} <= set(executed)
    saved = sorted(engine.paths.output_dir.rglob("*.mp4"))
    assert len(saved) == 2
    assert sorted(_frames(p) for p in saved) == [38, 2 * 149]


def test_one_sampler_step_is_the_transformer_on_the_conditions(engine, tiny_env):
    """CLIPVisionEncode (start frame, reference) + WanDancerEncodeAudio (2 s for 9 frames: 4.2857 fps, the global
    path) + WanDancerVideo (a start image) → KSampler (one euler step, cfg 1): the result is ``noise - velocity`` of
    the tiny transformer called on the nodes' conditions (text states, the start image's and the reference's CLIP
    states in that order, the music features, the frame rate, the first latent frame kept), so the runner passes
    them all as the official code orders them."""
    from PIL import Image

    from nodegraph.builder import Graph
    from nodegraph_nodes.dit.qwen_image import WAN21
    from tests.dit.test_wan_s2v import write_mp3
    from tests.dit.tiny_wan import CLIP_VISION_WIDTH
    from tests.dit.tiny_wan_dancer import dancer_transformer
    from tests.helpers.noise import engine_noise

    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    write_mp3(engine.paths.input_dir / "music.mp3", 2.0)
    for name, seed in (("start.png", 6), ("ref.png", 7)):
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(
            engine.paths.input_dir / name)
    g = Graph()
    clip = g.node("CLIPLoader", clip_name="umt5_xxl_fp16.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="Wan2_1_VAE_bf16.safetensors").out(0)
    vision = g.node("CLIPVisionLoader", clip_name="clip_vision_h.safetensors").out(0)
    start = g.node("LoadImage", image="start.png").out(0)
    start_cv = g.node("CLIPVisionEncode", clip_vision=vision, image=start, crop="none").out(0)
    ref_cv = g.node("CLIPVisionEncode", clip_vision=vision, image=g.node("LoadImage", image="ref.png").out(0),
                    crop="none").out(0)
    music = g.node("WanDancerEncodeAudio", "music", audio=g.node("LoadAudio", audio="music.mp3").out(0),
                   video_frames=9, audio_inject_scale=0.8)
    pos, neg = g.node("CLIPTextEncode", text="a dancer", clip=clip), g.node("CLIPTextEncode", text="", clip=clip)
    video = g.node("WanDancerVideo", "video", positive=pos, negative=neg, vae=vae, width=32, height=64, length=9,
                   clip_vision_output=start_cv, clip_vision_output_ref=ref_cv, start_image=start,
                   audio_encoder_output=music.out(0))
    model = g.node("UNETLoader", unet_name="wan2.2_dancer_14b_global_fp8_scaled.safetensors",
                   weight_dtype="default").out(0)
    g.node("PreviewAny", source=g.node("KSampler", "step", model=model, seed=5, steps=1, cfg=1.0,
                                       sampler_name="euler", scheduler="simple", positive=video.out(0),
                                       negative=video.out(1), latent_image=video.out(2), denoise=1.0))
    result = engine.run(g.to_api()).raise_for_status()
    text, extras = result.value("video", 0)[0]
    assert result.value("music", 1) == "帧率是4.2857" and extras["fps"] == 4.2857
    noise, _ = engine_noise((1, 16, 3, 8, 4), 5)
    keep = torch.zeros(1, 4, 3, 8, 4)
    keep[:, :, 0] = 1.0  # the start frame's latent frame is kept
    x = torch.cat([noise, keep, WAN21.process_in(extras["concat_latent_image"])], dim=1)
    net = dancer_transformer(71, CLIP_VISION_WIDTH)
    with torch.no_grad():
        velocity = net(x, torch.tensor([1000.0]), text, extras["clip_vision_output"].penultimate_hidden_states,
                       extras["clip_vision_output_ref"].penultimate_hidden_states, extras["audio_embed"],
                       fps=4.2857, music_scale=0.8)
        swapped = net(x, torch.tensor([1000.0]), text, extras["clip_vision_output_ref"].penultimate_hidden_states,
                      extras["clip_vision_output"].penultimate_hidden_states, extras["audio_embed"],
                      fps=4.2857, music_scale=0.8)
    got = result.value("step")["samples"]
    assert (got - WAN21.process_out(noise - velocity)).abs().max() < 1e-4
    assert (got - WAN21.process_out(noise - swapped)).abs().max() > 1e-3
