"""WanInfiniteTalkToVideo (ComfyUI's node): Wan 2.1 I2V with InfiniteTalk's audio adapter (a ModelPatchLoader
file) for talking video, one chunk per node; chained nodes extend the clip from the previous frames.

Facts (ComfyUI's node and ``comfy/ldm/wan/model_multitalk.py``):

- Conditioning and latent as WanImageToVideo (``concat_latent_image``/``concat_mask`` of ``start_image``,
  ``clip_vision_output``); the latent ``[1, 16, (length-1)/4+1, h/8, w/8]`` zeros.
- Audio: each AUDIO_ENCODER_OUTPUT's hidden states after the embedding (``encoded_audio_all_layers[1:]``),
  linearly resampled from 50 to 25 per second (``align_corners``) to ``[frames, layers, channels]``. With two
  speakers the tracks are placed one after the other ("add"): speaker 1 talks, then speaker 2, each silent
  (zeros) while the other talks. The masks (``mask_1``, ``mask_2``) at the token grid (nearest, > 0) tell the
  speakers apart; there is no background class here (ComfyUI passes two).
- Without ``previous_frames`` the audio of video frames ``0 … length-1`` is used and the first latent frame
  of ``concat_latent_image`` is the motion latent; with them, the last ``motion_frame_count`` frames (resized)
  are VAE-encoded as the motion latent, the audio starts at ``len(previous_frames) - motion_frame_count`` and
  ``trim_image`` is ``motion_frame_count``.
- At every model call the first latent frames of the model input are the motion latent (model space); when
  extending, the sampled result's first frames are replaced by it. Here the second is done by giving the
  motion latent as those frames' denoised value at each step, which ends the same for samplers whose last
  step returns the denoised latent (euler, the template's).
- Per block the audio layers (:mod:`.wan_infinitetalk_patch`), scaled by ``audio_scale``.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch
import torch.nn.functional as F

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, MASK, MODEL

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.dit.audio_encoder import AUDIO_ENCODER_OUTPUT
from nodegraph_nodes.dit.model_patch import MODEL_PATCH, ModelPatchValue
from nodegraph_nodes.dit.wan_i2v import _resized, encode_video, start_frames_latent, video_inputs
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun

NODE = "WanInfiniteTalkToVideo"
MODES = ["single_speaker", "two_speakers"]
AUDIO_RATE, VIDEO_RATE = 50, 25


def audio_features(output: Any, where: str) -> torch.Tensor:
    """``[frames at 25/s, layers, channels]`` from an AUDIO_ENCODER_OUTPUT (hidden states after the embedding)."""
    states = output.get("encoded_audio_all_layers") if isinstance(output, dict) else None
    if not states or len(states) < 2:
        raise TypeError(f"{NODE}: input '{where}' must be an AUDIO_ENCODER_OUTPUT with all hidden states "
                        "(AudioEncoderEncode of a wav2vec2 encoder)")
    feats = torch.stack([s.float().cpu() for s in states], dim=0).squeeze(1)[1:]  # layers, T, C
    length = int(feats.shape[1] / AUDIO_RATE * VIDEO_RATE)
    feats = F.interpolate(feats.transpose(1, 2), size=length, mode="linear", align_corners=True)
    return feats.transpose(1, 2).movedim(0, 1)


def one_after_another(tracks: list[torch.Tensor]) -> list[torch.Tensor]:
    """The speakers' tracks placed in turn on one timeline (each zero while another talks)."""
    if len(tracks) < 2:
        return tracks
    total = sum(t.shape[0] for t in tracks)
    out, offset = [], 0
    for t in tracks:
        full = torch.zeros(total, *t.shape[1:], dtype=t.dtype)
        full[offset:offset + t.shape[0]] = t
        out.append(full)
        offset += t.shape[0]
    return out


@dataclass(eq=False)
class InfiniteTalkPatch(ModelPatch):
    """The adapter on a Wan 2.1 network for one run (see the module docstring)."""

    key: ClassVar[str] = "infinite_talk"
    patch: ModelPatchValue
    manager: Any
    features: list[torch.Tensor]
    audio_start: int
    audio_end: int
    scale: float
    motion_latent: torch.Tensor  # raw VAE latent [1, 16, n, h, w]
    extend: bool
    token_masks: torch.Tensor | None = None
    _tokens: dict = field(default_factory=dict)

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        from nodegraph_nodes.dit.qwen_image import WAN21
        from nodegraph_nodes.dit.wan_infinitetalk_patch import AudioCall, attach_audio

        network = run.network
        blocks = getattr(network, "blocks", None)
        if blocks is None or not hasattr(network, "patch_embedding") or not hasattr(blocks[0], "attn2"):
            raise TypeError(f"{NODE}: the InfiniteTalk patch {self.patch.name!r} patches Wan 2.1 models; this "
                            f"model's network is {type(network).__name__}")
        device, dtype = run.runner.device, run.runner.dtype
        with ExitStack() as stack:
            adapter = stack.enter_context(self.manager.use(self.patch.handle, device))
            if adapter.cfg.dim != blocks[0].attn1.to_q.out_features:
                raise ValueError(f"{NODE}: {self.patch.name!r} is {adapter.cfg.dim} wide but the model "
                                 f"{blocks[0].attn1.to_q.out_features}")
            adapter.set_heads(blocks[0].attn1.heads)
            key = (str(device), dtype)
            if key not in self._tokens:
                self._tokens.clear()
                with torch.inference_mode():
                    self._tokens[key] = adapter.audio_tokens(self.features, self.audio_start, self.audio_end)
            stack.enter_context(attach_audio(blocks, AudioCall(adapter, self._tokens[key], self.scale,
                                                               self.token_masks), NODE))
            motion = WAN21.process_in(self.motion_latent.float())
            n = motion.shape[2]

            def wrapper(predict, x, sigma):
                x = x.clone()
                x[:, :, :n] = motion.to(x)
                pred = predict(x, sigma)
                if self.extend:
                    pred.denoised = pred.denoised.clone()
                    pred.denoised[:, :, :n] = motion.to(pred.denoised)
                return pred

            run.predict_wrappers.append(wrapper)
            try:
                yield
            finally:
                run.predict_wrappers.remove(wrapper)


