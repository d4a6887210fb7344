"""Wan 2.2 S2V: the transformer built by UNETLoader's conversion from a tiny original-layout file equals the
official code's outputs recorded in tests/data/wan_s2v_official (first chunk, FramePack motion, the official
audio padding)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from nodegraph_nodes.dit import wan_s2v
from tests.dit.tiny_wan import official_recording
from tests.dit.tiny_wan_s2v import CONFIG, official_inputs, s2v_original_layout, s2v_transformer
from tests.helpers.engines import engine_fixture

DATA = Path(__file__).parent.parent / "data" / "wan_s2v_official" / "official_outputs.safetensors"
CASES = {"first_chunk": (None, (0, 0)), "extend": ("motion", (0, 0)), "extend_long": ("motion_long", (0, 0)),
         "official_audio_pad": ("motion", (73, 19))}


@pytest.fixture(scope="module")
def recorded():
    sd = s2v_original_layout(s2v_transformer(), "model.diffusion_model.")
    weights = {k[len("model.diffusion_model."):]: v for k, v in sd.items()}
    return official_recording(DATA, official_inputs(), weights), wan_s2v.build_transformer(weights, torch.float32), sd


def test_detection_and_config(recorded):
    _, net, sd = recorded
    assert wan_s2v.detect_prefix(list(sd)) == "model.diffusion_model."
    assert wan_s2v.detect_prefix([k for k in sd if not k.startswith("model.diffusion_model.casual")]) is None
    for key, value in CONFIG.items():
        assert getattr(net.config, key) == value, key
    assert net.injected == {0: 0, 4: 1}


def test_equals_the_official_transformer_on_a_wide_latent(recorded):
    """16 × 24 latent, 3 frames, 19 motion frames: FramePack's coarser rope positions are truncated (the
    official ``linspace(...).astype(int)``), height and width apart."""
    data, net, _ = recorded
    context = torch.cat([data["context"], torch.zeros(512 - data["context"].shape[0], data["context"].shape[1])])
    with torch.no_grad():
        out = net(data["x_wide"], data["timestep"], context[None], data["audio_wide"],
                  reference=data["reference_wide"], control=data["control_wide"], motion=data["motion_wide"])
    assert out.shape == data["extend_wide"].shape == (1, 16, 3, 16, 24)
    assert (out - data["extend_wide"]).abs().max() < 1e-4


def test_without_audio_nothing_is_injected(recorded):
    """No ``audio_embed`` (WanSoundImageToVideo without audio_encoder_output): the blocks run without the audio
    residual, as a copy whose injector outputs are zeroed gives with any audio."""
    import copy

    data, net, _ = recorded
    silent = copy.deepcopy(net)
    with torch.no_grad():
        for attn in silent.audio_injector.injector:
            attn.to_out[0].weight.zero_()
            attn.to_out[0].bias.zero_()
        context = torch.zeros(1, 512, data["context"].shape[1])
        args = dict(reference=data["reference"], control=data["control"], motion=data["motion"])
        out = net(data["x"], data["timestep"], context, None, **args)
        expected = silent(data["x"], data["timestep"], context, data["audio"], **args)
        with_audio = net(data["x"], data["timestep"], context, data["audio"], **args)
    assert (out - expected).abs().max() < 1e-5
    assert (out - with_audio).abs().max() > 1e-2


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


# -- nodes and the template -------------------------------------------------------------------------

TEMPLATE = "video_wan2_2_14B_s2v"


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """The tiny Wan text encoder, tokenizer and VAE (tests/dit/tiny_wan.py), the tiny S2V file and a tiny
    wav2vec 2.0 large file."""
    from tests.dit.tiny_wan import build_wan
    from tests.dit.tiny_wan_s2v import write_audio_encoder, write_s2v

    root = tmp_path_factory.mktemp("wan_s2v_models")
    tiny = build_wan(root)
    write_s2v(root / "models")
    write_audio_encoder(root / "models")
    return tiny


engine = engine_fixture()


def write_mp3(path: Path, seconds: float, rate: int = 24000) -> None:
    """A mono MP3 of a 440 Hz tone with noise."""
    import av
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(3).standard_normal(t.shape))
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@dataclass
class S2vGraph:
    """A graph with the tiny text encoder, VAE and audio encoder and WanSoundImageToVideo ``s2v`` on them."""

    g: Any
    pos: Any
    neg: Any
    vae: Any
    enc: Any
    s2v: Any


def s2v_graph(engine, seed: int, size: tuple[int, int]) -> S2vGraph:
    """``voice.mp3`` (2 s) and a random ``ref.png`` of ``size`` (h, w) in the engine's input folder; a graph whose
    WanSoundImageToVideo ``s2v`` (64×64, 5 frames) takes them and "a red fox" / "" on the tiny encoders."""
    import numpy as np
    from PIL import Image

    from nodegraph.builder import Graph

    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    write_mp3(engine.paths.input_dir / "voice.mp3", 2.0)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(
        engine.paths.input_dir / "ref.png")
    g = Graph()
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    enc = g.node("AudioEncoderEncode", audio_encoder=g.node("AudioEncoderLoader",
                 audio_encoder_name="tiny_wav2vec2_large.safetensors").out(0),
                 audio=g.node("LoadAudio", audio="voice.mp3").out(0)).out(0)
    pos, neg = g.node("CLIPTextEncode", text="a red fox", clip=clip), g.node("CLIPTextEncode", text="", clip=clip)
    s2v = g.node("WanSoundImageToVideo", "s2v", positive=pos, negative=neg, vae=vae, width=64, height=64, length=5,
                 batch_size=1, audio_encoder_output=enc, ref_image=g.node("LoadImage", image="ref.png").out(0))
    return S2vGraph(g, pos, neg, vae, enc, s2v)


def test_audio_buckets_take_the_nearest_30fps_frame():
    """16-fps frame i takes the 30-fps frame round(i · 30 / 16) of the states resampled from 50 fps; past the
    audio, zeros; whole chunks."""
    from nodegraph_nodes.dit.wan_s2v_nodes import audio_buckets

    states = [torch.arange(100.0).reshape(1, 100, 1).expand(1, 100, 3) * (i + 1) for i in range(2)]  # 2 s, 50 fps
    out = audio_buckets(states, 8)
    assert out.shape == (1, 2, 3, 40)  # 60 frames at 30 fps → 32 at 16 fps → 5 chunks of 8
    resampled = torch.linspace(0, 99, 60)  # align_corners linear interpolation of 0..99 to 60 frames
    for i in range(40):
        j = round(i * 30 / 16)  # half to even, as numpy's
        expected = resampled[j] if j < 60 else 0.0
        assert torch.allclose(out[0, 1, :, i], torch.full((3,), float(expected) * 2), atol=1e-4), i


def test_sound_image_to_video_conditions(engine, tiny_env):
    """WanSoundImageToVideo: the positive gets the chunk's audio, the negative zeros; the reference latent; a
    zero control latent (in the model's space), or the control video's latent in front; ``ref_motion`` padded to
    73 frames gives 19 motion latent frames; Extend continues the audio where the video latent ends and takes
    its last 19 latent frames as motion."""
    from nodegraph_nodes.dit.qwen_image import WAN21

    sg = s2v_graph(engine, 4, (48, 40))
    g, pos, neg, vae, enc, s2v = sg.g, sg.pos, sg.neg, sg.vae, sg.enc, sg.s2v
    ext = g.node("WanSoundImageToVideoExtend", "ext", positive=pos, negative=neg, vae=vae, length=5,
                 video_latent=s2v.out(2), audio_encoder_output=enc)
    image = g.node("LoadImage", image="ref.png").out(0)
    moved = g.node("WanSoundImageToVideo", "moved", positive=pos, negative=neg, vae=vae, width=64, height=64,
                   length=5, batch_size=1, ref_image=image, ref_motion=image, control_video=image)
    g.node("PreviewAny", source=s2v.out(0))
    g.node("PreviewAny", source=ext.out(0))
    g.node("PreviewAny", source=moved.out(0))
    result = engine.run(g.to_api()).raise_for_status()
    moved_pos = result.value("moved", 0)[0][1]
    assert "audio_embed" not in moved_pos
    assert moved_pos["reference_motion"].shape == (1, 16, 19, 8, 8)  # 73 frames (gray before the image) encoded
    control = moved_pos["control_video"]  # the one-frame control video's latent first, zeros (model space) after
    assert torch.allclose(control[:, :, :1], moved_pos["reference_latents"][0])
    assert torch.allclose(WAN21.process_in(control[:, :, 1:]), torch.zeros(1, 16, 1, 8, 8), atol=1e-6)
    positive, negative, latent = (result.value("s2v", i) for i in range(3))
    ext_pos, ext_latent = result.value("ext", 0), result.value("ext", 2)
    assert latent["samples"].shape == (1, 16, 2, 8, 8) and ext_latent["samples"].shape == (1, 16, 2, 8, 8)
    audio = positive[0][1]["audio_embed"]
    assert audio.shape == (1, 25, 128, 8) and audio.abs().sum() > 0
    assert negative[0][1]["audio_embed"].abs().sum() == 0
    assert len(positive[0][1]["reference_latents"]) == 1
    assert positive[0][1]["reference_latents"][0].shape == (1, 16, 1, 8, 8)
    assert torch.allclose(WAN21.process_in(positive[0][1]["control_video"]), torch.zeros(1, 16, 2, 8, 8), atol=1e-6)
    assert "reference_motion" not in positive[0][1]
    next_audio = ext_pos[0][1]["audio_embed"]
    assert next_audio.shape == (1, 25, 128, 8) and not torch.equal(next_audio, audio)
    assert torch.equal(ext_pos[0][1]["reference_motion"], latent["samples"])


def test_s2v_template_runs(engine, tiny_env):
    """ComfyUI's official S2V template (the installed comfyui_workflow_templates_json package, MIT) on the tiny
    files under its names (the lightx2v LoRA: a tiny LoRA in Wan's original names): made smaller (64×64, 5
    frames a chunk, 2 steps); the first chunk and its two Extend chunks run, the video is saved with its
    frames (3 chunks of 5, the doubled first frame removed) and the audio."""
    import numpy as np
    from PIL import Image

    from tests.dit.template_runs import package_template_api, saved_video_frames, set_inputs
    from tests.dit.test_wan_vace import write_original_lora
    from tests.dit.tiny_qwen import copy_as
    from tests.dit.tiny_wan_s2v import s2v_transformer

    copy_as(tiny_env.root, {
        "diffusion_models/tiny_wan2.2_s2v.safetensors": "diffusion_models/wan2.2_s2v_14B_fp8_scaled.safetensors",
        "text_encoders/tiny_umt5_xxl.safetensors": "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "vae/tiny_wan_2.1_vae.safetensors": "vae/wan_2.1_vae.safetensors",
        "audio_encoders/tiny_wav2vec2_large.safetensors": "audio_encoders/wav2vec2_large_english_fp16.safetensors"})
    loras = tiny_env.root / "models" / "loras"
    loras.mkdir(exist_ok=True)
    write_original_lora(s2v_transformer(), loras / "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors")
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    write_mp3(engine.paths.input_dir / f"{TEMPLATE}_input_audio.MP3", 2.0)
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (80, 72, 3), dtype=np.uint8)).save(
        engine.paths.input_dir / f"{TEMPLATE}_reference_image.jpg")
    api = package_template_api(TEMPLATE, engine.registry)
    for n in api.values():
        if n["class_type"] == "PrimitiveInt" and n["inputs"]["value"] == 77:
            n["inputs"]["value"] = 5
        if n["class_type"] == "PrimitiveInt" and n["inputs"]["value"] == 4:  # the steps
            n["inputs"]["value"] = 2
    set_inputs(api, {"WanSoundImageToVideo": {"width": 64, "height": 64}})
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert executed.count("WanSoundImageToVideoExtend") == 2 and executed.count("KSampler") == 3
    assert {"LoraLoaderModelOnly", "AudioEncoderEncode", "SaveVideo"} <= set(executed)
    # 3 chunks of 2 latent frames, the first latent frame doubled (7 → 25 frames), ImageFromBatch from index 3
    assert saved_video_frames(engine.paths.output_dir) == 1 + 3 * 2 * 4 - 3


def test_one_sampler_step_is_the_transformer_on_the_conditions(engine, tiny_env):
    """UNETLoader → WanSoundImageToVideo (and Extend) → KSampler (one euler step, cfg 1): the result is
    ``noise - velocity`` of the tiny transformer called on the nodes' conditions (text states, audio, the
    reference, control and motion latents in the model's space) at time 1000, so the runner passes them all."""
    from nodegraph_nodes.dit.qwen_image import WAN21
    from tests.helpers.noise import engine_noise

    sg = s2v_graph(engine, 6, (64, 64))
    g, pos, neg, vae, enc, s2v = sg.g, sg.pos, sg.neg, sg.vae, sg.enc, sg.s2v
    model = g.node("UNETLoader", unet_name="tiny_wan2.2_s2v.safetensors", weight_dtype="default").out(0)
    first = g.node("KSampler", "first", model=model, seed=5, steps=1, cfg=1.0, sampler_name="euler",
                   scheduler="simple", positive=s2v.out(0), negative=s2v.out(1), latent_image=s2v.out(2), denoise=1.0)
    ext = g.node("WanSoundImageToVideoExtend", "ext", positive=pos, negative=neg, vae=vae, length=5,
                 video_latent=first, audio_encoder_output=enc, ref_image=g.node("LoadImage", image="ref.png").out(0))
    second = g.node("KSampler", "second", model=model, seed=6, steps=1, cfg=1.0, sampler_name="euler",
                    scheduler="simple", positive=ext.out(0), negative=ext.out(1), latent_image=ext.out(2), denoise=1.0)
    g.node("PreviewAny", source=second)
    result = engine.run(g.to_api()).raise_for_status()
    net = s2v_transformer()
    for cond_node, sampler, seed in (("s2v", "first", 5), ("ext", "second", 6)):
        extras = result.value(cond_node, 0)[0][1]
        text = result.value(cond_node, 0)[0][0]
        noise, _ = engine_noise((1, 16, 2, 8, 8), seed)
        motion = extras.get("reference_motion")
        with torch.no_grad():
            velocity = net(noise, torch.tensor([1000.0]), text, extras["audio_embed"],
                           reference=WAN21.process_in(extras["reference_latents"][-1]),
                           control=WAN21.process_in(extras["control_video"]),
                           motion=WAN21.process_in(motion) if motion is not None else None)
        assert (motion is not None) == (cond_node == "ext")
        got = result.value(sampler)["samples"]
        assert (got - WAN21.process_out(noise - velocity)).abs().max() < 1e-4, cond_node
