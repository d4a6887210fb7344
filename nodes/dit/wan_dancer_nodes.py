"""ComfyUI's ``WanDancerEncodeAudio`` and ``WanDancerVideo``: the music features and the Wan-Dancer conditioning (start frames or keyframes, their mask, the start and
reference images' CLIP vision outputs, the music features) and an empty video latent.

Facts (ComfyUI's node): the latent is zeros ``[1, 16, (length - 1) / 4 + 1, height / 8, width / 8]``. ``start_image``
(its first ``length`` frames, resized bilinear with a center crop) is placed first in ``length`` black frames and
encoded as one video (``concat_latent_image``). Without ``mask`` the ``concat_mask`` is 0 on the latent frames the
start images cover and 1 elsewhere (WanImageToVideo's); with ``mask`` (white = keep: Wan-Dancer's keyframes) it is
``1 - mask``, resized nearest-exact to the latent, the first frame taken four times and every four pixel frames one
latent frame's four mask channels. The runner gives the model ``1 - concat_mask``: the official keyframe mask.
``clip_vision_output`` / ``clip_vision_output_ref`` (the start frame / the reference image) and
``audio_encoder_output``'s ``audio_feature`` / ``fps`` / ``audio_inject_scale`` go on both conditionings as
``clip_vision_output`` / ``clip_vision_output_ref`` / ``audio_embed`` / ``fps`` / ``audio_inject_scale``; the
reference only with the start frame's (as ComfyUI).

``WanDancerEncodeAudio`` (the official ``gen_video_global.py``'s recipe, :mod:`.wan_dancer_music`): the AUDIO's first
item, its channels averaged, resampled to 15360 Hz (torchaudio's sinc resampler, as ComfyUI) gives the 35 features of
each 30-fps frame ``[1, frames, 35]``; the beat tracker starts at the tempo of the track resampled to 22050 Hz. The
frame rate is ``30 / int(frames / video_frames + 0.5)`` written with 4 decimals (the official ``input_fps``: a clip
of ``k`` times the video's length is played ``k`` times faster; at least one), and the prompt suffix is the official
one: ``帧率是<fps>`` ("the frame rate is") away from 30 fps, ``, 帧率是30fps。`` at 30.

Stricter / kinder than ComfyUI: a mask of fewer than ``length`` frames is padded with black (generate) frames
instead of failing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodegraph.node import FLOAT, INT, STRING, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, MASK

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.dit.audio_encoder import AUDIO_ENCODER_OUTPUT
from nodegraph_nodes.dit.wan_i2v import MAX_RESOLUTION, _resized, encode_video, video_inputs
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT
from nodegraph_nodes.media.audio import AUDIO, check_audio


def music_fps(frames: int, video_frames: int) -> float:
    """The official ``input_fps``: ``30 / int(frames / video_frames + 0.5)`` (at least 1 in the divisor), 4 decimals."""
    from nodegraph_nodes.dit.wan_dancer_music import BASE_FPS

    return float("{:.4f}".format(BASE_FPS / max(1, int(frames / video_frames + 0.5))))


def fps_prompt(fps: float) -> str:
    """The official prompt suffix for ``fps``."""
    from nodegraph_nodes.dit.wan_dancer_model import is_global

    return "帧率是{:.4f}".format(fps) if is_global(fps) else ", 帧率是30fps。"


class WanDancerEncodeAudio(Node):
    """Wan-Dancer's music features (onset strength, MFCCs, CENS chroma, onset peaks, beats per 30-fps frame), the
    frame rate the clip maps to ``video_frames`` at, and the prompt text for it."""

    category = "conditioning/video_models"
    audio = Input(AUDIO)
    video_frames = Input(INT, default=149, min=1, max=MAX_RESOLUTION, step=4)
    audio_inject_scale = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    outputs = (Output(AUDIO_ENCODER_OUTPUT, "audio_encoder_output"), Output(STRING, "fps_string"))

    def execute(self, audio, video_frames: int, audio_inject_scale: float) -> tuple:
        from nodegraph_nodes.dit.audio_encoder import resample
        from nodegraph_nodes.dit.wan_dancer_music import ANALYSIS_RATE, LOAD_RATE, music_features, start_tempo

        waveform, rate = check_audio(audio, "WanDancerEncodeAudio")
        mono = waveform[0].float().mean(dim=0)
        if mono.shape[-1] < 2048:
            raise ValueError(f"WanDancerEncodeAudio.audio: {mono.shape[-1] / rate:.3f} s of audio is too short to "
                             "analyse (a 2048-sample window at least)")
        start_bpm = start_tempo(resample(mono, rate, ANALYSIS_RATE).numpy())
        features = torch.from_numpy(music_features(resample(mono, rate, LOAD_RATE).numpy(), start_bpm))[None]
        fps = music_fps(features.shape[1], video_frames)
        output = {"audio_feature": features, "fps": fps, "audio_inject_scale": float(audio_inject_scale)}
        return output, fps_prompt(fps)


def keyframe_mask(mask: torch.Tensor, length: int, height: int, width: int) -> torch.Tensor:
    """ComfyUI's ``concat_mask`` ``[1, 4, latent frames, h, w]`` of a keep-mask ``[frames, H, W]`` (1 = keep)."""
    mask = mask.float()
    if mask.ndim == 2:
        mask = mask[None]
    mask = mask[:length]
    if mask.shape[0] < length:
        mask = torch.cat([mask, mask.new_zeros(length - mask.shape[0], *mask.shape[1:])])
    inverted = F.interpolate((1.0 - mask)[None], size=(height, width), mode="nearest-exact")  # [1, L, h, w]
    inverted = torch.cat([inverted[:, :1].repeat(1, 4, 1, 1), inverted[:, 1:]], dim=1)
    if inverted.shape[1] % 4:
        raise ValueError(f"WanDancerVideo.length: {length} frames do not make whole latent frames (use 4·k + 1)")
    return inverted.view(1, inverted.shape[1] // 4, 4, height, width).transpose(1, 2)


class WanDancerVideo(Node):
    """Wan-Dancer conditioning: the start frames or keyframes (with ``mask``, white = keep) as the image
    channels, the start and reference images' CLIP vision outputs and the music features; an empty latent."""

    category = "conditioning/video_models"
    vars().update(video_inputs(length=149, batch_size=False, width=480, height=832))
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True)
    clip_vision_output_ref = Input(CLIP_VISION_OUTPUT, optional=True)
    start_image = Input(IMAGE, optional=True)
    mask = Input(MASK, optional=True)
    audio_encoder_output = Input(AUDIO_ENCODER_OUTPUT, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, clip_vision_output=None,
                clip_vision_output_ref=None, start_image=None, mask=None, audio_encoder_output=None) -> tuple:
        frames = (length - 1) // 4 + 1
        latent = torch.zeros([1, 16, frames, height // 8, width // 8])
        values: dict = {}
        if start_image is not None:
            start = _resized(start_image[:length], width, height)
            video = torch.zeros((length, height, width, 3))
            video[:start.shape[0]] = start
            values["concat_latent_image"] = image_latent = encode_video(self.ctx, vae, video, "WanDancerVideo")
            h, w = image_latent.shape[-2:]
            if mask is None:
                concat = torch.ones(1, 1, frames, h, w)
                concat[:, :, :(start.shape[0] - 1) // 4 + 1] = 0.0
            else:
                concat = keyframe_mask(mask, length, h, w)
            values["concat_mask"] = concat
        if clip_vision_output is not None:
            values.update(clip_vision_output=clip_vision_output, clip_vision_output_ref=clip_vision_output_ref)
        if audio_encoder_output is not None:
            try:
                values.update(audio_embed=audio_encoder_output["audio_feature"], fps=audio_encoder_output["fps"],
                              audio_inject_scale=audio_encoder_output.get("audio_inject_scale", 1.0))
            except (KeyError, TypeError):
                raise ValueError("WanDancerVideo.audio_encoder_output: WanDancerEncodeAudio's output is needed (music "
                                 "features and fps)") from None
        if values:
            positive, negative = set_values(positive, values), set_values(negative, values)
        return positive, negative, {"samples": latent}
