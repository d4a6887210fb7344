"""ComfyUI's ``WanSoundImageToVideo`` and ``WanSoundImageToVideoExtend`` (Wan 2.2 S2V conditioning).

Facts (ComfyUI's ``wan_sound_to_video``): the audio encoder's every layer's states (``encoded_audio_all_layers``,
50 frames a second) are linearly resampled to 30 frames a second, then bucketed to the video's 16 fps
(frame ``i`` takes the 30-fps frame ``round(i · 30 / 16)``, zeros past the end; the buckets cover whole chunks
of ``4 · latent frames``); the conditioning gets the chunk's ``4 · latent frames`` of them from
``frame_offset`` as ``audio_embed`` ``[1, layers, width, frames]`` (zeros on the negative). ``ref_image``
(resized, bilinear, center crop) is VAE-encoded and appended to ``reference_latents``; ``ref_motion`` (the
last 73 frames, gray in front up to 73) or, for the Extend node, the video latent so far gives the last 19
latent frames as ``reference_motion``; ``control_video`` (the first ``length`` frames, resized, encoded) at
the front of a zero latent (in the model's space) is ``control_video``. The latent to sample is empty.
``WanSoundImageToVideoExtend`` takes width, height, batch and ``frame_offset = 4 · latent frames`` from the
video latent so far (the template concatenates each chunk's latent to it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, VAE

from nodegraph_nodes.dit.audio_encoder import AUDIO_ENCODER_OUTPUT
from nodegraph_nodes.dit.wan_i2v import MAX_RESOLUTION, _resized, encode_video, video_inputs

AUDIO_RATE = 50
VIDEO_RATE = 30
FPS = 16
MOTION_FRAMES = 73
MOTION_LATENTS = 19


def audio_buckets(states, batch_frames: int) -> torch.Tensor:
    """The audio states (a sequence of ``[1, T, C]``, one per layer) as ``[1, layers, C, N]`` at 16 fps, ``N`` a
    multiple of ``batch_frames`` (ComfyUI's ``linear_interpolation`` + ``get_audio_embed_bucket_fps``, m = 0)."""
    feat = torch.cat([s.float() for s in states])  # layers, T, C
    length = int(feat.shape[1] / float(AUDIO_RATE) * VIDEO_RATE)
    feat = torch.nn.functional.interpolate(feat.transpose(1, 2), size=length, align_corners=True, mode="linear")
    feat = feat.transpose(1, 2)  # layers, T30, C
    frames = feat.shape[1]
    chunks = int(frames / (batch_frames * VIDEO_RATE / FPS)) + 1
    count = chunks * batch_frames
    total = math.ceil(count / FPS * VIDEO_RATE)
    times = np.linspace(0, count / FPS, count, endpoint=False)
    index = np.clip(np.round(times * VIDEO_RATE).astype(int), 0, total - 1)
    out = torch.zeros(count, feat.shape[0], feat.shape[2])
    for i, j in enumerate(index):
        if j < frames:
            out[i] = feat[:, j]
    return out.permute(1, 2, 0)[None]


def _set(conditioning: list, values: dict, append: tuple = ()) -> list:
    out = []
    for cond, extras in conditioning:
        extras = dict(extras)
        for key, value in values.items():
            extras[key] = list(extras.get(key) or []) + value if key in append else value
        out.append([cond, extras])
    return out


def sound_to_video(ctx, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                   where: str, frame_offset: int = 0, ref_image=None, audio_encoder_output=None, control_video=None,
                   ref_motion=None, ref_motion_latent=None) -> tuple:
    """ComfyUI's ``wan_sound_to_video``: ``(positive, negative, latent, frame_offset)``."""
    from nodegraph_nodes.dit.qwen_image import WAN21

    latent_t = (length - 1) // 4 + 1
    if audio_encoder_output is not None:
        batch_frames = latent_t * 4
        embed = audio_buckets(audio_encoder_output["encoded_audio_all_layers"], batch_frames)
        embed = embed[..., frame_offset:frame_offset + batch_frames]
        if embed.shape[3] > 0:
            positive = _set(positive, {"audio_embed": embed})
            negative = _set(negative, {"audio_embed": embed * 0.0})
            frame_offset += batch_frames
    if ref_image is not None:
        ref = encode_video(ctx, vae, _resized(ref_image[:1], width, height), where)
        positive = _set(positive, {"reference_latents": [ref]}, append=("reference_latents",))
        negative = _set(negative, {"reference_latents": [ref]}, append=("reference_latents",))
    if ref_motion is not None:
        motion = _resized(ref_motion[-MOTION_FRAMES:], width, height)
        if motion.shape[0] < MOTION_FRAMES:
            padded = torch.full((MOTION_FRAMES, height, width, 3), 0.5)
            padded[-motion.shape[0]:] = motion
            motion = padded
        ref_motion_latent = encode_video(ctx, vae, motion, where)
    if ref_motion_latent is not None:
        values = {"reference_motion": ref_motion_latent[:, :, -MOTION_LATENTS:]}
        positive, negative = _set(positive, values), _set(negative, values)
    latent = torch.zeros([batch_size, 16, latent_t, height // 8, width // 8])
    control = WAN21.process_out(torch.zeros_like(latent))
    if control_video is not None:
        encoded = encode_video(ctx, vae, _resized(control_video[:length], width, height), where)
        control[:, :, :encoded.shape[2]] = encoded
    positive, negative = _set(positive, {"control_video": control}), _set(negative, {"control_video": control})
    return positive, negative, {"samples": latent}, frame_offset


class WanSoundImageToVideo(Node):
    """Wan 2.2 S2V conditioning for the first chunk: the audio encoder's states for its frames, the reference
    image's latent, optional motion frames and control video; an empty video latent to sample."""

    category = "conditioning/video_models"
    vars().update(video_inputs(length=77))
    audio_encoder_output = Input(AUDIO_ENCODER_OUTPUT, optional=True)
    ref_image = Input(IMAGE, optional=True)
    control_video = Input(IMAGE, optional=True)
    ref_motion = Input(IMAGE, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                audio_encoder_output=None, ref_image=None, control_video=None, ref_motion=None) -> tuple:
        positive, negative, latent, _ = sound_to_video(
            self.ctx, positive, negative, vae, width, height, length, batch_size, "WanSoundImageToVideo",
            ref_image=ref_image, audio_encoder_output=audio_encoder_output, control_video=control_video,
            ref_motion=ref_motion)
        return positive, negative, latent


class WanSoundImageToVideoExtend(Node):
    """Wan 2.2 S2V conditioning for the next chunk of a video: the audio from where the video latent so far
    ends, its last latent frames as motion; size and batch from that latent."""

    category = "conditioning/video_models"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    vae = Input(VAE)
    length = Input(INT, default=77, min=1, max=MAX_RESOLUTION, step=4)
    video_latent = Input(LATENT)
    audio_encoder_output = Input(AUDIO_ENCODER_OUTPUT, optional=True)
    ref_image = Input(IMAGE, optional=True)
    control_video = Input(IMAGE, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, length: int, video_latent: dict, audio_encoder_output=None,
                ref_image=None, control_video=None) -> tuple:
        samples = video_latent["samples"]
        if samples.ndim != 5:
            raise ValueError(f"WanSoundImageToVideoExtend.video_latent: a video latent [B, 16, frames, h, w] is "
                             f"needed; this one is {list(samples.shape)}")
        positive, negative, latent, _ = sound_to_video(
            self.ctx, positive, negative, vae, samples.shape[-1] * 8, samples.shape[-2] * 8, length,
            samples.shape[0], "WanSoundImageToVideoExtend", frame_offset=samples.shape[-3] * 4, ref_image=ref_image,
            audio_encoder_output=audio_encoder_output, control_video=control_video, ref_motion_latent=samples)
        return positive, negative, latent
