"""ACE-Step 1.5 through ComfyUI's nodes (UNETLoader with ACE-Step's split DiT file, DualCLIPLoader type ace,
VAELoader with the Oobleck, TextEncodeAceStepAudio1.5, EmptyAceStep1.5LatentAudio, ModelSamplingAuraFlow,
KSampler euler / simple at cfg 1 as the turbo templates, VAEDecodeAudio) equals diffusers' AceStepPipeline on the
same tiny weights, seed, steps and shift.

The pipeline formats its prompt its own way (the text2music instruction, other line breaks); the reference takes
ComfyUI's strings (``_format_prompt`` replaced), so what is compared is everything after the text: the Qwen3
encoding, the condition encoder, the silence context and timbre reference, the schedule and the DiT.
"""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.template_runs import comfy_audio_scale, run_template, saved_audio, template_api
from tests.dit.tiny_ace_step import build_ace_step
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

TAGS = "a warm soul track with drums and piano"
LYRICS = "[verse]\nnight city rain\nlove in my city"
SEED, STEPS, SHIFT = 5, 4, 3.0
SECONDS = 3.0  # 75 latent frames; with audio codes 15 codes of 5 frames
LATENT = (1, 64, 75)
CAPTION = ("# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n# Caption\n" + TAGS +
           "\n\n# Metas\n- bpm: 120\n- timesignature: 4\n- keyscale: E minor\n- duration: 3 seconds\n"
           "<|endoftext|>\n<|endoftext|>")
LYRICS_PROMPT = "# Languages\nen\n\n# Lyric\n" + LYRICS + "<|endoftext|><|endoftext|>"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_ace_step(tmp_path_factory.mktemp("ace_step_models"))


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def graph(tags: str = TAGS, generate_audio_codes: bool = False, duration: float = SECONDS,
          unet: str = "tiny_acestep_v1.5.safetensors") -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
    model = g.node("ModelSamplingAuraFlow", model=model, shift=SHIFT).out(0)
    clip = g.node("DualCLIPLoader", clip_name1="tiny_qwen_ace15_embed.safetensors",
                  clip_name2="tiny_qwen_ace15_lm.safetensors", type="ace").out(0)
    vae = g.node("VAELoader", vae_name="tiny_ace_1.5_vae.safetensors").out(0)
    pos = g.node("TextEncodeAceStepAudio1.5", clip=clip, tags=tags, lyrics=LYRICS, seed=0, bpm=120, duration=duration,
                 timesignature="4", language="en", keyscale="E minor", generate_audio_codes=generate_audio_codes,
                 cfg_scale=2.0, temperature=0.85, top_p=0.9, top_k=0, min_p=0.0).out(0)
    neg = g.node("ConditioningZeroOut", conditioning=pos).out(0)
    lat = g.node("EmptyAceStep1.5LatentAudio", seconds=SECONDS, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecodeAudio", "out", samples=ks, vae=vae))
    return g


def reference(tiny, codes: list[int] | None = None, caption: str = CAPTION) -> torch.Tensor:
    from diffusers import AceStepPipeline, FlowMatchEulerDiscreteScheduler

    pipe = AceStepPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                           transformer=tiny.transformer, condition_encoder=tiny.condition_encoder,
                           scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
                           audio_tokenizer=tiny.audio_tokenizer, audio_token_detokenizer=tiny.audio_detokenizer)
    pipe.set_progress_bar_config(disable=True)
    pipe._format_prompt = lambda **_: (caption, LYRICS_PROMPT)
    assert pipe.latents_per_second == 2.5  # the 30-second timbre reference is 75 frames, the sampled length
    noise, _ = engine_noise(LATENT, SEED)
    with torch.no_grad():
        latents = pipe(TAGS, lyrics=LYRICS, audio_duration=30.0, num_inference_steps=STEPS, guidance_scale=1.0,
                       shift=SHIFT, latents=noise.transpose(1, 2), output_type="latent",
                       audio_codes="".join(f"<|audio_code_{c}|>" for c in codes) if codes else None).audios
        audio = tiny.vae.decode(latents.transpose(1, 2)).sample
    return comfy_audio_scale(audio)


