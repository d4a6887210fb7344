"""LTX-2 (video + audio) through ComfyUI's nodes equals diffusers' LTX2Pipeline on the same tiny weights, noise,
sigmas and guidance: the all-in-one checkpoint (CheckpointLoaderSimple → MODEL + video VAE, LTXVAudioVAELoader,
LTXAVTextEncoderLoader with a Gemma 3 file), EmptyLTXVLatentVideo + LTXVEmptyLatentAudio → LTXVConcatAVLatent →
SamplerCustomAdvanced (LTXVScheduler, CFGGuider) → LTXVSeparateAVLatent → VAEDecode / LTXVAudioVAEDecode."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.tiny_ltx2 import CHECKPOINT, GEMMA_FILE, build_ltx2
from tests.helpers.engines import make_engine

PROMPT = "a red fox running in snow"
SEED, STEPS, CFG, RATE = 13, 3, 3.0, 25
LORA_STRENGTH = 0.8
WIDTH, HEIGHT, LENGTH = 64, 64, 9  # video latent [1, 128, 2, 2, 2]; audio latent [1, 4, 9, 4]


@pytest.fixture(scope="module")
def tiny_ltx2(tmp_path_factory):
    return build_ltx2(tmp_path_factory.mktemp("ltx2_models"))


@pytest.fixture
def ltx2_engine(tiny_ltx2, tmp_path):
    eng = make_engine(tiny_ltx2.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def loaders_and_conditioning(g: Graph, prompt: str = PROMPT) -> tuple:
    """The tiny checkpoint (CheckpointLoaderSimple), its audio VAE, LTXVConditioning of ``prompt`` and an empty
    negative (Gemma + the checkpoint's connectors) and the empty video latent: ``(checkpoint node, audio VAE,
    conditioning node, video latent node)``."""
    ck = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    clip = g.node("LTXAVTextEncoderLoader", text_encoder=GEMMA_FILE, ckpt_name=CHECKPOINT, device="default").out(0)
    audio_vae = g.node("LTXVAudioVAELoader", ckpt_name=CHECKPOINT).out(0)
    pos = g.node("CLIPTextEncode", text=prompt, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    cond = g.node("LTXVConditioning", positive=pos, negative=neg, frame_rate=float(RATE))
    video = g.node("EmptyLTXVLatentVideo", width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1)
    return ck, audio_vae, cond, video


def t2v_graph(prompt: str = PROMPT, cfg: float = CFG, lora: str | None = None, unet: str | None = None,
              audio_cfg: float | None = None) -> Graph:
    g = Graph()
    ck, audio_vae, cond, video = loaders_and_conditioning(g, prompt)
    model = ck.out(0)
    if unet:
        model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
    if lora:
        model = g.node("LoraLoaderModelOnly", model=model, lora_name=lora, strength_model=LORA_STRENGTH).out(0)
    audio = g.node("LTXVEmptyLatentAudio", frames_number=LENGTH, frame_rate=RATE, batch_size=1, audio_vae=audio_vae)
    av = g.node("LTXVConcatAVLatent", video_latent=video, audio_latent=audio)
    sigmas = g.node("LTXVScheduler", "sigmas", steps=STEPS, max_shift=2.05, base_shift=0.95, stretch=True,
                    terminal=0.1, latent=av)
    if audio_cfg is None:
        guider = g.node("CFGGuider", model=model, positive=cond.out(0), negative=cond.out(1), cfg=cfg)
    else:
        guider = g.node("LTXVDualCFGGuider", model=model, positive=cond.out(0), negative=cond.out(1), video_cfg=cfg,
                        audio_cfg=audio_cfg)
    sampled = g.node("SamplerCustomAdvanced", noise=g.node("RandomNoise", noise_seed=SEED), guider=guider,
                     sampler=g.node("KSamplerSelect", sampler_name="euler"), sigmas=sigmas, latent_image=av)
    sep = g.node("LTXVSeparateAVLatent", "sep", av_latent=sampled.out(0))
    g.node("PreviewAny", source=sep.out(0))
    frames = g.node("VAEDecode", "frames", samples=sep.out(0), vae=ck.out(2))
    wave = g.node("LTXVAudioVAEDecode", "audio", samples=sep.out(1), audio_vae=audio_vae)
    g.node("PreviewAny", source=frames)
    g.node("PreviewAny", source=wave)
    g.node("PreviewAny", source=sigmas)
    return g


def comfy_noise() -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's starting noise of the nested latent: one CPU generator, the video's draw then the audio's."""
    generator = torch.Generator("cpu").manual_seed(SEED)
    video = torch.randn((1, 128, (LENGTH - 1) // 8 + 1, HEIGHT // 32, WIDTH // 32), generator=generator)
    return video, torch.randn((1, 4, 9, 4), generator=generator)


def reference(tiny, sigmas: torch.Tensor, cfg: float = CFG, audio_cfg: float | None = None,
              output_type: str = "pt"):
    """LTX2Pipeline on ComfyUI's starting noise for the seed (put in the pipeline's un-normalized spaces)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from nodegraph_nodes.dit import ltx2_latent as L

    v_noise, a_noise = comfy_noise()
    vae, avae = tiny.vae, tiny.audio_vae
    latents = v_noise * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
    packed = L.audio_tokens(a_noise) * avae.latents_std + avae.latents_mean
    audio_latents = packed.unflatten(2, (4, 4)).transpose(1, 2)
    pipe = tiny.pipeline(FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    with torch.no_grad():
        out = pipe(prompt=PROMPT, negative_prompt="", height=HEIGHT, width=WIDTH, num_frames=LENGTH,
                   frame_rate=float(RATE), num_inference_steps=STEPS, sigmas=sigmas[:-1].tolist(),
                   guidance_scale=cfg, stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0,
                   audio_modality_scale=1.0, guidance_rescale=0.0, audio_guidance_rescale=0.0,
                   audio_guidance_scale=cfg if audio_cfg is None else audio_cfg, latents=latents,
                   audio_latents=audio_latents, max_sequence_length=1024, output_type=output_type)
    return out.frames, out.audio


def test_ltx2_text_to_audio_video_matches_pipeline(ltx2_engine, tiny_ltx2):
    from nodegraph_nodes.dit import ltx2_latent as L

    result = ltx2_engine.run(t2v_graph()).raise_for_status()
    frames, audio, sigmas = result.value("frames"), result.value("audio"), result.value("sigmas")
    ref_video, ref_audio = reference(tiny_ltx2, sigmas)
    ref_frames = ref_video[0].permute(0, 2, 3, 1).float()
    assert frames.shape == ref_frames.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(frames, ref_frames, atol=1e-4), (frames - ref_frames).abs().max()
    wave = audio["waveform"]
    assert audio["sample_rate"] == tiny_ltx2.vocoder.config.output_sampling_rate
    assert wave.shape == ref_audio.shape and wave.shape[1] == 2 and float(wave.std()) > 1e-3
    assert torch.allclose(wave, ref_audio.float(), atol=1e-4), (wave - ref_audio).abs().max()
    # the latents themselves (un-normalized as the pipeline returns them)
    ref_v, ref_a = reference(tiny_ltx2, sigmas, output_type="latent")
    vae, avae = tiny_ltx2.vae, tiny_ltx2.audio_vae
    video = result.value("sep", 0)["samples"] * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
    assert torch.allclose(video, ref_v, atol=1e-4), (video - ref_v).abs().max()
    audio_lat = L.audio_tokens(result.value("sep", 1)["samples"]) * avae.latents_std + avae.latents_mean
    assert torch.allclose(audio_lat.unflatten(2, (4, 4)).transpose(1, 2), ref_a, atol=1e-4)
    other = ltx2_engine.run(t2v_graph(prompt="a blue cat on the beach")).raise_for_status()
    assert not torch.allclose(other.value("frames"), frames, atol=1e-3)


def test_ltx2_image_to_video_matches_pipeline(ltx2_engine, tiny_ltx2):
    """LTXVImgToVideoInplace (strength 1) on the empty video latent: the first latent frame is the image's and
    stays clean (time 0 for its tokens, ComfyUI's inpainting of LTXV latents); equals LTX2ImageToVideoPipeline
    given the same latents (its first frame the image latent) to 1e-4."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2ImageToVideoPipeline
    from PIL import Image

    from nodegraph_nodes.dit import ltx2_latent as L

    ltx2_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB").save(
        ltx2_engine.paths.input_dir / "start.png")
    g = Graph()
    ck, audio_vae, cond, video = loaders_and_conditioning(g)
    image = g.node("LoadImage", image="start.png").out(0)
    video = g.node("LTXVImgToVideoInplace", "i2v", vae=ck.out(2), image=image, latent=video, strength=1.0,
                   bypass=False)
    g.node("PreviewAny", source=video)
    audio = g.node("LTXVEmptyLatentAudio", frames_number=LENGTH, frame_rate=RATE, batch_size=1, audio_vae=audio_vae)
    av = g.node("LTXVConcatAVLatent", video_latent=video, audio_latent=audio)
    sigmas = g.node("LTXVScheduler", "sigmas", steps=STEPS, max_shift=2.05, base_shift=0.95, stretch=True,
                    terminal=0.1, latent=av)
    guider = g.node("CFGGuider", model=ck.out(0), positive=cond.out(0), negative=cond.out(1), cfg=CFG)
    sampled = g.node("SamplerCustomAdvanced", noise=g.node("RandomNoise", noise_seed=SEED), guider=guider,
                     sampler=g.node("KSamplerSelect", sampler_name="euler"), sigmas=sigmas, latent_image=av)
    sep = g.node("LTXVSeparateAVLatent", av_latent=sampled.out(0))
    frames = g.node("VAEDecode", "frames", samples=sep.out(0), vae=ck.out(2))
    wave = g.node("LTXVAudioVAEDecode", "audio", samples=sep.out(1), audio_vae=audio_vae)
    g.node("PreviewAny", source=frames)
    g.node("PreviewAny", source=wave)
    g.node("PreviewAny", source=sigmas)
    result = ltx2_engine.run(g).raise_for_status()
    start = result.value("i2v")
    assert float(start["noise_mask"][0, 0, 0].max()) == 0.0 and float(start["noise_mask"][0, 0, 1].min()) == 1.0

    v_noise, a_noise = comfy_noise()
    v_noise[:, :, :1] = start["samples"][:, :, :1]
    vae, avae = tiny_ltx2.vae, tiny_ltx2.audio_vae
    latents = v_noise * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
    audio_latents = (L.audio_tokens(a_noise) * avae.latents_std + avae.latents_mean).unflatten(2, (4, 4)).transpose(1, 2)
    t = tiny_ltx2
    pipe = LTX2ImageToVideoPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
                                    vae=t.vae, audio_vae=t.audio_vae, text_encoder=t.text_encoder, tokenizer=t.tokenizer,
                                    connectors=t.connectors, transformer=t.transformer, vocoder=t.vocoder)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(image=None, prompt=PROMPT, negative_prompt="", height=HEIGHT, width=WIDTH, num_frames=LENGTH,
                   frame_rate=float(RATE), num_inference_steps=STEPS, sigmas=result.value("sigmas")[:-1].tolist(),
                   guidance_scale=CFG, stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0,
                   audio_modality_scale=1.0, guidance_rescale=0.0, audio_guidance_rescale=0.0,
                   audio_guidance_scale=CFG, latents=latents, audio_latents=audio_latents, max_sequence_length=1024,
                   output_type="pt")
    ref_frames = out.frames[0].permute(0, 2, 3, 1).float()
    got = result.value("frames")
    assert torch.allclose(got, ref_frames, atol=1e-4), (got - ref_frames).abs().max()
    assert torch.allclose(result.value("audio")["waveform"], out.audio.float(), atol=1e-4)


LORA_LAYERS = {  # LTX's original names → diffusers' module names in the transformer
    "transformer_blocks.0.attn1.to_q": "transformer_blocks.0.attn1.to_q",
    "transformer_blocks.1.audio_ff.net.0.proj": "transformer_blocks.1.audio_ff.net.0.proj",
    "patchify_proj": "proj_in",
    "audio_patchify_proj": "audio_proj_in",
}


def test_ltx2_lora_in_ltx_names_matches_merged_weights(ltx2_engine, tiny_ltx2):
    """LoraLoaderModelOnly with a LoRA in LTX's names (``diffusion_model.…``, renamed layers included) equals the
    pipeline on a transformer with ``strength · alpha / rank · B @ A`` merged into the same weights."""
    import copy
    import dataclasses

    from safetensors.torch import save_file

    net = tiny_ltx2.transformer
    modules = dict(net.named_modules())
    g = torch.Generator().manual_seed(21)
    sd, merged = {}, copy.deepcopy(net)
    merged_modules = dict(merged.named_modules())
    rank, alpha = 4, 2.0
    for original, name in LORA_LAYERS.items():
        w = modules[name].weight
        down = torch.randn(rank, w.shape[1], generator=g) * 0.05
        up = torch.randn(w.shape[0], rank, generator=g) * 0.05
        sd[f"diffusion_model.{original}.lora_A.weight"] = down
        sd[f"diffusion_model.{original}.lora_B.weight"] = up
        sd[f"diffusion_model.{original}.alpha"] = torch.tensor(alpha)
        with torch.no_grad():
            merged_modules[name].weight += LORA_STRENGTH * alpha / rank * (up @ down)
    (tiny_ltx2.root / "models" / "loras").mkdir(exist_ok=True)
    save_file(sd, str(tiny_ltx2.root / "models" / "loras" / "tiny_ltx2_lora.safetensors"))
    result = ltx2_engine.run(t2v_graph(lora="tiny_ltx2_lora.safetensors")).raise_for_status()
    frames, sigmas = result.value("frames"), result.value("sigmas")
    ref_video, ref_audio = reference(dataclasses.replace(tiny_ltx2, transformer=merged), sigmas)
    ref_frames = ref_video[0].permute(0, 2, 3, 1).float()
    assert torch.allclose(frames, ref_frames, atol=1e-4), (frames - ref_frames).abs().max()
    assert torch.allclose(result.value("audio")["waveform"], ref_audio.float(), atol=1e-4)
    plain = ltx2_engine.run(t2v_graph()).raise_for_status().value("frames")
    assert not torch.allclose(plain, frames, atol=1e-3)


def test_ltx2_audio_vae_encode(ltx2_engine, tiny_ltx2):
    """LTXVAudioVAEEncode: the AUDIO resampled to the VAE's 16 kHz, LTX-2's log-mel front end, the audio VAE
    encoder's mean normalized with its statistics (equal to the diffusers encoder on the same mel to 1e-5);
    the latent length is the decoder's (latents per second of the video), and it decodes back to a waveform."""
    import wave

    import numpy as np

    from nodegraph_nodes.dit.ltx2 import log_mel

    rate = 8000
    t = np.arange(rate) / rate
    pcm = (np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], 1) * 12000).astype(np.int16)
    ltx2_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    with wave.open(str(ltx2_engine.paths.input_dir / "tone.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    g = Graph()
    audio_vae = g.node("LTXVAudioVAELoader", ckpt_name=CHECKPOINT).out(0)
    audio = g.node("LoadAudio", "in", audio="tone.wav")
    lat = g.node("LTXVAudioVAEEncode", "lat", audio=audio, audio_vae=audio_vae)
    g.node("PreviewAny", source=lat)
    back = g.node("LTXVAudioVAEDecode", "back", samples=lat, audio_vae=audio_vae)
    g.node("PreviewAny", source=back)
    g.node("PreviewAny", source=audio)
    result = ltx2_engine.run(g).raise_for_status()
    latent = result.value("lat")["samples"]
    assert latent.shape[:2] == (1, 4) and latent.shape[3] == 4
    assert latent.shape[2] == 25 + 1  # one second: 16000 / 160 = 100 mel frames (+1 centred) → ⌈101 / 4⌉
    loaded = result.value("in")
    from nodegraph_nodes.media.codec import _resample

    wave16 = torch.stack([_resample(w.float(), loaded["sample_rate"], 16000) for w in loaded["waveform"]])
    mel = log_mel(wave16, 16000, 16, 160)
    avae = tiny_ltx2.audio_vae
    with torch.no_grad():
        z = avae.encode(mel).latent_dist.mode()
    packed = (z.transpose(1, 2).flatten(2, 3) - avae.latents_mean) / avae.latents_std
    assert torch.allclose(latent, packed.unflatten(2, (4, 4)).transpose(1, 2), atol=1e-5)
    assert result.value("back")["waveform"].shape[0] == 1


def test_ltx2_transformer_only_file_through_unet_loader(ltx2_engine, tiny_ltx2):
    """UNETLoader on a transformer-only split of the checkpoint (LTX's names under ``model.diffusion_model.``,
    connectors included as in Kijai's / ComfyUI's splits) gives the same video as CheckpointLoaderSimple's MODEL."""
    from safetensors.torch import load_file, save_file

    from tests.dit.tiny_ltx2 import CHECKPOINT as NAME

    models = tiny_ltx2.root / "models"
    sd = load_file(str(models / "checkpoints" / NAME))
    (models / "diffusion_models").mkdir(exist_ok=True)
    save_file({k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")},
              str(models / "diffusion_models" / "tiny_ltx-2-19b-dev_transformer_only.safetensors"))
    split = ltx2_engine.run(t2v_graph(unet="tiny_ltx-2-19b-dev_transformer_only.safetensors")).raise_for_status()
    whole = ltx2_engine.run(t2v_graph()).raise_for_status()
    assert torch.allclose(split.value("frames"), whole.value("frames"), atol=1e-6)


def test_ltx2_dual_cfg_guider_matches_pipeline_audio_guidance(ltx2_engine, tiny_ltx2):
    """LTXVDualCFGGuider (video_cfg 3, audio_cfg 5) equals LTX2Pipeline with guidance_scale 3 and
    audio_guidance_scale 5 to 1e-4."""
    result = ltx2_engine.run(t2v_graph(audio_cfg=5.0)).raise_for_status()
    ref_video, ref_audio = reference(tiny_ltx2, result.value("sigmas"), audio_cfg=5.0)
    frames = result.value("frames")
    ref_frames = ref_video[0].permute(0, 2, 3, 1).float()
    assert torch.allclose(frames, ref_frames, atol=1e-4), (frames - ref_frames).abs().max()
    assert torch.allclose(result.value("audio")["waveform"], ref_audio.float(), atol=1e-4)


def test_ltx2_add_guide_matches_condition_pipeline(ltx2_engine, tiny_ltx2, monkeypatch):
    """LTXVAddGuide (an image at pixel frame 1, strength 1: appended as keyframe tokens at time 0 with their own
    positions) → sampling → LTXVCropGuides equals LTX2ConditionPipeline with the same image as a keyframe condition
    at latent index 1 (CRF 0), given ComfyUI's noise for the seed, to 1e-4."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx2 import pipeline_ltx2_condition as cond_module
    from PIL import Image

    from nodegraph_nodes.dit import ltx2_latent as L

    pixels = np.random.default_rng(12).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    ltx2_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(ltx2_engine.paths.input_dir / "guide.png")
    g = Graph()
    ck, audio_vae, cond, video = loaders_and_conditioning(g)
    guide = g.node("LTXVAddGuide", positive=cond.out(0), negative=cond.out(1), vae=ck.out(2), latent=video,
                   image=g.node("LoadImage", image="guide.png").out(0), frame_idx=1, strength=1.0)
    audio = g.node("LTXVEmptyLatentAudio", frames_number=LENGTH, frame_rate=RATE, batch_size=1, audio_vae=audio_vae)
    av = g.node("LTXVConcatAVLatent", video_latent=guide.out(2), audio_latent=audio)
    sigmas = g.node("LTXVScheduler", "sigmas", steps=STEPS, max_shift=2.05, base_shift=0.95, stretch=True,
                    terminal=0.1)
    guider = g.node("CFGGuider", model=ck.out(0), positive=guide.out(0), negative=guide.out(1), cfg=CFG)
    sampled = g.node("SamplerCustomAdvanced", noise=g.node("RandomNoise", noise_seed=SEED), guider=guider,
                     sampler=g.node("KSamplerSelect", sampler_name="euler"), sigmas=sigmas, latent_image=av)
    sep = g.node("LTXVSeparateAVLatent", av_latent=sampled.out(0))
    crop = g.node("LTXVCropGuides", "crop", positive=guide.out(0), negative=guide.out(1), latent=sep.out(0))
    frames = g.node("VAEDecode", "frames", samples=crop.out(2), vae=ck.out(2))
    g.node("PreviewAny", source=crop.out(2))
    wave = g.node("LTXVAudioVAEDecode", "audio", samples=sep.out(1), audio_vae=audio_vae)
    for node in (frames, wave, sigmas):
        g.node("PreviewAny", source=node)
    result = ltx2_engine.run(g).raise_for_status()

    generator = torch.Generator("cpu").manual_seed(SEED)  # ComfyUI's nested noise: video (with the guide frame)
    v_noise = torch.randn((1, 128, 3, HEIGHT // 32, WIDTH // 32), generator=generator)
    a_noise = torch.randn((1, 4, 9, 4), generator=generator)
    queue = [L.video_tokens(v_noise), L.audio_tokens(a_noise)]

    def noise_in_order(shape, **_):
        out = queue.pop(0)
        assert tuple(out.shape) == tuple(shape), (out.shape, shape)
        return out.clone()

    monkeypatch.setattr(cond_module, "randn_tensor", noise_in_order)
    t = tiny_ltx2
    pipe = cond_module.LTX2ConditionPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False), vae=t.vae,
        audio_vae=t.audio_vae, text_encoder=t.text_encoder, tokenizer=t.tokenizer, connectors=t.connectors,
        transformer=t.transformer, vocoder=t.vocoder)
    pipe.set_progress_bar_config(disable=True)
    condition = cond_module.LTX2VideoCondition(frames=Image.fromarray(pixels, "RGB"), index=1, strength=1.0, crf=0)
    with torch.no_grad():
        out = pipe(conditions=[condition], prompt=PROMPT, negative_prompt="", height=HEIGHT, width=WIDTH,
                   num_frames=LENGTH, frame_rate=float(RATE), num_inference_steps=STEPS,
                   sigmas=result.value("sigmas")[:-1].tolist(), guidance_scale=CFG, stg_scale=0.0,
                   audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0, guidance_rescale=0.0,
                   audio_guidance_rescale=0.0, audio_guidance_scale=CFG, max_sequence_length=1024, output_type="pt")
    assert not queue
    queue.extend([L.video_tokens(v_noise), L.audio_tokens(a_noise)])
    with torch.no_grad():  # the video latent itself (the frames are a damped view of it through the tiny VAE)
        latent = pipe(conditions=[condition], prompt=PROMPT, negative_prompt="", height=HEIGHT, width=WIDTH,
                      num_frames=LENGTH, frame_rate=float(RATE), num_inference_steps=STEPS,
                      sigmas=result.value("sigmas")[:-1].tolist(), guidance_scale=CFG, stg_scale=0.0,
                      audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0, guidance_rescale=0.0,
                      audio_guidance_rescale=0.0, audio_guidance_scale=CFG, max_sequence_length=1024,
                      output_type="latent").frames
    vae = tiny_ltx2.vae
    mine = result.value("crop", 2)["samples"] * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
    assert mine.shape == latent.shape == (1, 128, 2, HEIGHT // 32, WIDTH // 32)
    assert torch.allclose(mine, latent, atol=1e-4), (mine - latent).abs().max()
    ref_frames = out.frames[0].permute(0, 2, 3, 1).float()
    got = result.value("frames")
    assert got.shape == ref_frames.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(got, ref_frames, atol=1e-4), (got - ref_frames).abs().max()
    assert torch.allclose(result.value("audio")["waveform"], out.audio.float(), atol=1e-4)


def test_ltx2_refuses_a_video_only_latent_and_wrong_vaes(ltx2_engine):
    """An LTX-2 model sampling EmptyLTXVLatentVideo alone and LTXVEmptyLatentAudio given the video VAE fail with
    errors naming the fix."""
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    clip = g.node("LTXAVTextEncoderLoader", text_encoder=GEMMA_FILE, ckpt_name=CHECKPOINT, device="default").out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    video = g.node("EmptyLTXVLatentVideo", width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1)
    ks = g.node("KSampler", model=ck.out(0), seed=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=pos, latent_image=video, denoise=1.0)
    g.node("PreviewAny", source=ks)
    failed = ltx2_engine.run(g)
    assert failed.status == "error" and "LTXVConcatAVLatent" in str(failed.failure)
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    audio = g.node("LTXVEmptyLatentAudio", frames_number=LENGTH, frame_rate=RATE, batch_size=1, audio_vae=ck.out(2))
    g.node("PreviewAny", source=audio)
    failed = ltx2_engine.run(g)
    assert failed.status == "error" and "LTXVAudioVAELoader" in str(failed.failure)
