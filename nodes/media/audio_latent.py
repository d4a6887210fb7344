"""ComfyUI's audio-latent nodes: ``EmptyLatentAudio`` (Stable Audio's 64-channel latent), ``ConditioningStableAudio``
(the seconds a Stable Audio conditioning carries), ``VAEDecodeAudio`` and ``VAEEncodeAudio``.

The VAE nodes dispatch on the VAE kind: an audio VAE (:class:`nodegraph_nodes.dit.audio_vae.AudioVae`: Stable
Audio's and ACE-Step 1.5's Oobleck) decodes ``[B, 64, T]`` latents to an AUDIO at its own sample rate;
an image VAE is refused with a clear error. Decoding divides loud waveforms by ``5 · std`` as ComfyUI does;
encoding resamples the AUDIO to the VAE's rate (FFmpeg's resampler; ComfyUI uses torchaudio's, so resampled
inputs differ slightly) and takes the latent distribution's mean (ComfyUI draws a sample with an unseeded
generator).
"""

from __future__ import annotations

import torch

from nodegraph.node import FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, LATENT, VAE

from .audio import AUDIO, check_audio, make_audio


def _audio_vae(vae, node: str):
    from nodegraph_nodes.dit.ace_step1_vae import AceStep1Vae
    from nodegraph_nodes.dit.audio_vae import AudioVae

    if not isinstance(vae, (AudioVae, AceStep1Vae)):
        raise TypeError(f"{node}.vae: an audio VAE is needed (Stable Audio's or ACE-Step 1.0's checkpoint "
                        f"VAE, ACE-Step 1.5's ace_1.5_vae); this is "
                        f"{getattr(vae, 'family', type(vae).__name__)}'s image VAE")
    return vae


class EmptyLatentAudio(Node):
    """An empty Stable Audio latent ``[B, 64, T]``: ``T = 2 · round(seconds · 44100 / 2048 / 2)``."""

    category = "latent/audio"
    seconds = Input(FLOAT, default=47.6, min=1.0, max=1000.0, step=0.1)
    batch_size = Input(INT, default=1, min=1, max=4096, tooltip="The number of latent images in the batch.")
    outputs = (Output(LATENT),)

    def execute(self, seconds: float, batch_size: int = 1) -> tuple:
        length = round((seconds * 44100 / 2048) / 2) * 2
        return ({"samples": torch.zeros([batch_size, 64, length]), "type": "audio"},)


class ConditioningStableAudio(Node):
    """Sets ``seconds_start`` and ``seconds_total`` on both conditionings (Stable Audio's timing inputs)."""

    category = "conditioning"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    seconds_start = Input(FLOAT, default=0.0, min=0.0, max=1000.0, step=0.1)
    seconds_total = Input(FLOAT, default=47.0, min=0.0, max=1000.0, step=0.1)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"))

    def execute(self, positive, negative, seconds_start: float, seconds_total: float) -> tuple:
        values = {"seconds_start": seconds_start, "seconds_total": seconds_total}
        return ([[c, {**extras, **values}] for c, extras in positive],
                [[c, {**extras, **values}] for c, extras in negative])


class VAEEncodeAudio(Node):
    """Encodes an AUDIO into an audio latent with an audio VAE (resampled to the VAE's rate first)."""

    category = "latent/audio"
    audio = Input(AUDIO)
    vae = Input(VAE)
    outputs = (Output(LATENT),)

    def execute(self, audio, vae) -> tuple:
        vae = _audio_vae(vae, "VAEEncodeAudio")
        waveform, rate = check_audio(audio, "VAEEncodeAudio")
        if rate != vae.sample_rate:
            from .codec import _resample

            waveform = torch.stack([_resample(w.float(), rate, vae.sample_rate) for w in waveform])
        return ({"samples": vae.encode_audio(self.ctx, waveform.float()), "type": "audio"},)


class VAEDecodeAudio(Node):
    """Decodes an audio latent into an AUDIO at the VAE's sample rate."""

    category = "latent/audio"
    samples = Input(LATENT)
    vae = Input(VAE)
    outputs = (Output(AUDIO),)

    def execute(self, samples: dict, vae) -> tuple:
        vae = _audio_vae(vae, "VAEDecodeAudio")
        return (make_audio(vae.decode_audio(self.ctx, samples["samples"]), vae.sample_rate),)