def test_empty_latent_length():
    from nodegraph_nodes.dit.ace_step_nodes import EmptyAceStep15LatentAudio

    assert EmptyAceStep15LatentAudio.execute(None, seconds=120.0, batch_size=2)[0]["samples"].shape == (2, 64, 3000)
    assert EmptyAceStep15LatentAudio.execute(None, seconds=SECONDS)[0]["samples"].shape == LATENT


def test_empty_ace_step_1_0_latent_shape():
    """ACE-Step 1.0's latent: 8 channels × 16 rows × ⌊seconds · 44100 / 512 / 8⌋ frames, zeros."""
    from nodegraph_nodes.dit.ace_step_nodes import EmptyAceStepLatentAudio

    out = EmptyAceStepLatentAudio.execute(None, seconds=120.0, batch_size=2)[0]
    assert out["samples"].shape == (2, 8, 16, 1291) and out["type"] == "audio"
    assert not out["samples"].any()
    assert EmptyAceStepLatentAudio.execute(None, seconds=1.0)[0]["samples"].shape == (1, 8, 16, 10)


#: node types of the package's ACE-Step templates nodegraph does not have: none (ACE-Step 1.0's
#: TextEncodeAceStepAudio: tests/dit/test_ace_step1.py; the split_llm template's API node GeminiNodeV2:
#: tests/test_gemini_node.py)
MISSING_NODE_TYPES: set[str] = set()


def test_ace_step_templates_validate_with_file_errors_only():
    from tests.helpers.package_templates import check_templates, package_templates

    paths = package_templates(lambda name: "ace_step" in name)
    assert len(paths) >= 10
    check = check_templates(paths, default_registry(packs=False))
    check.assert_missing(MISSING_NODE_TYPES)
    assert len(check.clean) >= 10, check.clean
    assert "audio_ace_step_1_5_split_llm.json" in check.clean


def test_ace_step_matches_pipeline(engine, tiny):
    audio = engine.run(graph()).raise_for_status().value("out")
    ref = reference(tiny)
    assert audio["sample_rate"] == 48000
    wave = audio["waveform"]
    assert wave.shape == ref.shape == (1, 2, LATENT[2] * 4)
    assert torch.allclose(wave, ref, atol=1e-4), (wave - ref).abs().max()
    assert wave.std() > 1e-3
    other = engine.run(graph(tags="a warm soul track with bass")).raise_for_status().value("out")["waveform"]
    assert not torch.allclose(wave, other, atol=1e-4)


def encoded(engine, seed: int = 0, top_p: float = 0.9, temperature: float = 0.85, duration: float = SECONDS) -> list:
    g = Graph()
    clip = g.node("DualCLIPLoader", clip_name1="tiny_qwen_ace15_embed.safetensors",
                  clip_name2="tiny_qwen_ace15_lm.safetensors", type="ace").out(0)
    g.node("PreviewAny", source=g.node("TextEncodeAceStepAudio1.5", "cond", clip=clip, tags=TAGS, lyrics=LYRICS,
                                        seed=seed, bpm=120, duration=duration, timesignature="4", language="en",
                                        keyscale="E minor", generate_audio_codes=True, cfg_scale=2.0,
                                        temperature=temperature, top_p=top_p, top_k=0, min_p=0.0))
    return engine.run(g).raise_for_status().value("cond")


