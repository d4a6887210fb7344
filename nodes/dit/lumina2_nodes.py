"""ComfyUI's Lumina 2 nodes.

* ``CLIPTextEncodeLumina2``: a system prompt (``superior`` / ``alignment``) and the user's prompt written
  as ``"{system prompt} <Prompt Start> {user prompt}"`` and encoded with the CLIP (Lumina 2's Gemma 2,
  :mod:`.lumina2`). Stricter than ComfyUI: a missing CLIP is an error naming the input.
* ``RenormCFG``: the guidance combination on the denoised predictions, ``uncond + scale · (cond − uncond)``
  while sigma < ``cfg_trunc`` (else the positive prediction alone), its norm (over all but the batch axis)
  capped at ``renorm_cfg`` × the positive prediction's (``renorm_cfg`` 0: no cap); channels past the
  model's latent channels are the positive's. Per sample (ComfyUI's comparison only works for a batch of 1).
"""

from __future__ import annotations

import torch

from nodegraph.node import COMBO, FLOAT, STRING, Input, Node, Output
from nodegraph.types import CLIP, CONDITIONING, MODEL

from nodegraph_nodes.dit.lumina2 import SYSTEM_PROMPTS


class CLIPTextEncodeLumina2(Node):
    """Encodes a system prompt and a user prompt for Lumina 2 (the system prompt's text is Lumina's)."""

    category = "conditioning"
    display_name = "CLIP Text Encode for Lumina2"
    system_prompt = Input(COMBO, choices=list(SYSTEM_PROMPTS))
    user_prompt = Input(STRING, multiline=True, dynamic_prompts=True)
    clip = Input(CLIP)
    outputs = (Output(CONDITIONING),)

    def execute(self, system_prompt: str, user_prompt: str, clip) -> tuple:
        if clip is None:
            raise ValueError("CLIPTextEncodeLumina2.clip: no CLIP (the checkpoint holds no text encoder)")
        return (clip.encode_text(self.ctx, f"{SYSTEM_PROMPTS[system_prompt]} <Prompt Start> {user_prompt}"),)


class _RenormCfg:
    def __init__(self, cfg_trunc: float, renorm_cfg: float, channels: int):
        self.cfg_trunc, self.renorm_cfg, self.channels = float(cfg_trunc), float(renorm_cfg), int(channels)

    def __call__(self, args: dict) -> torch.Tensor:
        cond, uncond, scale, x = args["cond_denoised"], args["uncond_denoised"], args["cond_scale"], args["input"]
        sigma = args["timestep"]
        c = self.channels
        cond_eps, uncond_eps, rest = cond[:, :c], uncond[:, :c], cond[:, c:]
        if float(sigma.reshape(-1)[0]) < self.cfg_trunc:
            half = uncond_eps + scale * (cond_eps - uncond_eps)
            if self.renorm_cfg > 0.0:
                dims = tuple(range(1, cond_eps.ndim))
                cap = torch.linalg.vector_norm(cond_eps, dim=dims, keepdim=True) * self.renorm_cfg
                norm = torch.linalg.vector_norm(half, dim=dims, keepdim=True)
                half = torch.where(norm >= cap, half * (cap / norm), half)
        else:
            half = cond_eps
        return x - torch.cat([half, rest], dim=1)


class RenormCFG(Node):
    """Lumina 2's renormalised CFG: caps the guided prediction's norm, and stops guiding below a sigma."""

    category = "advanced/model"
    model = Input(MODEL)
    cfg_trunc = Input(FLOAT, default=100.0, min=0.0, max=100.0, step=0.01)
    renorm_cfg = Input(FLOAT, default=1.0, min=0.0, max=100.0, step=0.01)
    outputs = (Output(MODEL),)

    def execute(self, model, cfg_trunc: float, renorm_cfg: float) -> tuple:
        from nodegraph_nodes.sampling.model import require_sampling_model

        model = require_sampling_model(model, "RenormCFG.model")
        fn = _RenormCfg(cfg_trunc, renorm_cfg, model.latent_channels)
        return (model.with_sampling_patches(model.sampling_patches.with_cfg_function(fn)),)
