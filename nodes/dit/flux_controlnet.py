"""Flux.1 latent-input ControlNets in diffusers' ``FluxControlNetModel`` names (InstantX's, and AliMama's
inpainting ControlNets ``FLUX.1-dev-Controlnet-Inpainting-*``): reading the file (ControlNetLoader) and
evaluating the hints of ControlNetApplyAdvanced / ControlNetInpaintingAliMamaApply inside a Flux run.

Files: ``x_embedder``, ``context_embedder``, ``time_text_embed``, ``transformer_blocks.N``,
``single_transformer_blocks.N``, ``controlnet_blocks.N``, ``controlnet_single_blocks.N``,
``controlnet_x_embedder`` (optionally ``controlnet_mode_embedder``: a union ControlNet); the config is read
off the shapes. An inpainting ControlNet's ``controlnet_x_embedder`` is 4·17 = 68 wide (the mask as one more
latent channel, ComfyUI's ``concat_mask``); diffusers' class has no such width, so that layer is widened
before the weights are loaded. Not read: XLabs / Mistoline / pixel-hint (``input_hint_block``) ControlNets.

Per network call, as ComfyUI: the hint's packed latent (:mod:`.latent_control`, Flux's latent format); the
ControlNet runs on the image tokens (the latent without Fill channels or Kontext references), the text, the
pooled text, the timestep and (where it has the embedder) the guidance of the entry it rides on; its outputs
times ``strength``, summed over chained ControlNets active at this step, are added after the double and the
single blocks — block ``i`` gets output ``i // ceil(blocks / outputs)`` — to the image tokens only.
A union ControlNet needs its type (SetUnionControlNetType): ComfyUI then runs without a mode token, which
diffusers' class cannot, so nodegraph asks for one.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.convert import count_indices
from nodegraph_nodes.dit.latent_control import LatentControl, per_block

MARKERS = ("controlnet_x_embedder.weight", "x_embedder.weight", "context_embedder.weight",
           "controlnet_blocks.0.weight")
LATENT_CHANNELS = 16


def is_flux_controlnet(keys) -> bool:
    keys = set(keys)
    return all(m in keys for m in MARKERS) and "input_hint_block.conv_in.weight" not in keys


def controlnet_config(sd: dict) -> dict:
    """``FluxControlNetModel`` config from the weights' shapes (the x embedder's width kept apart)."""
    from nodegraph_nodes.dit.convert import FLUX_AXES

    try:
        x_in = sd["x_embedder.weight"]
        head = int(sd["transformer_blocks.0.attn.norm_q.weight"].shape[0])
        context = sd["context_embedder.weight"]
        pooled = sd["time_text_embed.text_embedder.linear_1.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Flux ControlNet weights lack {exc.args[0]}") from None
    inner = int(x_in.shape[0])
    modes = sd.get("controlnet_mode_embedder.weight")
    return {"patch_size": 1, "in_channels": int(x_in.shape[1]),
            "num_layers": count_indices(sd, r"transformer_blocks\.(\d+)\."),
            "num_single_layers": count_indices(sd, r"single_transformer_blocks\.(\d+)\."),
            "attention_head_dim": head, "num_attention_heads": inner // head,
            "joint_attention_dim": int(context.shape[1]), "pooled_projection_dim": int(pooled.shape[1]),
            "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in sd,
            "axes_dims_rope": list(FLUX_AXES), "num_mode": None if modes is None else int(modes.shape[0])}


def build_controlnet(sd: dict, dtype: torch.dtype, what: str):
    from accelerate import init_empty_weights
    from diffusers import FluxControlNetModel

    cfg = controlnet_config(sd)
    wide = int(sd["controlnet_x_embedder.weight"].shape[1])
    if wide not in (cfg["in_channels"], cfg["in_channels"] + 4):
        raise ModelFileError(f"{what}: controlnet_x_embedder takes {wide} channels; nodegraph reads Flux ControlNets "
                             f"of {cfg['in_channels']} (latent) or {cfg['in_channels'] + 4} (inpainting) channels")
    with init_empty_weights():
        module = FluxControlNetModel.from_config(cfg)
        if wide != cfg["in_channels"]:  # AliMama inpainting: the mask channel
            module.controlnet_x_embedder = torch.nn.Linear(wide, module.inner_dim)
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise ModelFileError(f"the {what} weights do not fit the model: {len(missing)} missing (e.g. {missing[0]})")
    bad = [k for k in own if tuple(own[k].shape) != tuple(sd[k].shape)]
    if bad:
        raise ModelFileError(f"the {what} weights do not fit the model: {bad[0]} has shape {tuple(sd[bad[0]].shape)}, "
                             f"expected {tuple(own[bad[0]].shape)}")
    module.load_state_dict({k: sd[k].to(dtype) for k in own}, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def concat_mask(module) -> bool:
    return int(module.controlnet_x_embedder.in_features) == int(module.config.in_channels) + 4


class FluxControl(LatentControl):
    """One run's evaluation of the ControlNet hints on a Flux model's conditioning entries."""

    family = "flux"

    def __init__(self, manager, device: str, stack: ExitStack, process_in: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(manager, device, stack, process_in, LATENT_CHANNELS)

    def residuals(self, hints: list, tokens: torch.Tensor, states: torch.Tensor, pooled: torch.Tensor,
                  t: torch.Tensor, guidance: torch.Tensor | None, img_ids: torch.Tensor, txt_ids: torch.Tensor,
                  latent_hw: tuple[int, int], refs: int, blocks: tuple[int, int]) -> dict:
        """``controlnet_block_samples`` / ``controlnet_single_block_samples`` for the batch (``hints``: each
        row's hint or None; ``tokens`` the packed latent's image tokens), or ``{}`` when none acts."""
        groups: dict[int, tuple[object, list[int]]] = {}
        for row, hint in enumerate(hints):
            if hint is not None:
                groups.setdefault(id(hint), (hint, []))[1].append(row)
        double: list[torch.Tensor] | None = None
        single: list[torch.Tensor] | None = None
        for hint, rows in groups.values():
            index = torch.tensor(rows, device=tokens.device)
            for h in self.active(hint):
                net = self.net(h)
                dtype = next(net.parameters()).dtype
                extra = (int(net.controlnet_x_embedder.in_features) - int(net.config.in_channels)) // 4
                kwargs = {}
                if net.union:
                    if not h.net.control_type:
                        raise ValueError(f"ControlNet {h.net.name} is a union ControlNet: choose its type with "
                                         "SetUnionControlNetType")
                    kwargs["controlnet_mode"] = torch.tensor([list(h.net.control_type)[:1]] * len(rows),
                                                             device=self.device)
                if net.config.guidance_embeds:
                    kwargs["guidance"] = (guidance.index_select(0, index) if guidance is not None
                                          else torch.full((len(rows),), 3.5, device=self.device))
                d, s = net(hidden_states=tokens.index_select(0, index).to(dtype),
                           controlnet_cond=self.cond(h, extra, *latent_hw, len(rows), dtype),
                           conditioning_scale=float(h.strength),
                           encoder_hidden_states=states.index_select(0, index).to(dtype),
                           pooled_projections=pooled.index_select(0, index).to(dtype),
                           timestep=t.index_select(0, index).to(dtype), img_ids=img_ids, txt_ids=txt_ids,
                           return_dict=False, **kwargs)
                if double is None:
                    shape = (tokens.shape[0], tokens.shape[1] + refs, d[0].shape[-1])
                    double = [torch.zeros(shape, device=tokens.device, dtype=tokens.dtype) for _ in range(blocks[0])]
                    single = [torch.zeros(shape, device=tokens.device, dtype=tokens.dtype) for _ in range(blocks[1])]
                n = tokens.shape[1]
                for full, r in zip(double, per_block(d, blocks[0])):
                    full[index, :n] += r.to(full.dtype)
                if s is not None:
                    for full, r in zip(single, per_block(s, blocks[1])):
                        full[index, :n] += r.to(full.dtype)
        if double is None:
            return {}
        return {"controlnet_block_samples": double, "controlnet_single_block_samples": single}
