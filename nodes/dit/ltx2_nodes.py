"""ComfyUI's LTX-2 nodes (names, inputs, outputs and maths as ComfyUI's ``nodes_lt.py`` / ``nodes_lt_audio.py``):
loaders (LTXAVTextEncoderLoader, LTXVAudioVAELoader), latents (EmptyLTXVLatentVideo, LTXVEmptyLatentAudio,
LTXVConcatAVLatent, LTXVSeparateAVLatent), audio (LTXVAudioVAEDecode), conditioning (LTXVConditioning) and
LTXVScheduler, LTXVAudioVAEEncode, LTXVDualCFGGuider (video and audio CFG scales), LTXVReferenceAudio (ID-LoRA
reference audio and identity guidance: :mod:`.ltx2_reference_audio`). Image conditioning nodes: :mod:`.ltx2_guides`. Models: :mod:`.ltx2`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import CLIP, CONDITIONING, LATENT, MODEL, VAE

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.diffusion.files import checkpoint_choices, list_model_files, resolve_model
from nodegraph_nodes.media.audio import AUDIO
from nodegraph_nodes.sampling import guiders
from nodegraph_nodes.sampling.model import Prediction
from nodegraph_nodes.sampling.types import GUIDER, SIGMAS

MAX_RESOLUTION = 16384


def _identity(paths: Paths, kind: str, name: str | None) -> Any:
    from nodegraph_nodes.diffusion.loaders import _fingerprint

    return _fingerprint(paths, kind, name)


class LTXAVTextEncoderLoader(Node):
    """LTX-2's text encoder: Gemma 3 (``text_encoder``, models/text_encoders) with the text connectors of the
    LTX-2 checkpoint (``ckpt_name``, models/checkpoints)."""

    category = "advanced/loaders"
    text_encoder = Input(COMBO, choices=lambda paths: list_model_files(paths, "text_encoders"))
    ckpt_name = Input(COMBO, choices=checkpoint_choices)
    device = Input(COMBO, choices=["default", "cpu"], default="default")
    outputs = (Output(CLIP),)

    @classmethod
    def fingerprint(cls, paths: Paths, text_encoder: str | None = None, ckpt_name: str | None = None,
                    **_: Any) -> Any:
        return (_identity(paths, "text_encoders", text_encoder), _identity(paths, "checkpoints", ckpt_name))

    def execute(self, text_encoder: str, ckpt_name: str, device: str = "default") -> tuple:
        from nodegraph_nodes.dit.ltx2 import load_text_encoder

        paths = self.ctx.paths
        te = resolve_model(paths, "text_encoders", text_encoder)
        ckpt = resolve_model(paths, "checkpoints", ckpt_name)
        target = "cpu" if device == "cpu" else self.ctx.device
        return (load_text_encoder(te, ckpt, self.ctx.service("models"), target, Path(paths.models_dir)),)


class LTXVAudioVAELoader(Node):
    """LTX-2's audio VAE and vocoder from the LTX-2 checkpoint (models/checkpoints)."""

    category = "audio"
    display_name = "LTXV Audio VAE Loader"
    ckpt_name = Input(COMBO, choices=checkpoint_choices)
    outputs = (Output(VAE, "Audio VAE"),)

    @classmethod
    def fingerprint(cls, paths: Paths, ckpt_name: str | None = None, **_: Any) -> Any:
        return _identity(paths, "checkpoints", ckpt_name)

    def execute(self, ckpt_name: str) -> tuple:
        from nodegraph_nodes.dit.ltx2 import load_audio_vae

        path = resolve_model(self.ctx.paths, "checkpoints", ckpt_name)
        return (load_audio_vae(path, self.ctx.service("models"), self.ctx.device),)


def _audio_vae(vae, where: str):
    from nodegraph_nodes.dit.ltx2 import AudioVae

    if not isinstance(vae, AudioVae):
        raise ValueError(f"{where}.audio_vae: LTX-2's audio VAE is needed (LTXVAudioVAELoader); this is "
                         f"{type(vae).__name__}")
    return vae


class LTXVConditioning(Node):
    """Sets the frame rate on both conditionings (the model's time positions use it)."""

    category = "conditioning/video_models"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    frame_rate = Input(FLOAT, default=25.0, min=0.0, max=1000.0, step=0.01)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def execute(self, positive, negative, frame_rate: float) -> tuple:
        values = {"frame_rate": float(frame_rate)}
        return set_values(positive, values), set_values(negative, values)


