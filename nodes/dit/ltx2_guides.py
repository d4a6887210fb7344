"""ComfyUI's LTX image conditioning and latent upscaling nodes (maths as ComfyUI's ``nodes_lt.py``):
LTXVImgToVideoInplace / LTXVImgToVideo (start frames encoded into the latent, their noise mask lowered),
LTXVAddGuide (guide frames appended to the latent with their own time positions, ``keyframe_idxs``;
an IC-LoRA's ``reference_downscale_factor`` > 1: the guide encoded smaller and dilated), GetICLoRAParameters (the IC-LoRA's metadata: :mod:`.ltx2_iclora`),
LTXVCropGuides (the appended frames removed again), LTXVPreprocess (H.264 round trip of the image, as the
model was trained on compressed frames), LatentUpscaleModelLoader / LTXVLatentUpsampler (diffusers'
``LTX2LatentUpsamplerModel`` on the un-normalized latent).

Latent frames and pixels: 8 pixel frames per latent frame after the first, 32 pixels per latent row/column
(the VAE's ``downscale_index_formula`` (8, 32, 32)). Keyframe positions are kept as the transformer's pixel
coordinate bounds ``[B, 3, tokens, 2]`` (frame, row, column; start and end) before the frame-rate division.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, MASK, MODEL, VAE

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.diffusion.files import ModelFileError, list_model_files, read_state_dict, resolve_model

SCALE = (8, 32, 32)
LATENT_UPSCALE_MODEL = "LATENT_UPSCALE_MODEL"
#: GetICLoRAParameters' output: ``{"reference_downscale_factor": int}``
IC_LORA_PARAMETERS = "IC_LORA_PARAMETERS"


def encode_frames(ctx, vae, frames: torch.Tensor, where: str) -> torch.Tensor:
    """``frames`` ``[F, H, W, 3]`` (0..1) encoded as one video by the LTX video VAE: ``[1, 128, 1 + (F-1)/8, h, w]``
    (normalized)."""
    from nodegraph_nodes.dit.ltx2 import LtxVideoVae

    manager = ctx.service("models")
    with manager.use(vae.handle, ctx.device) as module, torch.inference_mode():
        if not isinstance(module, LtxVideoVae):
            raise ValueError(f"{where}.vae: the LTX video VAE is needed (the LTX-2 checkpoint's); this is "
                             f"{type(module).__name__}")
        dtype = next(module.parameters()).dtype
        x = frames[..., :3].permute(3, 0, 1, 2)[None].to(ctx.device, dtype) * 2 - 1
        return module.encode_video(x).float().cpu()


def _resize(images: torch.Tensor, width: int, height: int, crop: str) -> torch.Tensor:
    from nodegraph_nodes.image.operations import common_upscale

    if images.shape[1] == height and images.shape[2] == width:
        return images[..., :3]
    return common_upscale(images[..., :3].permute(0, 3, 1, 2).float(), width, height, "bilinear",
                          crop).permute(0, 2, 3, 1)


def _video_latent(latent: dict, where: str) -> torch.Tensor:
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(f"{where}.latent: an LTX video latent [B, 128, frames, h, w] is needed (EmptyLTXVLatentVideo; "
                         f"audio-video latents are separated with LTXVSeparateAVLatent); this one is {list(samples.shape)}")
    return samples


def noise_mask_of(latent: dict) -> torch.Tensor:
    """The latent's noise mask, or ones ``[B, 1, F, 1, 1]``."""
    mask = latent.get("noise_mask")
    samples = latent["samples"]
    if mask is None:
        return torch.ones((samples.shape[0], 1, samples.shape[2], 1, 1))
    return mask.clone().float()


class LTXVImgToVideoInplace(Node):
    """The image (or frames) encoded into the start of the video latent; their latent frames' noise mask is
    ``1 - strength`` (1: kept as they are). ``bypass`` passes the latent through."""

    category = "conditioning/video_models"
    vae = Input(VAE)
    image = Input(IMAGE)
    latent = Input(LATENT)
    strength = Input(FLOAT, default=1.0, min=0.0, max=1.0)
    bypass = Input(BOOLEAN, default=False, tooltip="Bypass the conditioning.")
    outputs = (Output(LATENT, "latent"),)

    def execute(self, vae, image: torch.Tensor, latent: dict, strength: float = 1.0, bypass: bool = False) -> tuple:
        if bypass:
            return (latent,)
        samples = _video_latent(latent, "LTXVImgToVideoInplace").clone()
        b, _, frames, h, w = samples.shape
        pixels = _resize(image, w * SCALE[2], h * SCALE[1], "center")
        t = encode_frames(self.ctx, vae, pixels, "LTXVImgToVideoInplace")
        samples[:, :, :t.shape[2]] = t[:, :, :frames]
        mask = torch.ones((b, 1, frames, 1, 1))
        mask[:, :, :t.shape[2]] = 1.0 - strength
        return ({**latent, "samples": samples, "noise_mask": mask},)


