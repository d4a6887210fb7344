"""Stable Audio Open through ComfyUI's nodes (CheckpointLoaderSimple with the all-in-one file, CLIPLoader type
stable_audio, EmptyLatentAudio → KSampler → VAEDecodeAudio) equals diffusers' StableAudioPipeline on the same tiny
weights, seed, steps and guidance; ComfyUI's ``audio_stable_audio_example`` template runs end to end.

The reference pipeline's scheduler: Stable Audio's own (CosineDPMSolverMultistepScheduler) is a stochastic
SDE solver driven by a Brownian tree, so the comparison uses diffusers' deterministic DPM-Solver++(2M) on the same
EDM v-prediction parameterization (exponential sigmas 0.03 … 500, sigma_data 1) with the cosine scheduler's
``atan(sigma) · 2 / pi`` network time — ComfyUI's ``dpmpp_2m`` / ``exponential`` on Stable Audio's sampling.
"""

from __future__ import annotations

import math

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.template_runs import comfy_audio_scale, run_template, saved_audio, template_api
from tests.dit.tiny_stable_audio import build_stable_audio
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT = "a red fox in snow"
SEED, STEPS, CFG = 7, 4, 4.98
SECONDS = 2.97  # latent [1, 64, 64]
LATENT = (1, 64, 64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_stable_audio(tmp_path_factory.mktemp("stable_audio_models"))


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def graph(prompt: str = PROMPT, seconds: tuple[float, float] | None = None) -> Graph:
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_stable_audio.safetensors")
    clip = g.node("CLIPLoader", clip_name="tiny_t5_base.safetensors", type="stable_audio").out(0)
    pos = g.node("CLIPTextEncode", text=prompt, clip=clip).out(0)
    neg = g.node("CLIPTextEncode", text="", clip=clip).out(0)
    if seconds is not None:
        cs = g.node("ConditioningStableAudio", positive=pos, negative=neg, seconds_start=seconds[0],
                    seconds_total=seconds[1])
        pos, neg = cs.out(0), cs.out(1)
    lat = g.node("EmptyLatentAudio", seconds=SECONDS, batch_size=1)
    ks = g.node("KSampler", model=ck.out(0), seed=SEED, steps=STEPS, cfg=CFG, sampler_name="dpmpp_2m",
                scheduler="exponential", positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecodeAudio", "out", samples=ks, vae=ck.out(2)))
    return g


def reference(tiny, prompt: str = PROMPT, seconds: tuple[float, float] | None = None) -> torch.Tensor:
    """StableAudioPipeline's latents from the engine's noise, decoded and loudness-limited as VAEDecodeAudio."""
    from diffusers import EDMDPMSolverMultistepScheduler, StableAudioPipeline

    class AtanEDMDPMSolver(EDMDPMSolverMultistepScheduler):
        def precondition_noise(self, sigma):
            sigma = sigma if isinstance(sigma, torch.Tensor) else torch.tensor([sigma])
            return sigma.atan() / math.pi * 2

    scheduler = AtanEDMDPMSolver(sigma_min=0.03, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential",
                                 prediction_type="v_prediction", algorithm_type="dpmsolver++", solver_order=2,
                                 final_sigmas_type="zero")
    tiny.transformer.register_to_config(sample_size=LATENT[2])
    tiny.vae.register_to_config(sampling_rate=64)  # the pipeline checks seconds against sample_size · hop / rate
    pipe = StableAudioPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, projection_model=tiny.projection,
                               tokenizer=tiny.tokenizer, transformer=tiny.transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise(LATENT, SEED)
    start, end = seconds if seconds is not None else (0.0, float(int(LATENT[2] / 21.53)))
    with torch.no_grad():
        latents = pipe(prompt, negative_prompt="", audio_start_in_s=start, audio_end_in_s=end,
                       num_inference_steps=STEPS, guidance_scale=CFG, latents=noise, output_type="latent").audios
        audio = tiny.vae.decode(latents).sample
    return comfy_audio_scale(audio)


def test_empty_latent_audio_length():
    from nodegraph_nodes.media.audio_latent import EmptyLatentAudio

    assert EmptyLatentAudio.execute(None, seconds=47.6, batch_size=2)[0]["samples"].shape == (2, 64, 1024)
    assert EmptyLatentAudio.execute(None, seconds=SECONDS)[0]["samples"].shape == LATENT


@pytest.mark.parametrize("seconds", [None, (1.0, 3.0)], ids=["default_seconds", "ConditioningStableAudio"])
def test_stable_audio_matches_pipeline(engine, tiny, seconds):
    audio = engine.run(graph(seconds=seconds)).raise_for_status().value("out")
    ref = reference(tiny, seconds=seconds)
    assert audio["sample_rate"] == 44100
    wave = audio["waveform"]
    assert wave.shape == ref.shape == (1, 2, LATENT[2] * 4)
    assert torch.allclose(wave, ref, atol=1e-4), (wave - ref).abs().max()
    assert wave.std() > 1e-3


def test_prompt_reaches_the_model_and_audio_vae_round_trip(engine, tiny):
    base = engine.run(graph()).raise_for_status().value("out")["waveform"]
    other = engine.run(graph(prompt="blue sky")).raise_for_status().value("out")["waveform"]
    assert not torch.allclose(base, other, atol=1e-4)

    from nodegraph_nodes.media.codec import encode_audio

    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    tone = (0.5 * torch.sin(torch.arange(512.0) / 7))[None]  # mono: doubled to stereo for the VAE
    (engine.paths.input_dir / "tone.wav").write_bytes(encode_audio(tone, 44100, "wav", None, None))
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_stable_audio.safetensors")
    audio = g.node("LoadAudio", "audio", audio="tone.wav")
    g.node("PreviewAny", source=audio)
    g.node("PreviewAny", source=g.node("VAEEncodeAudio", "lat", audio=audio, vae=ck.out(2)))
    result = engine.run(g).raise_for_status()
    lat, wave = result.value("lat")["samples"], result.value("audio")["waveform"]
    assert wave.shape == (1, 1, 512)
    with torch.no_grad():
        ref = tiny.vae.encode(wave.repeat(1, 2, 1)).latent_dist.mean
    assert lat.shape == (1, 64, 128) and torch.allclose(lat, ref, atol=1e-5)


def test_image_vae_and_image_latent_refused(engine, tiny):
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_stable_audio.safetensors")
    image = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    g.node("PreviewAny", source=g.node("VAEDecodeAudio", samples=image, vae=ck.out(2)))
    result = engine.run(g)
    assert result.failure is not None and "audio latents [B, C, T]" in result.failure.exception_message

    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_stable_audio.safetensors")
    g.node("PreviewAny", source=g.node("VAEDecode", samples=g.node("EmptyLatentAudio", seconds=1.0), vae=ck.out(2)))
    result = engine.run(g)
    assert result.failure is not None and "use VAEDecodeAudio" in result.failure.exception_message


def test_comfy_stable_audio_template_runs(engine, tiny):
    """ComfyUI's official ``audio_stable_audio_example`` template (copied, MIT) on the tiny files saved under its
    file names; only the length (2.97 s instead of 47.6) and the steps (3 instead of 50) are made smaller. Its
    sampler is dpmpp_3m_sde_gpu (stochastic), so the test checks the saved file, not values."""
    from tests.dit.tiny_qwen import copy_as

    copy_as(tiny.root, {"checkpoints/tiny_stable_audio.safetensors": "checkpoints/stable-audio-open-1.0.safetensors",
                        "text_encoders/tiny_t5_base.safetensors": "text_encoders/t5-base.safetensors"})
    api = template_api("audio_stable_audio_example", engine.registry)
    kinds = {n["class_type"] for n in api.values()}
    assert {"CheckpointLoaderSimple", "CLIPLoader", "EmptyLatentAudio", "VAEDecodeAudio", "SaveAudioAdvanced"} <= kinds
    run_template(engine, api, {"EmptyLatentAudio": {"seconds": SECONDS}, "KSampler": {"steps": 3}})
    rate, channels, samples = saved_audio(engine.paths.output_dir, "flac")
    assert rate == 44100 and channels == 2
    assert samples == LATENT[2] * 4
