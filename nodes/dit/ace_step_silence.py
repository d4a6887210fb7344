"""ACE-Step 1.5's silence latent when neither the DiT file nor a ``silence_latent.pt`` beside it has one: the
48 kHz Oobleck VAE in ``models/vae`` encodes a short stretch of digital silence, and the latent is built as
ComfyUI builds its own (a constant carried in its code): the encoding's first ``HEAD`` frames, then one frame
from the middle of the encoding repeated (away from the edges, the encoding of silence is the same every frame).
With ACE-Step 1.5's VAE this should give ComfyUI's constant up to its bf16 rounding; that is not checked here
(no released weights in the tests).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nodegraph_nodes.diffusion.files import ModelFileError

HEAD = 4
ENCODED_FRAMES = 32
FRAMES = 15000  # 10 minutes at 25 frames a second, as the release's silence_latent.pt


def find_ace_vae(models_dir: Path, manager, device: str):
    """The first 48 kHz Oobleck VAE (ACE-Step 1.5's) among ``models/vae``'s files, loaded, else ``None``."""
    from nodegraph_nodes.dit.audio_loading import load_vae

    folder = Path(models_dir) / "vae"
    for path in sorted(folder.rglob("*.safetensors")) if folder.is_dir() else ():
        try:
            vae = load_vae(path, manager, device)
        except ModelFileError:
            continue
        if vae is not None and vae.sample_rate == 48000:
            return vae
    return None


def silence_from_vae(ctx, vae) -> torch.Tensor:
    """``[1, FRAMES, 64]``: the VAE's encoding of silence (see the module docstring)."""
    manager = ctx.service("models")
    with manager.use(vae.handle, ctx.device) as module, torch.inference_mode():
        hop = 1
        for ratio in module.config.downsampling_ratios:
            hop *= int(ratio)
        zeros = torch.zeros(1, int(module.config.audio_channels), ENCODED_FRAMES * hop, device=ctx.device,
                            dtype=next(module.parameters()).dtype)
        latent = module.encode(zeros).latent_dist.mean.float().cpu()[0].T  # [frames, 64]
    silence = latent[ENCODED_FRAMES // 2].expand(FRAMES, -1).clone()
    silence[:HEAD] = latent[:HEAD]
    return silence[None]


def silence_for(ctx) -> torch.Tensor:
    """The silence latent from the ACE-Step VAE in ``models/vae``, or a clear error."""
    vae = find_ace_vae(Path(ctx.paths.models_dir), ctx.service("models"), ctx.device)
    if vae is None:
        raise ModelFileError("this ACE-Step 1.5 DiT file holds no silence latent, no silence_latent.pt lies beside "
                             "it, and models/vae has no ACE-Step 1.5 VAE (ace_1.5_vae.safetensors) to encode silence "
                             "with: add one of them")
    return silence_from_vae(ctx, vae)
