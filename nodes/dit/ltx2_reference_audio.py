"""LTX-2 ID-LoRA reference audio (LTXVReferenceAudio, ComfyUI's ``nodes_lt.py``): how a reference clip reaches
the transformer and how identity guidance amplifies it.

* The clip's audio latent (LTXVAudioVAEEncode's) rides in both conditionings under ``ref_audio`` as tokens
  ``[B, T, C·M]`` (channel-major, the packing of the audio stream).
* The LTX-2 runner puts them in front of the audio tokens: time 0 (clean), RoPE time bounds those of the
  reference's own latent frames moved before the target's start so that its last frame ends one latent frame
  (``hop · 4 / rate`` seconds) before 0; the network's output for them is dropped.
* Identity guidance (a post-CFG patch): where ``scale > 0`` and the step's sigma lies in the
  ``[start_percent, end_percent]`` range, the positive is evaluated once more without the reference and the
  result moves by ``scale · (cond − cond_without_reference)``. The evaluation without it is asked for with the
  run option :data:`NO_REFERENCE`, which :class:`WithoutReferenceProxy` (the patch's runner proxy) honours by
  leaving ``ref_audio`` out of the parts.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import torch

from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun, RunnerProxy

#: the conditioning key (ComfyUI's)
REF_AUDIO = "ref_audio"
#: the run option of the evaluation without the reference
NO_REFERENCE = "ltx_without_reference_audio"


def reference_tokens(latent: torch.Tensor) -> torch.Tensor:
    """An audio latent ``[B, C, T, M]`` → the reference tokens ``[B, T, C·M]``."""
    b, c, t, m = latent.shape
    return latent.permute(0, 2, 1, 3).reshape(b, t, c * m)


def reference_coords(audio_rope, batch: int, length: int, device) -> torch.Tensor:
    """RoPE time bounds ``[batch, 1, length, 2]`` (seconds) of ``length`` reference tokens: those of latent
    frames ``0 … length-1`` shifted so that the last one ends one latent frame before the target's start."""
    coords = audio_rope.prepare_audio_coords(batch, length, device)
    per_latent = audio_rope.hop_length * audio_rope.scale_factors[0] / audio_rope.sampling_rate
    return coords - (coords[0, 0, -1, 1] + per_latent)


@dataclass(frozen=True)
class AudioStream:
    """The audio stream of one network call: tokens, per-token times and RoPE bounds, and how many reference
    tokens lead it (their outputs are dropped)."""

    tokens: torch.Tensor
    times: torch.Tensor
    coords: torch.Tensor | None
    reference: int = 0

    def target(self, out: torch.Tensor) -> torch.Tensor:
        """The network's audio output without the reference tokens."""
        return out[:, self.reference:]


def audio_stream(net, audio: torch.Tensor, times: torch.Tensor, ref_audio, device) -> AudioStream:
    """The audio stream for ``audio`` tokens ``[n, T, F]`` at per-token ``times`` ``[n, T]``, with the
    conditioning's ``ref_audio`` (``{"tokens": [B, R, F]}``, or None) in front."""
    if ref_audio is None:
        return AudioStream(audio, times, None)
    tokens = ref_audio["tokens"] if isinstance(ref_audio, dict) else ref_audio
    n = audio.shape[0]
    ref = tokens.to(device, audio.dtype)
    if ref.shape[0] != n:
        ref = ref[:1].expand(n, -1, -1) if ref.shape[0] == 1 else ref.repeat_interleave(n // ref.shape[0], 0)
    if ref.shape[2] != audio.shape[2]:
        raise ValueError(f"LTXVReferenceAudio: the reference audio has {ref.shape[2]} features per latent frame, "
                         f"the sampled audio latent {audio.shape[2]}: encode it with this model's audio VAE")
    length = ref.shape[1]
    target = net.audio_rope.prepare_audio_coords(n, audio.shape[1], device)
    coords = torch.cat([reference_coords(net.audio_rope, n, length, device).to(target), target], dim=2)
    return AudioStream(torch.cat([ref, audio], dim=1), torch.cat([times.new_zeros((n, length)), times], dim=1),
                       coords, length)


class WithoutReferenceProxy(RunnerProxy):
    """Leaves ``ref_audio`` out of every part while the run option :data:`NO_REFERENCE` is set."""

    def __init__(self, inner, run: PatchRun):
        super().__init__(inner)
        self.run = run

    def __call__(self, x_in, timestep, parts):
        if self.run.options.get(NO_REFERENCE):
            parts = [replace(p, extras={k: v for k, v in p.extras.items() if k != REF_AUDIO}) for p in parts]
        return self.inner(x_in, timestep, parts)


@dataclass(eq=False)
class ReferenceAudioPatch(ModelPatch):
    """The model patch that lets identity guidance evaluate without the reference."""

    key = "ltx_reference_audio"

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        run.runner = WithoutReferenceProxy(run.runner, run)
        yield


@dataclass(frozen=True)
class IdentityGuidance:
    """The post-CFG function: ``denoised + scale · (cond − cond without the reference)`` for sigmas in
    ``[sigma_end, sigma_start]``."""

    scale: float
    sigma_start: float
    sigma_end: float

    def __call__(self, args: dict) -> torch.Tensor:
        result = args["denoised"]
        if self.scale == 0 or args.get("cond_name") is None:
            return result
        sigma = float(args["sigma"].reshape(-1)[0])
        if sigma > self.sigma_start or sigma < self.sigma_end:
            return result
        (without,) = args["calc"]([args["cond_name"]], args["input"], args["sigma"], {NO_REFERENCE: True})
        return result + (args["cond_denoised"] - without) * self.scale
