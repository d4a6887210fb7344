"""Model patches for sampling (ComfyUI's names): the ``ModelSampling*`` nodes replace a MODEL's
sampling (prediction type, noise schedule, flow shift) and RescaleCFG / CFGNorm / CFGZeroStar change
how classifier-free guidance combines the predictions. Each returns a patched copy; the weights stay
shared.
"""

from __future__ import annotations

import torch

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import require_sampling_model

MAX_RESOLUTION = 16384


def _patched(model, ms, where: str):
    return (require_sampling_model(model, where).with_model_sampling(ms),)


class ModelSamplingDiscrete(Node):
    """Sample as a DDPM-trained model with this prediction type (``lcm``: LCM's distilled 50-step table;
    ``zsnr``: zero terminal SNR)."""

    category = "advanced/model"
    model = Input(MODEL)
    sampling = Input(COMBO, choices=["eps", "v_prediction", "lcm", "x0", "img_to_img"])
    zsnr = Input(BOOLEAN, default=False)
    outputs = (Output(MODEL),)

    def execute(self, model, sampling: str, zsnr: bool) -> tuple:
        settings = msl.discrete_settings(getattr(model, "scheduler_config", None))
        return _patched(model, msl.discrete(sampling, zsnr=zsnr, **settings), "ModelSamplingDiscrete.model")


class ModelSamplingContinuousEDM(Node):
    """Sample with continuous EDM sigmas in [sigma_min, sigma_max]."""

    category = "advanced/model"
    model = Input(MODEL)
    sampling = Input(COMBO, choices=["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"])
    sigma_max = Input(FLOAT, default=120.0, min=0.0, max=1000.0, step=0.001, round=False)
    sigma_min = Input(FLOAT, default=0.002, min=0.0, max=1000.0, step=0.001, round=False)
    outputs = (Output(MODEL),)

    def execute(self, model, sampling: str, sigma_max: float, sigma_min: float) -> tuple:
        if sampling in ("edm_playground_v2.5", "cosmos_rflow"):
            raise ValueError(f"ModelSamplingContinuousEDM.sampling: {sampling!r} needs that model family's latent "
                             "format, which nodegraph does not load yet; use v_prediction, edm or eps")
        prediction, sigma_data = {"v_prediction": ("v_prediction", 1.0), "edm": ("edm", 0.5),
                                  "eps": ("eps", 1.0)}[sampling]
        return _patched(model, msl.continuous_edm(prediction, sigma_min, sigma_max, sigma_data),
                        "ModelSamplingContinuousEDM.model")


class ModelSamplingContinuousV(Node):
    """Sample a v-prediction model with continuous sigmas (time = atan(sigma) · 2/pi)."""

    category = "advanced/model"
    model = Input(MODEL)
    sampling = Input(COMBO, choices=["v_prediction"])
    sigma_max = Input(FLOAT, default=500.0, min=0.0, max=1000.0, step=0.001, round=False)
    sigma_min = Input(FLOAT, default=0.03, min=0.0, max=1000.0, step=0.001, round=False)
    outputs = (Output(MODEL),)

    def execute(self, model, sampling: str, sigma_max: float, sigma_min: float) -> tuple:
        return _patched(model, msl.continuous_v(sigma_min, sigma_max), "ModelSamplingContinuousV.model")


class ModelSamplingSD3(Node):
    """Flow matching with SD3's timestep shift (network time = sigma · 1000)."""

    category = "advanced/model"
    model = Input(MODEL)
    shift = Input(FLOAT, default=3.0, min=0.0, max=100.0, step=0.01)
    outputs = (Output(MODEL),)

    def execute(self, model, shift: float) -> tuple:
        return _patched(model, msl.sd3_flow(shift, 1000.0), "ModelSamplingSD3.model")


#: ModelSamplingAuraFlow's optional ``sampling`` choices, in today's ComfyUI order
AURA_SAMPLING = ["flow", "img_to_img_velocity"]


class ModelSamplingAuraFlow(Node):
    """Flow matching with a timestep shift (network time = sigma). The optional `sampling` is today's
    ComfyUI's: 'flow' (the default) is this; 'img_to_img_velocity' (Marigold v2's image-to-image velocity
    prediction) is not in nodegraph and is an error at run time naming the input."""

    category = "advanced/model"
    model = Input(MODEL)
    shift = Input(FLOAT, default=1.73, min=0.0, max=100.0, step=0.01)
    sampling = Input(COMBO, choices=AURA_SAMPLING, default="flow", optional=True)
    outputs = (Output(MODEL),)

    def execute(self, model, shift: float, sampling: str = "flow") -> tuple:
        if sampling != "flow":
            raise ValueError(f"ModelSamplingAuraFlow.sampling: {sampling!r} (Marigold v2's image-to-image "
                             "velocity sampling) is not supported by nodegraph; use 'flow'")
        return _patched(model, msl.sd3_flow(shift, 1.0), "ModelSamplingAuraFlow.model")