class EmptyLTXVLatentVideo(Node):
    """An empty LTX video latent: 128 channels, ``1 + (length - 1) // 8`` frames at 1/32 of the size."""

    category = "latent/video/ltxv"
    width = Input(INT, default=768, min=64, max=MAX_RESOLUTION, step=32)
    height = Input(INT, default=512, min=64, max=MAX_RESOLUTION, step=32)
    length = Input(INT, default=97, min=1, max=MAX_RESOLUTION, step=8)
    batch_size = Input(INT, default=1, min=1, max=4096)
    outputs = (Output(LATENT),)

    def execute(self, width: int, height: int, length: int, batch_size: int = 1) -> tuple:
        return ({"samples": torch.zeros([batch_size, 128, (length - 1) // 8 + 1, height // 32, width // 32])},)


class LTXVEmptyLatentAudio(Node):
    """An empty LTX-2 audio latent for ``frames_number`` video frames at ``frame_rate``: the audio VAE's latent
    channels × ``ceil(frames / rate × latents per second)`` frames (ComfyUI's count; diffusers rounds) × its
    latent mel bins."""

    category = "latent/audio"
    display_name = "LTXV Empty Latent Audio"
    frames_number = Input(INT, default=97, min=1, max=1000, step=1)
    frame_rate = Input(INT, default=25, min=1, max=1000, step=1)
    batch_size = Input(INT, default=1, min=1, max=4096)
    audio_vae = Input(VAE)
    outputs = (Output(LATENT, "Latent"),)

    def execute(self, frames_number: int, frame_rate: int, batch_size: int, audio_vae) -> tuple:
        vae = _audio_vae(audio_vae, "LTXVEmptyLatentAudio")
        frames = math.ceil((float(frames_number) / frame_rate) * vae.latents_per_second)
        latent = torch.zeros([batch_size, vae.latent_channels, frames, vae.latent_bins])
        return ({"samples": latent, "sample_rate": vae.sample_rate, "type": "audio"},)


class LTXVConcatAVLatent(Node):
    """The video and audio latents as one LATENT for sampling (see :mod:`.ltx2_latent` for the packing); their
    noise masks are carried per token."""

    category = "latent/video/ltxv"
    video_latent = Input(LATENT)
    audio_latent = Input(LATENT)
    outputs = (Output(LATENT, "latent"),)

    def execute(self, video_latent: dict, audio_latent: dict) -> tuple:
        from nodegraph_nodes.dit import ltx2_latent as L

        packed, lay = L.pack(video_latent["samples"], audio_latent["samples"])
        out = {"samples": packed, L.KEY: lay, "noise_layout": lay}
        vm, am = video_latent.get("noise_mask"), audio_latent.get("noise_mask")
        if vm is not None or am is not None:
            out["noise_mask"] = L.pack_mask(vm, am, lay, packed.shape[0])
        return (out,)


class LTXVSeparateAVLatent(Node):
    """The video and audio latents of an audio-video LATENT (LTXVConcatAVLatent's, after sampling)."""

    category = "latent/video/ltxv"
    av_latent = Input(LATENT)
    outputs = (Output(LATENT, "video_latent"), Output(LATENT, "audio_latent"))

    def execute(self, av_latent: dict) -> tuple:
        from nodegraph_nodes.dit import ltx2_latent as L

        lay = L.layout_of(av_latent)
        if lay is None:
            raise ValueError("LTXVSeparateAVLatent.av_latent: not an audio-video latent (make it with "
                             "LTXVConcatAVLatent)")
        video, audio = L.unpack(av_latent["samples"], lay)
        v, a = {"samples": video}, {"samples": audio}
        if av_latent.get("noise_mask") is not None:
            v["noise_mask"], a["noise_mask"] = L.unpack_mask(av_latent["noise_mask"], lay)
        return v, a


class LTXVAudioVAEDecode(Node):
    """Audio latents → waveform (audio VAE → mel spectrogram → vocoder) at the vocoder's sample rate."""

    category = "audio"
    display_name = "LTXV Audio VAE Decode"
    samples = Input(LATENT)
    audio_vae = Input(VAE)
    outputs = (Output(AUDIO, "Audio"),)

    def execute(self, samples: dict, audio_vae) -> tuple:
        vae = _audio_vae(audio_vae, "LTXVAudioVAEDecode")
        latent = samples["samples"]
        if latent.ndim != 4:
            raise ValueError(f"LTXVAudioVAEDecode.samples: an audio latent [B, C, frames, bins] is needed; this one "
                             f"is {list(latent.shape)} (separate audio-video latents with LTXVSeparateAVLatent)")
        manager = self.ctx.service("models")
        with manager.use(vae.handle, self.ctx.device) as module, torch.inference_mode():
            dtype = next(module.parameters()).dtype
            wave = module.decode(latent.to(self.ctx.device, dtype)).float().cpu()
        return ({"waveform": wave, "sample_rate": vae.sample_rate},)


class LTXVAudioVAEEncode(Node):
    """AUDIO → LTX-2 audio latent: resampled to the audio VAE's rate (FFmpeg's resampler; ComfyUI uses
    torchaudio's), log-mel spectrogram (LTX-2's front end), audio VAE encoder (the distribution's mean, normalized
    with the VAE's statistics). Mono is duplicated to the VAE's two channels."""

    category = "audio"
    display_name = "LTXV Audio VAE Encode"
    audio = Input(AUDIO)
    audio_vae = Input(VAE)
    outputs = (Output(LATENT, "Audio Latent"),)

    def execute(self, audio: dict, audio_vae) -> tuple:
        vae = _audio_vae(audio_vae, "LTXVAudioVAEEncode")
        latent = encode_audio(self.ctx, vae, audio, "LTXVAudioVAEEncode")
        return ({"samples": latent, "sample_rate": vae.sample_rate, "type": "audio"},)


def encode_audio(ctx, vae, audio: dict, where: str) -> torch.Tensor:
    """AUDIO → the normalized LTX-2 audio latent ``[B, C, T, M]`` (LTXVAudioVAEEncode's maths)."""
    from nodegraph_nodes.dit.ltx2 import log_mel
    from nodegraph_nodes.media.audio import check_audio

    waveform, rate = check_audio(audio, where)
    waveform, rate = waveform.float(), int(rate)
    manager = ctx.service("models")
    with manager.use(vae.handle, ctx.device) as module, torch.inference_mode():
        cfg = module.vae.config
        if rate != int(cfg.sample_rate):
            from nodegraph_nodes.media.codec import _resample

            waveform = torch.stack([_resample(w, rate, int(cfg.sample_rate)) for w in waveform])
        channels = int(cfg.in_channels)
        if waveform.shape[1] == 1 and channels > 1:
            waveform = waveform.expand(-1, channels, -1)
        elif waveform.shape[1] != channels:
            raise ValueError(f"{where}: the audio has {waveform.shape[1]} channels; the audio VAE takes "
                             f"{channels} (or mono)")
        mel = log_mel(waveform, int(cfg.sample_rate), int(cfg.mel_bins), int(cfg.mel_hop_length))
        dtype = next(module.parameters()).dtype
        return module.encode(mel.to(ctx.device, dtype)).float().cpu()


class LTXVReferenceAudio(Node):
    """ID-LoRA speaker identity: the reference clip encoded by the audio VAE into both conditionings
    (``ref_audio``: the tokens the runner puts before the audio tokens, clean), and the MODEL patched with
    identity guidance — one more evaluation of the positive without the reference per step, the result moved
    by ``identity_guidance_scale`` times the difference (0: no extra pass), between ``start_percent`` and
    ``end_percent`` of the schedule (:mod:`.ltx2_reference_audio`)."""

    category = "conditioning/video_models"
    display_name = "LTXV Reference Audio (ID-LoRA)"
    model = Input(MODEL)
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    reference_audio = Input(AUDIO, tooltip="Reference audio clip whose speaker identity to transfer. ~5 seconds "
                                           "recommended (training duration).")
    audio_vae = Input(VAE, tooltip="LTXV Audio VAE for encoding.")
    identity_guidance_scale = Input(FLOAT, default=3.0, min=0.0, max=100.0, step=0.01, round=0.01,
                                    tooltip="Strength of identity guidance (an extra pass without the reference "
                                            "each step); 0 disables it.")
    start_percent = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.001)
    end_percent = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.001)
    outputs = (Output(MODEL, "model"), Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def execute(self, model, positive, negative, reference_audio: dict, audio_vae, identity_guidance_scale: float,
                start_percent: float = 0.0, end_percent: float = 1.0) -> tuple:
        from nodegraph_nodes.dit.ltx2 import Ltx2Model
        from nodegraph_nodes.dit.ltx2_reference_audio import (REF_AUDIO, IdentityGuidance, ReferenceAudioPatch,
                                                              reference_tokens)

        if not isinstance(model, Ltx2Model):
            raise ValueError(f"LTXVReferenceAudio.model: an LTX-2 MODEL is needed; this is "
                             f"{getattr(model, 'family', type(model).__name__)}")
        vae = _audio_vae(audio_vae, "LTXVReferenceAudio")
        tokens = reference_tokens(encode_audio(self.ctx, vae, reference_audio, "LTXVReferenceAudio.reference_audio"))
        values = {REF_AUDIO: {"tokens": tokens}}
        ms = model.model_sampling
        guidance = IdentityGuidance(float(identity_guidance_scale), float(ms.percent_to_sigma(start_percent)),
                                    float(ms.percent_to_sigma(end_percent)))
        patches = model.sampling_patches.with_model_patch(ReferenceAudioPatch()).with_post_cfg(guidance)
        return model.with_sampling_patches(patches), set_values(positive, values), set_values(negative, values)


class DualCfg(guiders.Guider):
    """Classifier-free guidance with one scale for the video tokens and another for the audio tokens of an
    LTX-2 audio-video latent (both combinations from one positive / negative evaluation)."""

    def __init__(self, model, positive: list, negative: list, video_cfg: float, audio_cfg: float):
        super().__init__(model, {"positive": positive, "negative": negative})
        self.video_cfg, self.audio_cfg = float(video_cfg), float(audio_cfg)

    def predict(self, ev, x: torch.Tensor, sigma: torch.Tensor) -> Prediction:
        lay = getattr(ev.runner, "layout", None)
        if lay is None:
            raise ValueError("LTXVDualCFGGuider: an LTX-2 model sampling an audio-video latent (LTXVConcatAVLatent) "
                             "is needed")
        skip = (math.isclose(self.video_cfg, 1.0) and math.isclose(self.audio_cfg, 1.0)
                and not (ev.force_uncond or ev.patches.disable_cfg1_optimization))
        neg = None if skip else "negative"
        cond, uncond = ev.calc(["positive", neg], x, sigma)
        if ev.patches.pre_cfg:
            cond, uncond = guiders.pre_cfg(ev, cond, uncond, self.video_cfg, x, sigma)
        video = guiders.cfg_combine(ev, cond, uncond, self.video_cfg, x, sigma, "positive", neg)
        audio = video if self.audio_cfg == self.video_cfg else guiders.cfg_combine(
            ev, cond, uncond, self.audio_cfg, x, sigma, "positive", neg)
        is_audio = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
        is_audio[lay.video_tokens:] = True
        return Prediction(torch.where(is_audio, audio, video), uncond)


class LTXVDualCFGGuider(Node):
    """CFG guidance with separate scales for the video and the audio of an LTX-2 audio-video latent."""

    category = "sampling/custom_sampling/guiders"
    model = Input(MODEL)
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    video_cfg = Input(FLOAT, default=3.0, min=0.0, max=100.0, step=0.1, round=0.01)
    audio_cfg = Input(FLOAT, default=7.0, min=0.0, max=100.0, step=0.1, round=0.01)
    outputs = (Output(GUIDER),)

    def execute(self, model, positive: list, negative: list, video_cfg: float, audio_cfg: float) -> tuple:
        from nodegraph_nodes.sampling.model import require_sampling_model

        require_sampling_model(model, "LTXVDualCFGGuider.model")
        return (DualCfg(model, positive, negative, video_cfg, audio_cfg),)


def ltxv_sigmas(steps: int, max_shift: float, base_shift: float, stretch: bool, terminal: float,
                tokens: int = 4096) -> torch.Tensor:
    """LTXVScheduler's sigmas: 1 → 0 in ``steps`` steps, shifted by a token-count dependent exponential
    shift, the non-zero ones optionally stretched to end at ``terminal``."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    slope = (max_shift - base_shift) / (4096 - 1024)
    shift = tokens * slope + (base_shift - slope * 1024)
    safe = torch.where(sigmas != 0, sigmas, torch.ones_like(sigmas))
    sigmas = torch.where(sigmas != 0, math.exp(shift) / (math.exp(shift) + (1 / safe - 1)), torch.zeros_like(sigmas))
    if stretch:
        nz = sigmas != 0
        one_minus = 1.0 - sigmas[nz]
        scale = one_minus[-1] / (1.0 - terminal)
        sigmas[nz] = 1.0 - one_minus / scale
    return sigmas


class LTXVScheduler(Node):
    """LTX's sigma schedule; ``latent`` sets the token count of the shift (without one: 4096). Audio-video
    latents count their video tokens (ComfyUI counts the nested latent's video part)."""

    category = "sampling/custom_sampling/schedulers"
    steps = Input(INT, default=20, min=1, max=10000)
    max_shift = Input(FLOAT, default=2.05, min=0.0, max=100.0, step=0.01)
    base_shift = Input(FLOAT, default=0.95, min=0.0, max=100.0, step=0.01)
    stretch = Input(BOOLEAN, default=True, tooltip="Stretch the sigmas to be in the range [terminal, 1].")
    terminal = Input(FLOAT, default=0.1, min=0.0, max=0.99, step=0.01,
                     tooltip="The terminal value of the sigmas after stretching.")
    latent = Input(LATENT, optional=True)
    outputs = (Output(SIGMAS),)

    def execute(self, steps: int, max_shift: float, base_shift: float, stretch: bool, terminal: float,
                latent: dict | None = None) -> tuple:
        from nodegraph_nodes.dit.ltx2_latent import layout_of

        tokens = 4096
        if latent is not None:
            lay = layout_of(latent)
            tokens = lay.video_tokens if lay is not None else math.prod(latent["samples"].shape[2:])
        return (ltxv_sigmas(steps, max_shift, base_shift, stretch, terminal, tokens),)