def test_lm_audio_codes_reach_the_dit_as_the_pipeline_takes_them(engine, tiny):
    """The 5 Hz LM's codes (seeded, ceil(duration) · 5 of them) condition the DiT through the file's quantizer and
    detokenizer as AceStepPipeline's ``audio_codes`` do."""
    codes = encoded(engine)[0][1]["audio_codes"][0]
    assert len(codes) == 15 and all(0 <= c < 16 for c in codes)
    wide = [encoded(engine, seed, top_p=1.0, temperature=1.5)[0][1]["audio_codes"][0] for seed in (1, 2)]
    assert wide[0] != wide[1]  # the seed drives the draws
    wave = engine.run(graph(generate_audio_codes=True)).raise_for_status().value("out")["waveform"]
    ref = reference(tiny, codes)
    assert torch.allclose(wave, ref, atol=1e-4), (wave - ref).abs().max()
    assert not torch.allclose(wave, reference(tiny), atol=1e-3)  # the codes change the result


def test_lm_sampling_filters():
    from nodegraph_nodes.dit.ace_step_lm import _filter, metas_yaml

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    floor = torch.finfo(logits.dtype).min
    assert (_filter(logits, 2, 1.0, 0.0) == torch.tensor([[3.0, 2.0, floor, floor]])).all()
    kept = _filter(logits, 0, 0.7, 0.0)  # softmax 0.64, 0.24, …: the nucleus keeps the first two
    assert (kept[0, :2] == logits[0, :2]).all() and (kept[0, 2:] == floor).all()
    assert (_filter(logits, 0, 1.0, 0.5)[0, 1:] == floor).all()  # 0.24 < 0.5 · 0.64
    assert metas_yaml(190, 119.2, "E minor", "4") == "bpm: 190\nduration: 120\nkeyscale: E minor\ntimesignature: 4"


def test_comfy_ace_step_split_template_runs(engine, tiny):
    """ComfyUI's official ``audio_ace_step_1_5_split`` template (copied, MIT) on the tiny files saved under its file
    names, the 5 Hz LM generating the audio codes as the template asks; only the length (3 s instead of 120, in the
    latent and the text encoder) and the steps (3 instead of 8) are made smaller. It saves an mp3 (V0)."""
    from tests.dit.tiny_qwen import copy_as

    copy_as(tiny.root, {"diffusion_models/tiny_acestep_v1.5.safetensors":
                        "diffusion_models/acestep_v1.5_turbo.safetensors",
                        "text_encoders/tiny_qwen_ace15_embed.safetensors": "text_encoders/qwen_0.6b_ace15.safetensors",
                        "text_encoders/tiny_qwen_ace15_lm.safetensors": "text_encoders/qwen_1.7b_ace15.safetensors",
                        "vae/tiny_ace_1.5_vae.safetensors": "vae/ace_1.5_vae.safetensors"})
    api = template_api("audio_ace_step_1_5_split", engine.registry)
    kinds = {n["class_type"] for n in api.values()}
    assert {"UNETLoader", "DualCLIPLoader", "VAELoader", "TextEncodeAceStepAudio1.5", "EmptyAceStep1.5LatentAudio",
            "ModelSamplingAuraFlow", "VAEDecodeAudio", "SaveAudioAdvanced"} <= kinds
    assert all(n["inputs"]["generate_audio_codes"] is True for n in api.values()
               if n["class_type"] == "TextEncodeAceStepAudio1.5")
    run_template(engine, api, {"EmptyAceStep1.5LatentAudio": {"seconds": SECONDS},
                               "TextEncodeAceStepAudio1.5": {"duration": SECONDS}, "KSampler": {"steps": 3}})
    rate, channels, samples = saved_audio(engine.paths.output_dir, "mp3")
    assert rate == 48000 and channels == 2
    assert abs(samples - LATENT[2] * 4) <= 2304  # mp3 frames pad the start and end