class ModelSamplingFlux(Node):
    """Flux's flow shift for an image size: ``base_shift`` at 256 latent patches, ``max_shift`` at 4096."""

    category = "advanced/model"
    model = Input(MODEL)
    max_shift = Input(FLOAT, default=1.15, min=0.0, max=100.0, step=0.01)
    base_shift = Input(FLOAT, default=0.5, min=0.0, max=100.0, step=0.01)
    width = Input(INT, default=1024, min=16, max=MAX_RESOLUTION, step=8)
    height = Input(INT, default=1024, min=16, max=MAX_RESOLUTION, step=8)
    outputs = (Output(MODEL),)

    def execute(self, model, max_shift: float, base_shift: float, width: int, height: int) -> tuple:
        shift = msl.flux_shift(width, height, base_shift, max_shift)
        return _patched(model, msl.flux_flow(shift), "ModelSamplingFlux.model")


# -- CFG patches -------------------------------------------------------------------------------------

class _RescaleCfg:
    """Rescale the guided prediction's spread to the positive one's (Lin et al. 2023), in v space."""

    def __init__(self, multiplier: float):
        self.multiplier = multiplier

    def __call__(self, args: dict) -> torch.Tensor:
        cond, uncond, scale = args["cond"], args["uncond"], args["cond_scale"]
        sigma = args["sigma"]
        sigma = sigma.view(sigma.shape[:1] + (1,) * (cond.ndim - 1))
        x_orig = args["input"]
        x = x_orig / (sigma * sigma + 1.0)
        cond = ((x - (x_orig - cond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
        uncond = ((x - (x_orig - uncond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
        x_cfg = uncond + scale * (cond - uncond)
        ro_pos = torch.std(cond, dim=tuple(range(1, cond.ndim)), keepdim=True)
        ro_cfg = torch.std(x_cfg, dim=tuple(range(1, cond.ndim)), keepdim=True)
        x_final = self.multiplier * (x_cfg * (ro_pos / ro_cfg)) + (1.0 - self.multiplier) * x_cfg
        return x_orig - (x - x_final * sigma / (sigma * sigma + 1.0) ** 0.5)


class RescaleCFG(Node):
    """Rescaled classifier-free guidance: keeps high cfg from over-saturating (v-prediction models)."""

    category = "advanced/model"
    model = Input(MODEL)
    multiplier = Input(FLOAT, default=0.7, min=0.0, max=1.0, step=0.01)
    outputs = (Output(MODEL),)

    def execute(self, model, multiplier: float) -> tuple:
        model = require_sampling_model(model, "RescaleCFG.model")
        return (model.with_sampling_patches(model.sampling_patches.with_cfg_function(_RescaleCfg(multiplier))),)


def _optimized_scale(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    pos = positive.reshape(positive.shape[0], -1)
    neg = negative.reshape(negative.shape[0], -1)
    st = torch.sum(pos * neg, dim=1, keepdim=True) / (torch.sum(neg ** 2, dim=1, keepdim=True) + 1e-8)
    return st.reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


def _cfg_zero_star(args: dict) -> torch.Tensor:
    """CFG-Zero* (Fan et al. 2025): scale the unconditional prediction by its projection on the conditional."""
    scale, x = args["cond_scale"], args["input"]
    cond_p, uncond_p = args["cond_denoised"], args["uncond_denoised"]
    alpha = _optimized_scale(x - cond_p, x - uncond_p)
    return args["denoised"] + uncond_p * (alpha - 1.0) + scale * uncond_p * (1.0 - alpha)


class CFGZeroStar(Node):
    """CFG-Zero*: guidance with an optimised scale for the unconditional prediction."""

    category = "advanced/guidance"
    model = Input(MODEL)
    outputs = (Output(MODEL, "patched_model"),)

    def execute(self, model) -> tuple:
        model = require_sampling_model(model, "CFGZeroStar.model")
        return (model.with_sampling_patches(model.sampling_patches.with_post_cfg(_cfg_zero_star)),)


class _CfgNorm:
    def __init__(self, strength: float):
        self.strength = strength

    def __call__(self, args: dict) -> torch.Tensor:
        cond_p, pred = args["cond_denoised"], args["denoised"]
        norm_cond = torch.norm(cond_p, dim=1, keepdim=True)
        norm_pred = torch.norm(pred, dim=1, keepdim=True)
        scale = (norm_cond / (norm_pred + 1e-8)).clamp(min=0.0, max=1.0)
        return pred * scale * self.strength


class CFGNorm(Node):
    """Caps the guided prediction's per-pixel norm at the positive prediction's, times ``strength``."""

    category = "advanced/guidance"
    experimental = True
    model = Input(MODEL)
    strength = Input(FLOAT, default=1.0, min=0.0, max=100.0, step=0.01)
    outputs = (Output(MODEL, "patched_model"),)

    def execute(self, model, strength: float) -> tuple:
        model = require_sampling_model(model, "CFGNorm.model")
        return (model.with_sampling_patches(model.sampling_patches.with_post_cfg(_CfgNorm(strength))),)


def _patch_norm(t: torch.Tensor, patch: int) -> torch.Tensor:
    """The L2 norm over the channels (dim 1) and each ``patch``×``patch`` block of the last two dims, spread
    back over the block (sides not a multiple of ``patch``: the last block holds the values there are)."""
    sq = (t.float() ** 2).sum(dim=1, keepdim=True)
    h, w = sq.shape[-2:]
    ph, pw = -h % patch, -w % patch
    if ph or pw:
        sq = torch.nn.functional.pad(sq, (0, pw, 0, ph))
    lead = sq.shape[:-2]
    hp, wp = (h + ph) // patch, (w + pw) // patch
    sums = sq.reshape(*lead, hp, patch, wp, patch).sum(dim=(-3, -1))
    sums = sums.repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)[..., :h, :w]
    return sums.sqrt()


class _VelocityNormRescale:
    """cfg_function: diffusers' QwenImagePipeline true CFG. With velocities ``v_c``, ``v_u`` and scale ``s``:
    ``c = v_u + s·(v_c − v_u)``, then ``c · ‖v_c‖ / ‖c‖`` per patch (no clamp). The sampling core's
    ``cond``/``uncond`` are the noise directions ``x − D``, which for a flow model are ``σ·v`` (``D = x − σ·v``):
    the combination is linear and the norm ratio is the same for ``σ·v`` as for ``v``, so the result is
    ``σ·v̂`` (the direction the core takes back to ``D̂ = x − σ·v̂``) and σ = 0 needs no division."""

    def __init__(self, patch: int):
        self.patch = patch

    def __call__(self, args: dict) -> torch.Tensor:
        ms = args.get("model_sampling")
        if ms is not None and not ms.is_flow:
            raise ValueError(f"CFGVelocityNormRescale.model: needs a flow (velocity) model; this model's "
                             f"sampling predicts {ms.prediction!r}")
        cond, uncond, scale = args["cond"], args["uncond"], args["cond_scale"]
        comb = uncond + scale * (cond - uncond)
        ratio = _patch_norm(cond, self.patch) / _patch_norm(comb, self.patch).clamp_min(torch.finfo(torch.float32).tiny)
        return comb * ratio.to(comb.dtype)


class CFGVelocityNormRescale(Node):
    """nodegraph's own node (not in ComfyUI): classifier-free guidance as diffusers' QwenImagePipeline and
    QwenImageEdit(Plus)Pipeline do it at true_cfg_scale > 1 — the guided velocity
    ``c = v_neg + cfg·(v_pos − v_neg)`` rescaled to the positive velocity's norm, per ``patch_size``×``patch_size``
    latent patch over all channels (Qwen-Image: 2, i.e. the 64 packed values of diffusers' token), without a
    clamp. Use it before KSampler (cfg > 1) to get diffusers' Qwen-Image results; ComfyUI's CFGNorm instead
    rescales the denoised image per pixel with a clamp and cannot reproduce them. Flow (velocity) models
    only: other models are an error at sampling time. Replaces the CFG combination (the last such patch,
    e.g. RescaleCFG, wins); post-CFG patches still apply after it."""

    category = "advanced/guidance"
    model = Input(MODEL)
    patch_size = Input(INT, default=2, min=1, max=16, step=1)
    outputs = (Output(MODEL, "patched_model"),)

    def execute(self, model, patch_size: int = 2) -> tuple:
        model = require_sampling_model(model, "CFGVelocityNormRescale.model")
        patches = model.sampling_patches.with_cfg_function(_VelocityNormRescale(int(patch_size)))
        return (model.with_sampling_patches(patches),)
