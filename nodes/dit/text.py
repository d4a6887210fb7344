"""The flow families' CLIP value and how it encodes prompts (ComfyUI's SD3 and Flux recipes).

A :class:`FlowClip` holds up to three text encoders: CLIP-L, CLIP-G (each a
:class:`~nodegraph_nodes.diffusion.components.TextEncoder`, encoded with the SD recipe of
:mod:`nodegraph_nodes.diffusion.text_encode`: weights, 77-token windows, embeddings) and T5-XXL
(:class:`T5Encoder`).

* **SD3 / SD3.5**: CLIP-L and CLIP-G at their penultimate layer (no final norm), concatenated on the
  channel axis (the side with fewer 77-token windows padded with empty-prompt windows), zero-padded to the T5 width, then T5's states appended on the
  token axis; pooled = CLIP-L's unprojected pooled output ++ CLIP-G's projected one. T5 gets at least
  77 tokens. A missing encoder contributes zeros (ComfyUI: 768 / 1280 wide pooled parts).
* **Flux.1**: the conditioning is T5's states (at least 256 tokens), pooled = CLIP-L's unprojected
  pooled output; CLIPTextEncodeFlux adds ``guidance``.
* **Chroma** (``family="chroma"``): T5's states only, no padding (the prompt's tokens and ``</s>``).

T5 tokens: the prompt's weighted segments tokenized without special tokens, the end token (``</s>``)
appended, padded with the pad token to the minimum length; one sequence however long (no windows).
Weights ≠ 1 move the states away from the empty prompt's, as for CLIP.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.components import TextEncoder
from nodegraph_nodes.diffusion.prompt_weights import parse_prompt_weights

#: ComfyUI's fixed widths for a missing encoder's zeros
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 768, 1280, 4096
T5_MIN_LENGTH = {"sd3": 77, "flux": 256, "chroma": 1}  # Chroma: no padding (ComfyUI's PixArt T5)


@dataclass(frozen=True, eq=False)
class T5Encoder:
    """A T5 encoder (transformers ``T5EncoderModel``) and its tokenizer."""

    handle: Any
    tokenizer: Any

    @property
    def width(self) -> int:
        return int(self.handle.get().config.d_model)


@dataclass(frozen=True, eq=False)
class FlowClip(ManagerOwned):
    """CLIP for SD3 (``family="sd3"``) or Flux.1 (``"flux"``)."""

    family: str
    clip_l: TextEncoder | None = None
    clip_g: TextEncoder | None = None
    t5: T5Encoder | None = None
    embeddings_dir: Path | None = None
    layer_override: int | None = None
    #: ``(index into encoders, LoraPatch)``: LoRA deltas on the CLIP encoders (LoraLoader)
    patches: tuple = ()
    #: T5TokenizerOptions: pad tokens always appended after ``</s>``, and the minimum length (replacing
    #: the family's: SD3 77, Flux 256, Chroma 1); ``None``: not set
    t5_min_padding: int | None = None
    t5_min_length: int | None = None

    def with_patch(self, index: int, patch) -> "FlowClip":
        return dataclasses.replace(self, patches=self.patches + ((index, patch),))

    @property
    def encoders(self) -> tuple:
        """The CLIP encoders."""
        return tuple(e for e in (self.clip_l, self.clip_g) if e is not None)

    def with_layer(self, layer: int) -> "FlowClip":
        return dataclasses.replace(self, layer_override=layer)

    def describe(self) -> str:
        have = [n for n, e in (("clip_l", self.clip_l), ("clip_g", self.clip_g), ("t5xxl", self.t5)) if e is not None]
        return f"{self.family} text encoders ({', '.join(have) or 'none'})"

    # -- encoding -------------------------------------------------------------------------------

    def encode_text(self, ctx, text: str) -> list:
        """CLIPTextEncode: the same prompt for every encoder."""
        return self.encode_parts(ctx, text, text, text)

    def encode_parts(self, ctx, clip_l: str | None, clip_g: str | None, t5xxl: str | None,
                     extras: dict | None = None) -> list:
        """CONDITIONING for separate prompts per encoder (``None``: that encoder is left out)."""
        if self.family == "flux":
            cond, pooled = self._encode_flux(ctx, clip_l, t5xxl)
        elif self.family == "chroma":  # T5 only, no pooled output (nodegraph_nodes.dit.chroma)
            if self.t5 is None:
                raise ValueError("Chroma needs a T5-XXL text encoder (CLIPLoader type chroma)")
            return [[self._t5(ctx, t5xxl or ""), dict(extras or {})]]
        else:
            cond, pooled = self._encode_sd3(ctx, clip_l, clip_g, t5xxl)
        return [[cond, {"pooled_output": pooled, **(extras or {})}]]

    def _clip(self, ctx, enc: TextEncoder, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        from nodegraph_nodes.diffusion.text_encode import encode_with_encoder

        from nodegraph_nodes.diffusion.lora import patched

        manager = ctx.service("models")
        layer = self.layer_override if self.layer_override is not None else enc.layer
        index = self.encoders.index(enc)
        with manager.use(enc.handle, ctx.device) as module, \
                patched(module, [p for i, p in self.patches if i == index]):
            z, pooled = encode_with_encoder(enc, module, text, layer, ctx.device, self.embeddings_dir,
                                            manager.allow_pickle)
        return z.cpu(), (pooled.cpu() if pooled is not None else None)

    def _t5(self, ctx, text: str) -> torch.Tensor:
        manager = ctx.service("models")
        with manager.use(self.t5.handle, ctx.device) as module:
            length = T5_MIN_LENGTH[self.family] if self.t5_min_length is None else self.t5_min_length
            return encode_t5(module, self.t5.tokenizer, text, length, ctx.device, self.t5_min_padding or 0).cpu()

    def _encode_sd3(self, ctx, text_l, text_g, text_t5) -> tuple[torch.Tensor, torch.Tensor]:
        l_out = g_out = None
        width_l = self.clip_l.handle.get().config.hidden_size if self.clip_l is not None else CLIP_L_WIDTH
        width_g = self.clip_g.handle.get().config.projection_dim if self.clip_g is not None else CLIP_G_WIDTH
        l_pooled, g_pooled = torch.zeros(1, width_l), torch.zeros(1, width_g)
        if self.clip_l is not None and text_l is not None:
            l_out, l_pooled = self._clip(ctx, self.clip_l, text_l)
        if self.clip_g is not None and text_g is not None:
            g_out, g_pooled = self._clip(ctx, self.clip_g, text_g)
        if l_out is not None and g_out is not None and l_out.shape[1] != g_out.shape[1]:
            # ComfyUI pads the side with fewer 77-token windows with windows of the empty prompt
            if l_out.shape[1] < g_out.shape[1]:
                l_out = self._pad_windows(ctx, self.clip_l, l_out, g_out.shape[1])
            else:
                g_out = self._pad_windows(ctx, self.clip_g, g_out, l_out.shape[1])
        t5_width = self.t5.width if self.t5 is not None else T5_WIDTH
        lg = None
        if l_out is not None and g_out is not None:
            cut = min(l_out.shape[1], g_out.shape[1])
            lg = torch.cat([l_out[:, :cut], g_out[:, :cut]], dim=-1)
        elif g_out is not None:
            lg = torch.nn.functional.pad(g_out, (width_l, 0))
        elif l_out is not None:
            lg = l_out
        pooled = None
        if lg is not None:
            if lg.shape[-1] > t5_width:
                raise ValueError(f"the CLIP states are {lg.shape[-1]} wide, more than the T5 width {t5_width}")
            lg = torch.nn.functional.pad(lg, (0, t5_width - lg.shape[-1]))
            pooled = torch.cat([l_pooled, g_pooled], dim=-1)
        out = lg
        if self.t5 is not None and text_t5 is not None:
            t5_out = self._t5(ctx, text_t5)
            out = t5_out if lg is None else torch.cat([lg, t5_out], dim=-2)
        if out is None:
            out = torch.zeros(1, 77, t5_width)
        if pooled is None:
            pooled = torch.zeros(1, width_l + width_g)
        return out, pooled

    def _pad_windows(self, ctx, enc: TextEncoder, states: torch.Tensor, tokens: int) -> torch.Tensor:
        empty, _ = self._clip(ctx, enc, "")
        while states.shape[1] < tokens:
            states = torch.cat([states, empty], dim=1)
        return states

    def _encode_flux(self, ctx, text_l, text_t5) -> tuple[torch.Tensor, torch.Tensor]:
        if self.t5 is None or self.clip_l is None:
            raise ValueError(f"Flux needs CLIP-L and T5-XXL text encoders; this CLIP has {self.describe()} "
                             "(DualCLIPLoader type flux: clip_l and t5xxl)")
        _, pooled = self._clip(ctx, self.clip_l, text_l or "")
        return self._t5(ctx, text_t5 or ""), pooled


def masked_states(ctx, handle, tok) -> torch.Tensor:
    """The last hidden states (float, on the CPU) of the encoder ``handle`` for the tokenizer output ``tok``
    (``input_ids``, ``attention_mask``), the padded positions zeroed (Wan's UMT5, Stable Audio's T5-base)."""
    manager = ctx.service("models")
    with manager.use(handle, ctx.device) as module, torch.inference_mode():
        ids, mask = tok["input_ids"].to(ctx.device), tok["attention_mask"].to(ctx.device)
        hidden = module(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return (hidden * mask[..., None].to(hidden.dtype)).cpu()


def t5_tokens(tokenizer, text: str, min_length: int, min_padding: int = 0) -> list[list[tuple[int, float]]]:
    """``(id, weight)`` pairs of one T5 sequence: segments, end token, ``min_padding`` pad tokens, padding
    to ``min_length``."""
    pairs: list[tuple[int, float]] = []
    for segment, weight in parse_prompt_weights(text):
        if not segment.strip():
            continue
        ids = tokenizer(segment, add_special_tokens=False)["input_ids"]
        pairs.extend((int(t), weight) for t in ids)
    pairs.append((int(tokenizer.eos_token_id), 1.0))
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    pairs.extend([(pad, 1.0)] * min_padding)
    pairs.extend([(pad, 1.0)] * (min_length - len(pairs)))
    return pairs


def encode_t5(module, tokenizer, text: str, min_length: int, device: str, min_padding: int = 0) -> torch.Tensor:
    """T5 states ``[1, tokens, d_model]`` (float32) with ComfyUI's weighting."""
    pairs = t5_tokens(tokenizer, text, min_length, min_padding)
    ids = torch.tensor([[t for t, _ in pairs]], device=device)
    weights = torch.tensor([w for _, w in pairs])
    with torch.inference_mode():
        if bool((weights != 1.0).any()):
            empty = t5_tokens(tokenizer, "", len(pairs))
            ids = torch.cat([ids, torch.tensor([[t for t, _ in empty]], device=device)])
        hidden = module(input_ids=ids)[0].float()
        z = hidden[0:1].clone()
        if hidden.shape[0] > 1:
            changed = weights != 1.0
            w = weights[changed].to(z.device, z.dtype)[:, None]
            z[0, changed] = (z[0, changed] - hidden[1, changed]) * w + hidden[1, changed]
    return z