def token_masks(mask_1: torch.Tensor, mask_2: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    """``[2, (h/2)·(w/2)]``: the speakers' masks at the token grid (nearest, > 0)."""
    masks = torch.cat([m.float().reshape(-1, *m.shape[-2:]) for m in (mask_1, mask_2)])
    masks = F.interpolate(masks[None], size=(latent_h // 2, latent_w // 2), mode="nearest")[0]
    return (masks > 0).reshape(masks.shape[0], -1).float()


class WanInfiniteTalkToVideo(Node):
    """Talking video with Wan 2.1 I2V and InfiniteTalk: the patched model, conditioning and latent of one
    chunk; extend with ``previous_frames`` (the last ``motion_frame_count`` of them lead the new chunk)."""

    category = "conditioning/video_models"
    dynamic_combos = {"mode": {"single_speaker": (),
                               "two_speakers": ("mode.audio_encoder_output_2", "mode.mask_1", "mode.mask_2")}}
    mode = Input(COMBO, choices=MODES)
    vars().update({"mode.audio_encoder_output_2": Input(AUDIO_ENCODER_OUTPUT, optional=True),
                   "mode.mask_1": Input(MASK, optional=True), "mode.mask_2": Input(MASK, optional=True)})
    model = Input(MODEL)
    model_patch = Input(MODEL_PATCH)
    vars().update(video_inputs(batch_size=False))
    clip_vision_output = Input(CLIP_VISION_OUTPUT, optional=True)
    start_image = Input(IMAGE, optional=True)
    audio_encoder_output_1 = Input(AUDIO_ENCODER_OUTPUT)
    motion_frame_count = Input(INT, default=9, min=1, max=33, step=1,
                               tooltip="Number of previous frames to use as motion context.")
    audio_scale = Input(FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01)
    previous_frames = Input(IMAGE, optional=True)
    outputs = (Output(MODEL, "model"), Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"),
               Output(LATENT, "latent"), Output(INT, "trim_image"))

    def execute(self, mode, model, model_patch, positive, negative, vae, width: int, height: int, length: int,
                audio_encoder_output_1, motion_frame_count: int = 9, audio_scale: float = 1.0,
                clip_vision_output=None, start_image=None, previous_frames=None, **fields: Any) -> tuple:
        from nodegraph_nodes.sampling.model import require_sampling_model

        model = require_sampling_model(model, f"{NODE}.model")
        if not isinstance(model_patch, ModelPatchValue) or model_patch.kind != "wan_infinitetalk":
            raise TypeError(f"{NODE}: input 'model_patch' must be an InfiniteTalk patch from ModelPatchLoader")
        if mode not in MODES:
            raise ValueError(f"{NODE}: input 'mode' is {mode!r}; use one of {', '.join(MODES)}")
        audio_2 = fields.get("mode.audio_encoder_output_2") if mode == "two_speakers" else None
        mask_1 = fields.get("mode.mask_1") if mode == "two_speakers" else None
        mask_2 = fields.get("mode.mask_2") if mode == "two_speakers" else None
        if mode == "two_speakers" and (audio_2 is None or mask_1 is None or mask_2 is None):
            raise ValueError(f"{NODE}: two_speakers needs 'mode.audio_encoder_output_2', 'mode.mask_1' and "
                             "'mode.mask_2'")
        if previous_frames is not None and previous_frames.shape[0] < motion_frame_count:
            raise ValueError(f"{NODE}: 'previous_frames' has {previous_frames.shape[0]} frames, fewer than "
                             f"motion_frame_count ({motion_frame_count})")
        latent = torch.zeros([1, 16, (length - 1) // 4 + 1, height // 8, width // 8])
        concat = None
        if start_image is not None:
            concat, mask = start_frames_latent(self.ctx, vae, start_image, width, height, length, NODE)
            values = {"concat_latent_image": concat, "concat_mask": mask}
            positive, negative = set_values(positive, values), set_values(negative, values)
        if clip_vision_output is not None:
            values = {"clip_vision_output": clip_vision_output}
            positive, negative = set_values(positive, values), set_values(negative, values)
        tracks = [audio_features(audio_encoder_output_1, "audio_encoder_output_1")]
        if audio_2 is not None:
            tracks.append(audio_features(audio_2, "mode.audio_encoder_output_2"))
        tracks = one_after_another(tracks)
        masks = token_masks(mask_1, mask_2, latent.shape[-2], latent.shape[-1]) if audio_2 is not None else None
        if previous_frames is not None:
            motion = _resized(previous_frames[-motion_frame_count:], width, height)
            start = previous_frames.shape[0] - motion_frame_count
            motion_latent = encode_video(self.ctx, vae, motion, NODE)
            trim = motion_frame_count
        else:
            if concat is None:
                raise ValueError(f"{NODE}: give 'start_image' (or 'previous_frames' to extend a clip)")
            start, trim = 0, 0
            motion_latent = concat[:, :, :1]
        patch = InfiniteTalkPatch(model_patch, self.ctx.service("models"), tracks, start,
                                  start + length, float(audio_scale), motion_latent, previous_frames is not None,
                                  masks)
        model = model.with_sampling_patches(model.sampling_patches.with_model_patch(patch))
        return model, positive, negative, {"samples": latent}, trim
