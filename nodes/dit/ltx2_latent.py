"""The audio-video LATENT of LTX-2 (LTXVConcatAVLatent's output): one tensor the sampling core treats like any
latent, plus its layout under the LATENT key ``ltxav``.

ComfyUI keeps the video ``[B, 128, F, H, W]`` and audio ``[B, C, T, M]`` latents as a nested tensor; here they
are packed as tokens ``[B, P, 1, F·H·W + T]``: each video position (frame, row, column) is a token of its 128
channels, each audio latent frame a token of its ``C·M`` features (channel-major, diffusers' packing), both
zero-padded to ``P = max(128, C·M)`` features. Elementwise sampler maths, noise and per-token noise masks
(``[B, 1, 1, tokens]``) then work unchanged; the LTX-2 runner and LTXVSeparateAVLatent unpack. The initial
noise is ComfyUI's for nested latents: one generator seeded with the seed draws the video's noise, then the
audio's (the LATENT's ``noise_layout`` is this layout, whose :meth:`Layout.draw_noise` the NOISE source calls),
packed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KEY = "ltxav"


@dataclass(frozen=True)
class Layout:
    """Shapes of the packed parts: video ``channels × frames × height × width``, audio ``audio_channels ×
    audio_frames × bins``."""

    channels: int
    frames: int
    height: int
    width: int
    audio_channels: int
    audio_frames: int
    bins: int

    @property
    def video_tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def audio_tokens(self) -> int:
        return self.audio_frames

    @property
    def tokens(self) -> int:
        return self.video_tokens + self.audio_tokens

    @property
    def audio_features(self) -> int:
        return self.audio_channels * self.bins

    @property
    def features(self) -> int:
        return max(self.channels, self.audio_features)

    def draw_noise(self, seed: int, batch: int) -> torch.Tensor:
        """ComfyUI's initial noise of the nested latent (video then audio from one generator), packed."""
        from nodegraph_nodes.sampling.noise import SEED_MASK

        generator = torch.Generator("cpu").manual_seed(int(seed) & SEED_MASK)
        video = torch.randn((batch, self.channels, self.frames, self.height, self.width), generator=generator)
        audio = torch.randn((batch, self.audio_channels, self.audio_frames, self.bins), generator=generator)
        return pack_tokens(video_tokens(video), audio_tokens(audio), self)

    def as_dict(self) -> dict:
        return {"video": [self.channels, self.frames, self.height, self.width],
                "audio": [self.audio_channels, self.audio_frames, self.bins]}


def layout_of(latent: dict) -> Layout | None:
    """The layout a LATENT carries (``None``: not an audio-video latent)."""
    info = latent.get(KEY)
    if info is None or isinstance(info, Layout):
        return info
    return Layout(*[int(v) for v in info["video"]], *[int(v) for v in info["audio"]])


def _pad(x: torch.Tensor, features: int) -> torch.Tensor:
    """``[B, f, N]`` zero-padded to ``[B, features, N]``."""
    if x.shape[1] == features:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, features - x.shape[1]))


def pack_tokens(video: torch.Tensor, audio: torch.Tensor, lay: Layout) -> torch.Tensor:
    """Video tokens ``[B, Nv, C]`` and audio tokens ``[B, Na, C·M]`` → the packed ``[B, P, 1, Nv + Na]``."""
    v = _pad(video.transpose(1, 2), lay.features)
    a = _pad(audio.transpose(1, 2), lay.features)
    return torch.cat([v, a], dim=2).unsqueeze(2)


def unpack_tokens(x: torch.Tensor, lay: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed ``[B, P, 1, N]`` → video tokens ``[B, Nv, C]`` and audio tokens ``[B, Na, C·M]``."""
    flat = x[:, :, 0]
    video = flat[:, :lay.channels, :lay.video_tokens].transpose(1, 2)
    audio = flat[:, :lay.audio_features, lay.video_tokens:lay.tokens].transpose(1, 2)
    return video, audio


def video_tokens(video: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, H, W]`` → ``[B, F·H·W, C]`` (diffusers' LTX-2 packing with 1×1×1 patches)."""
    return video.flatten(2).transpose(1, 2)


def audio_tokens(audio: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, M]`` → ``[B, T, C·M]``."""
    return audio.transpose(1, 2).flatten(2, 3)


def pack(video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, Layout]:
    if video.ndim != 5:
        raise ValueError(f"LTXVConcatAVLatent.video_latent: a video latent [B, C, frames, h, w] is needed; this one is "
                         f"{list(video.shape)}")
    if audio.ndim != 4:
        raise ValueError(f"LTXVConcatAVLatent.audio_latent: an audio latent [B, C, frames, bins] is needed "
                         f"(LTXVEmptyLatentAudio / LTXVAudioVAEEncode); this one is {list(audio.shape)}")
    if audio.shape[0] != video.shape[0]:
        if audio.shape[0] == 1:
            audio = audio.expand(video.shape[0], -1, -1, -1)
        else:
            raise ValueError(f"LTXVConcatAVLatent: the video latent's batch ({video.shape[0]}) and the audio latent's "
                             f"({audio.shape[0]}) differ")
    lay = Layout(*video.shape[1:], *audio.shape[1:])
    return pack_tokens(video_tokens(video.float()), audio_tokens(audio.float()), lay), lay


def unpack(x: torch.Tensor, lay: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    v, a = unpack_tokens(x, lay)
    video = v.transpose(1, 2).reshape(x.shape[0], lay.channels, lay.frames, lay.height, lay.width)
    audio = a.unflatten(2, (lay.audio_channels, lay.bins)).transpose(1, 2)
    return video.contiguous(), audio.contiguous()


def pack_mask(video_mask: torch.Tensor | None, audio_mask: torch.Tensor | None, lay: Layout,
              batch: int) -> torch.Tensor:
    """Noise masks of the parts (video ``[B, 1, F, H, W]`` broadcastable, audio ``[B, 1, T, …]``; ``None``: all
    ones) → the packed per-token mask ``[B, 1, 1, tokens]``."""
    v = torch.ones(batch, 1, lay.frames, lay.height, lay.width)
    if video_mask is not None:
        m = video_mask.float()
        while m.ndim < 5:
            m = m.unsqueeze(0)
        v = v * m[:, :1].expand(-1, -1, lay.frames, lay.height, lay.width)
    a = torch.ones(batch, lay.audio_frames)
    if audio_mask is not None:
        m = audio_mask.float()
        m = m.reshape(m.shape[0], -1, m.shape[2], *([1] if m.ndim < 4 else [m.shape[3]]))[:, 0, :, 0]
        a = a * m
    return torch.cat([v.flatten(1), a], dim=1)[:, None, None]


def unpack_mask(mask: torch.Tensor, lay: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    m = mask.float().reshape(mask.shape[0], -1)
    video = m[:, :lay.video_tokens].reshape(-1, 1, lay.frames, lay.height, lay.width)
    audio = m[:, lay.video_tokens:lay.tokens].reshape(-1, 1, lay.audio_frames, 1)
    return video, audio