class LTXVImgToVideo(Node):
    """An empty LTX video latent with the image encoded into its start (noise mask ``1 - strength`` there)."""

    category = "conditioning/video_models"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    vae = Input(VAE)
    image = Input(IMAGE)
    width = Input(INT, default=768, min=64, max=16384, step=32)
    height = Input(INT, default=512, min=64, max=16384, step=32)
    length = Input(INT, default=97, min=9, max=16384, step=8)
    batch_size = Input(INT, default=1, min=1, max=4096)
    strength = Input(FLOAT, default=1.0, min=0.0, max=1.0)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, image, width: int, height: int, length: int, batch_size: int,
                strength: float) -> tuple:
        pixels = _resize(image, width, height, "center")
        t = encode_frames(self.ctx, vae, pixels, "LTXVImgToVideo")
        frames = (length - 1) // 8 + 1
        latent = torch.zeros([batch_size, 128, frames, height // 32, width // 32])
        latent[:, :, :t.shape[2]] = t[:, :, :frames]
        mask = torch.ones((batch_size, 1, frames, 1, 1))
        mask[:, :, :t.shape[2]] = 1.0 - strength
        return positive, negative, {"samples": latent, "noise_mask": mask}


def keyframe_count(cond: list) -> tuple[torch.Tensor | None, int]:
    """A conditioning's ``keyframe_idxs`` and how many latent frames they cover."""
    for _, extras in cond:
        idxs = extras.get("keyframe_idxs")
        if idxs is not None:
            return idxs, int(torch.unique(idxs[0, 0, :, 0]).shape[0])
    return None, 0


def keyframe_coords(guide: torch.Tensor, frame_idx: int, pixel_frames: int) -> torch.Tensor:
    """Pixel coordinate bounds ``[1, 3, tokens, 2]`` of the guide latent's tokens placed at pixel frame
    ``frame_idx`` (the causal first-frame fix only at frame 0, as ComfyUI); a guide of one pixel frame spans one
    pixel frame in time (LTX-2's keyframe conditioning, diffusers' ``_prepare_keyframe_coords``)."""
    _, _, f, h, w = guide.shape
    grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"))
    grid = grid.flatten(1).float()
    bounds = torch.stack([grid, grid + 1], dim=-1) * torch.tensor(SCALE, dtype=torch.float32).view(3, 1, 1)
    if frame_idx == 0:
        bounds[0] = (bounds[0] + 1 - SCALE[0]).clamp(min=0)
    bounds[0] += frame_idx
    if pixel_frames == 1:
        bounds[0, :, 1] = bounds[0, :, 0] + 1
    return bounds[None]


def reference_downscale_factor(parameters: dict | None) -> int:
    """An IC_LORA_PARAMETERS value's ``reference_downscale_factor``: rounded, at least 1; 1 without one."""
    if not parameters:
        return 1
    try:
        return max(1, round(float(parameters.get("reference_downscale_factor", 1))))
    except (TypeError, ValueError):
        return 1


class GetICLoRAParameters(Node):
    """The IC-LoRA parameters in the safetensors metadata of the LoRA last applied to the MODEL (LoraLoader /
    LoraLoaderModelOnly's output for the IC-LoRA): ``reference_downscale_factor`` (the metadata entry whose
    key ends with that name; rounded, at least 1; 1 when the LoRA has no such entry or the MODEL no LoRA)."""

    category = "conditioning/video_models"
    display_name = "Get IC-LoRA Parameters"
    iclora_model = Input(MODEL, tooltip="Direct output from a LoRA Loader for the specific IC-LoRA from which to "
                                        "extract the metadata.")
    outputs = (Output(IC_LORA_PARAMETERS, "iclora_parameters"),)

    def execute(self, iclora_model) -> tuple:
        from nodegraph_nodes.dit.ltx2_iclora import iclora_parameters, last_lora_metadata

        return (iclora_parameters(last_lora_metadata(self.ctx.paths, iclora_model)),)


class LTXVAddGuide(Node):
    """Guide image(s) at ``frame_idx``: the first two latent frames of the guide are appended after the video
    (their own time positions in ``keyframe_idxs`` on both conditionings, noise mask ``1 - strength``), the
    rest replace the latent frames in place. Negative ``frame_idx`` counts from the end."""

    category = "conditioning/video_models"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    vae = Input(VAE)
    latent = Input(LATENT)
    image = Input(IMAGE, tooltip="Image or video to condition the latent video on (8·n + 1 frames; others are cut).")
    frame_idx = Input(INT, default=0, min=-9999, max=9999,
                      tooltip="Frame index to start the conditioning at; negative values count from the end.")
    strength = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)
    attention_mask = Input(MASK, optional=True,
                           tooltip="Optional pixel-space spatial mask of the guide's self-attention influence.")
    iclora_parameters = Input(IC_LORA_PARAMETERS, optional=True,
                              tooltip="Optional IC-LoRA parameters from a Get IC-LoRA Parameters node.")
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, vae, latent: dict, image: torch.Tensor, frame_idx: int,
                strength: float, attention_mask: torch.Tensor | None = None,
                iclora_parameters: dict | None = None) -> tuple:
        if attention_mask is not None:
            raise ValueError("LTXVAddGuide.attention_mask: per-region guide attention is not supported yet; "
                             "leave the input unconnected")
        factor = reference_downscale_factor(iclora_parameters)
        if factor > 1:
            return self._downscaled(positive, negative, vae, latent, image, frame_idx, strength, factor)
        samples = _video_latent(latent, "LTXVAddGuide")
        mask = noise_mask_of(latent)
        _, _, length, h, w = samples.shape
        image = image[:(image.shape[0] - 1) // SCALE[0] * SCALE[0] + 1]
        pixels = _resize(image, w * SCALE[2], h * SCALE[1], "disabled")
        t = encode_frames(self.ctx, vae, pixels, "LTXVAddGuide")
        keyframes, count = keyframe_count(positive)
        latent_count = length - count
        if frame_idx < 0:
            frame_idx = max((latent_count - 1) * SCALE[0] + 1 + frame_idx, 0)
        if pixels.shape[0] > 1 and frame_idx != 0:
            frame_idx = (frame_idx - 1) // SCALE[0] * SCALE[0] + 1
        latent_idx = (frame_idx + SCALE[0] - 1) // SCALE[0]
        if latent_idx + t.shape[2] > length:
            raise ValueError(f"LTXVAddGuide: the guide ({t.shape[2]} latent frames at latent frame {latent_idx}) runs "
                             f"past the latent's {length} frames")
        prefix = min(2, t.shape[2])
        guide = t[:, :, :prefix].expand(samples.shape[0], -1, -1, -1, -1)
        mask[:, :, latent_idx:latent_idx + prefix] = 1.0
        coords = keyframe_coords(guide, frame_idx, pixels.shape[0])
        coords = coords if keyframes is None else torch.cat([keyframes, coords], dim=2)
        positive = set_values(positive, {"keyframe_idxs": coords})
        negative = set_values(negative, {"keyframe_idxs": coords})
        mask_shape = (mask.shape[0], 1, prefix, mask.shape[3], mask.shape[4])
        samples = torch.cat([samples, guide], dim=2)
        mask = torch.cat([mask, torch.full(mask_shape, 1.0 - strength)], dim=2)
        rest = t[:, :, prefix:]
        if rest.shape[2]:
            start = latent_idx + prefix
            samples = samples.clone()
            samples[:, :, start:start + rest.shape[2]] = rest
            mask[:, :, start:start + rest.shape[2]] = 1.0 - strength
        return positive, negative, {**latent, "samples": samples, "noise_mask": mask}

    def _downscaled(self, positive, negative, vae, latent: dict, image: torch.Tensor, frame_idx: int, strength: float,
                    factor: int) -> tuple:
        """An IC-LoRA guide with ``reference_downscale_factor`` > 1 (ComfyUI's current LTXVAddGuide): the guide
        encoded at 1/factor of the latent's size, every latent frame of it appended, dilated onto the full grid
        (:mod:`.ltx2_iclora`: the filler tokens' noise mask is negative, so the runner leaves them out; the real
        ones cover factor × factor patches). A guide of several frames placed after frame 0 is encoded behind a
        copy of its first frame, whose latent frame is then dropped (the VAE's first latent frame holds one pixel
        frame)."""
        from nodegraph_nodes.dit.ltx2_iclora import dilate, widen_coords

        samples = _video_latent(latent, "LTXVAddGuide")
        mask = noise_mask_of(latent)
        _, _, length, h, w = samples.shape
        if h % factor or w % factor:
            raise ValueError(f"LTXVAddGuide: the latent's spatial size {w}x{h} must be divisible by the IC-LoRA's "
                             f"reference_downscale_factor {factor}")
        _, count = keyframe_count(positive)
        kept = (image.shape[0] - 1) // SCALE[0] * SCALE[0] + 1
        start = frame_idx if frame_idx >= 0 else max((length - count - 1) * SCALE[0] + 1 + frame_idx, 0)
        causal = start == 0 or kept == 1
        if not causal:
            image = torch.cat([image[:1], image], dim=0)
        image = image[:(image.shape[0] - 1) // SCALE[0] * SCALE[0] + 1]
        pixels = _resize(image, w * SCALE[2] // factor, h * SCALE[1] // factor, "center")
        t = encode_frames(self.ctx, vae, pixels, "LTXVAddGuide")
        frames = pixels.shape[0]
        if not causal:
            t, frames = t[:, :, 1:], frames - 1
        if frame_idx < 0:
            frame_idx = max((length - count - 1) * SCALE[0] + 1 + frame_idx, 0)
        if frames > 1 and frame_idx != 0:
            frame_idx = (frame_idx - 1) // SCALE[0] * SCALE[0] + 1
        latent_idx = (frame_idx + SCALE[0] - 1) // SCALE[0]
        if latent_idx + t.shape[2] > length:
            raise ValueError(f"LTXVAddGuide: the guide ({t.shape[2]} latent frames at latent frame {latent_idx}) runs "
                             f"past the latent's {length} frames")
        guide, guide_mask = dilate(t.expand(samples.shape[0], -1, -1, -1, -1), factor)
        keyframes, _ = keyframe_count(positive)
        coords = widen_coords(keyframe_coords(guide, frame_idx, frames), factor,
                              SCALE[1:])
        coords = coords if keyframes is None else torch.cat([keyframes, coords], dim=2)
        positive = set_values(positive, {"keyframe_idxs": coords})
        negative = set_values(negative, {"keyframe_idxs": coords})
        mask = mask.expand(-1, -1, -1, h, w) if mask.shape[3] == 1 or mask.shape[4] == 1 else mask
        mask = torch.cat([mask, guide_mask - min(strength, 1.0)], dim=2)
        return positive, negative, {**latent, "samples": torch.cat([samples, guide], dim=2), "noise_mask": mask}


class LTXVCropGuides(Node):
    """Removes the latent frames LTXVAddGuide appended (and the conditionings' ``keyframe_idxs``)."""

    category = "conditioning/video_models"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    latent = Input(LATENT)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive, negative, latent: dict) -> tuple:
        samples = _video_latent(latent, "LTXVCropGuides").clone()
        mask = noise_mask_of(latent)
        _, count = keyframe_count(positive)
        if count == 0:
            return positive, negative, {**latent, "samples": samples, "noise_mask": mask}
        values = {"keyframe_idxs": None}
        return (set_values(positive, values), set_values(negative, values),
                {**latent, "samples": samples[:, :, :-count], "noise_mask": mask[:, :, :-count]})


def h264_round_trip(image: torch.Tensor, crf: int) -> torch.Tensor:
    """One frame ``[H, W, 3]`` through an H.264 encode (``crf``) and decode (even sizes), as ComfyUI's
    ``preprocess``."""
    import av
    import numpy as np

    if crf == 0:
        return image
    array = (image[:(image.shape[0] // 2) * 2, :(image.shape[1] // 2) * 2, :3] * 255.0).byte().cpu().numpy()
    buf = BytesIO()
    container = av.open(buf, "w", format="mp4")
    try:
        stream = container.add_stream("libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"})
        stream.height, stream.width = array.shape[0], array.shape[1]
        frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    finally:
        container.close()
    with av.open(BytesIO(buf.getvalue())) as src:
        out = next(src.decode(video=0)).to_ndarray(format="rgb24")
    return torch.tensor(np.ascontiguousarray(out), dtype=image.dtype) / 255.0


class LTXVPreprocess(Node):
    """Each image through an H.264 encode/decode at ``img_compression`` (CRF; 0: unchanged)."""

    category = "image"
    image = Input(IMAGE)
    img_compression = Input(INT, default=35, min=0, max=100, tooltip="Amount of compression to apply on image.")
    outputs = (Output(IMAGE, "output_image"),)

    def execute(self, image: torch.Tensor, img_compression: int) -> tuple:
        return (torch.stack([h264_round_trip(image[i], img_compression) for i in range(image.shape[0])]),)


# -- latent upscale models ------------------------------------------------------------------------------------


def upsampler_config(sd: dict) -> dict:
    from nodegraph_nodes.dit.ltx2 import _count

    try:
        conv = sd["initial_conv.weight"]
        up = sd["upsampler.conv.weight"]
    except KeyError as exc:
        raise ModelFileError(f"not an LTX latent upscale model (no {exc.args[0]})") from None
    return {"in_channels": int(conv.shape[1]), "mid_channels": int(conv.shape[0]),
            "num_blocks_per_stage": _count(sd, r"res_blocks\.(\d+)\."), "dims": conv.ndim - 2,
            "spatial_upsample": True, "temporal_upsample": up.ndim == 5 and "upsampler.blur_down.kernel" not in sd,
            "rational_spatial_scale": 2.0}


class LatentUpscaleModelLoader(Node):
    """An LTX latent upscale model (models/latent_upscale_models; diffusers' ``LTX2LatentUpsamplerModel``)."""

    category = "loaders"
    display_name = "Load Latent Upscale Model"
    model_name = Input(COMBO, choices=lambda paths: list_model_files(paths, "latent_upscale_models"))
    outputs = (Output(LATENT_UPSCALE_MODEL),)

    @classmethod
    def fingerprint(cls, paths: Paths, model_name: str | None = None, **_: Any) -> Any:
        from nodegraph_nodes.diffusion.loaders import _fingerprint

        return _fingerprint(paths, "latent_upscale_models", model_name)

    def execute(self, model_name: str) -> tuple:
        from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

        from nodegraph_nodes.diffusion.checkpoint import _instantiate
        from nodegraph_nodes.diffusion.components import _manager_key

        path = resolve_model(self.ctx.paths, "latent_upscale_models", model_name)
        manager = self.ctx.service("models")

        def loader():
            sd = read_state_dict(path, allow_pickle=manager.allow_pickle)
            return _instantiate(LTX2LatentUpsamplerModel, upsampler_config(sd), sd, torch.float32,
                                "LTX latent upscale model").eval()

        return (manager.load(_manager_key(path, "ltx_upsampler", torch.float32), loader),)


class LTXVLatentUpsampler(Node):
    """The video latent upscaled (×2 in height and width) by the latent upscale model, on the VAE's
    un-normalized latent (the VAE's per-channel statistics undone before, redone after)."""

    category = "latent/video"
    samples = Input(LATENT)
    upscale_model = Input(LATENT_UPSCALE_MODEL)
    vae = Input(VAE)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, upscale_model, vae) -> tuple:
        from nodegraph_nodes.dit.ltx2 import LtxVideoVae

        latent = _video_latent(samples, "LTXVLatentUpsampler")
        manager = self.ctx.service("models")
        device = self.ctx.device
        with manager.use(vae.handle, device) as vmod, manager.use(upscale_model, device) as up, torch.inference_mode():
            if not isinstance(vmod, LtxVideoVae):
                raise ValueError(f"LTXVLatentUpsampler.vae: the LTX video VAE is needed; this is {type(vmod).__name__}")
            mean = vmod.vae.latents_mean.view(1, -1, 1, 1, 1).float().to(device)
            std = vmod.vae.latents_std.view(1, -1, 1, 1, 1).float().to(device)
            scale = float(vmod.vae.config.scaling_factor)
            x = latent.float().to(device) * std / scale + mean
            dtype = next(up.parameters()).dtype
            y = up(x.to(dtype)).float()
            out = ((y - mean) * scale / std).cpu()
        result = {k: v for k, v in samples.items() if k != "noise_mask"}
        result["samples"] = out
        return (result,)