def test_ace_vae_encodes_resampled_audio(engine, tiny):
    """VAEEncodeAudio with ACE-Step's 48 kHz VAE resamples a 44.1 kHz file first; the latent is the VAE's mean of the
    resampled waveform."""
    from nodegraph_nodes.media.codec import _resample, encode_audio

    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    tone = (0.5 * torch.sin(torch.arange(4410.0) / 5)).repeat(2, 1)
    (engine.paths.input_dir / "tone.wav").write_bytes(encode_audio(tone, 44100, "wav", None, None))
    g = Graph()
    vae = g.node("VAELoader", vae_name="tiny_ace_1.5_vae.safetensors").out(0)
    audio = g.node("LoadAudio", "audio", audio="tone.wav")
    g.node("PreviewAny", source=audio)
    g.node("PreviewAny", source=g.node("VAEEncodeAudio", "lat", audio=audio, vae=vae))
    result = engine.run(g).raise_for_status()
    lat, wave = result.value("lat")["samples"], result.value("audio")["waveform"]
    resampled = _resample(wave[0], 44100, 48000)[None]
    assert abs(resampled.shape[-1] - 4800) <= 32
    with torch.no_grad():
        ref = tiny.vae.encode(resampled).latent_dist.mean
    assert lat.shape == ref.shape == (1, 64, resampled.shape[-1] // 4)
    assert torch.allclose(lat, ref, atol=1e-5)


def test_short_audio_codes_are_padded_with_the_code_of_silence(engine, tiny):
    """A text-encoder duration shorter than the latent gives too few codes (2 s: 10 codes, 50 frames for 75): they
    are padded with ComfyUI's code of silence (35847), which the pipeline is handed explicitly."""
    codes = encoded(engine, duration=2.0)[0][1]["audio_codes"][0]
    assert len(codes) == 10
    wave = engine.run(graph(generate_audio_codes=True, duration=2.0)).raise_for_status().value("out")["waveform"]
    ref = reference(tiny, codes + [35847] * 5, caption=CAPTION.replace("duration: 3 seconds", "duration: 2 seconds"))
    assert torch.allclose(wave, ref, atol=1e-4), (wave - ref).abs().max()


def test_silence_latent_from_the_vae_when_the_file_has_none(engine, tiny):
    """ComfyUI's split DiT files hold no silence latent: without one beside the file, the ACE-Step VAE in
    models/vae encodes silence (its first 4 frames, then a middle frame repeated, as ComfyUI's constant is built)."""
    from safetensors.torch import load_file, save_file

    folder = tiny.root / "models" / "diffusion_models"
    sd = load_file(str(folder / "tiny_acestep_v1.5.safetensors"))
    del sd["silence_latent"]
    save_file(sd, str(folder / "tiny_acestep_no_silence.safetensors"))
    wave = engine.run(graph(unet="tiny_acestep_no_silence.safetensors")).raise_for_status().value("out")["waveform"]

    with torch.no_grad():
        encoded = tiny.vae.encode(torch.zeros(1, 2, 32 * 4)).latent_dist.mean[0].T
    silence = encoded[16].expand(15000, -1).clone()
    silence[:4] = encoded[:4]
    kept = tiny.condition_encoder.silence_latent
    tiny.condition_encoder.silence_latent = silence[None]
    try:
        ref = reference(tiny)
    finally:
        tiny.condition_encoder.silence_latent = kept
    assert torch.allclose(wave, ref, atol=1e-4), (wave - ref).abs().max()
    assert not torch.allclose(wave, reference(tiny), atol=1e-3)


def test_all_in_one_checkpoint_equals_the_split_files(engine, tiny):
    """CheckpointLoaderSimple with the all-in-one file (DiT, both Qwen3 models, the VAE in stable-audio-tools'
    names) gives what the split files give."""
    split = engine.run(graph(generate_audio_codes=True)).raise_for_status().value("out")["waveform"]
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_ace_step_1.5_aio.safetensors")
    model = g.node("ModelSamplingAuraFlow", model=ck.out(0), shift=SHIFT).out(0)
    pos = g.node("TextEncodeAceStepAudio1.5", clip=ck.out(1), tags=TAGS, lyrics=LYRICS, seed=0, bpm=120,
                 duration=SECONDS, timesignature="4", language="en", keyscale="E minor", generate_audio_codes=True,
                 cfg_scale=2.0, temperature=0.85, top_p=0.9, top_k=0, min_p=0.0).out(0)
    neg = g.node("ConditioningZeroOut", conditioning=pos).out(0)
    lat = g.node("EmptyAceStep1.5LatentAudio", seconds=SECONDS, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecodeAudio", "out", samples=ks, vae=ck.out(2)))
    audio = engine.run(g).raise_for_status().value("out")
    assert audio["sample_rate"] == 48000
    assert torch.allclose(audio["waveform"], split, atol=1e-5), (audio["waveform"] - split).abs().max()


def test_comfy_ace_step_checkpoint_template_runs(engine, tiny):
    """ComfyUI's official ``audio_ace_step_1_5_checkpoint`` template (copied, MIT) on the tiny all-in-one file saved
    under its file name; the length (3 s) and the steps (3) made smaller. It saves a flac."""
    from tests.dit.tiny_qwen import copy_as

    copy_as(tiny.root, {"checkpoints/tiny_ace_step_1.5_aio.safetensors":
                        "checkpoints/ace_step_1.5_turbo_aio.safetensors"})
    api = template_api("audio_ace_step_1_5_checkpoint", engine.registry)
    assert {"CheckpointLoaderSimple", "TextEncodeAceStepAudio1.5", "EmptyAceStep1.5LatentAudio",
            "VAEDecodeAudio", "SaveAudioAdvanced"} <= {n["class_type"] for n in api.values()}
    run_template(engine, api, {"EmptyAceStep1.5LatentAudio": {"seconds": SECONDS},
                               "TextEncodeAceStepAudio1.5": {"duration": SECONDS}, "KSampler": {"steps": 3}})
    rate, _, samples = saved_audio(engine.paths.output_dir, "flac")
    assert rate == 48000 and samples == LATENT[2] * 4


def test_encoders_attend_over_all_tokens_as_comfyui(engine, tiny):
    """ComfyUI's lyric and timbre encoders have no attention window (diffusers' use 128 tokens on alternate layers):
    with lyrics longer than the window the engine equals the pipeline whose encoders attend over all tokens."""
    global LYRICS, LYRICS_PROMPT
    long_lyrics = "\n".join(["night city rain love in my city"] * 30)  # 210 words
    kept = LYRICS, LYRICS_PROMPT
    LYRICS, LYRICS_PROMPT = long_lyrics, "# Languages\nen\n\n# Lyric\n" + long_lyrics + "<|endoftext|><|endoftext|>"
    encoders = (tiny.condition_encoder.lyric_encoder, tiny.condition_encoder.timbre_encoder)
    windowed = [list(e._layer_types) for e in encoders]
    try:
        wave = engine.run(graph()).raise_for_status().value("out")["waveform"]
        with_window = reference(tiny)
        for e in encoders:
            e._layer_types = ["full_attention"] * len(e.layers)
        full = reference(tiny)
    finally:
        LYRICS, LYRICS_PROMPT = kept
        for e, types in zip(encoders, windowed):
            e._layer_types = types
    same, windowed_gap = (wave - full).abs().max(), (wave - with_window).abs().max()
    assert same < 1e-6 and windowed_gap > 20 * same + 1e-5, (same, windowed_gap)  # the tiny lyrics' effect is small


def test_xl_dit_wider_than_its_condition_encoder(engine, tiny):
    """ACE-Step 1.5 XL's DiT is wider than its condition encoder (condition_embedder projects up): read from the
    shapes, it equals the pipeline too."""
    wave = engine.run(graph(unet="tiny_acestep_v1.5_xl.safetensors")).raise_for_status().value("out")["waveform"]
    base, tiny.transformer = tiny.transformer, tiny.xl_transformer
    try:
        ref = reference(tiny)
    finally:
        tiny.transformer = base
    assert torch.allclose(wave, ref, atol=1e-4), (wave - ref).abs().max()
