"""``FluxKVCache`` (ComfyUI's node, input ``model``, output ``MODEL``): Flux.2 Klein KV's reference-image
key/value caching, as a per-run model patch.

Facts (the ``FLUX.2-klein-9b-kv`` model as diffusers' ``Flux2KleinKVPipeline`` and
``Flux2Transformer2DModel``'s ``kv_cache_mode`` run it): the reference tokens (ReferenceLatent, placed at
time 10, 20, …) go *before* the image tokens; they are modulated with a fixed timestep 0 and attend only
to themselves, while the text and image tokens attend to everything. The first network call of a run
("extract") computes the reference tokens' keys and values (after RoPE) in every block and keeps them;
later calls ("cached") pass only text and image tokens and put the kept keys/values between them.

Because the reference tokens see neither the text, the image nor the timestep, their keys/values are the
same at every step: the cache is exact (a run that extracts at every step gives the same result; the
tests check it). It is *not* the plain Flux.2 reference path (full attention, reference tokens modulated
with the step's timestep): the KV checkpoint was trained for this attention pattern, so the MODEL with
this patch gives different images from the same MODEL without it.

Stricter than ComfyUI: the node refuses a MODEL that is not a Flux.2 transformer (naming the input). A
conditioning part without reference latents runs the plain path.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from nodegraph.node import Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.dit.flux2 import Flux2Model, Flux2Runner, image_ids, pad_text
from nodegraph_nodes.dit.formats import FLUX_DEFAULT_GUIDANCE
from nodegraph_nodes.dit.model import _rows
from nodegraph_nodes.sampling.model import CondPart, require_sampling_model
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun, RunnerProxy

WHERE = "FluxKVCache.model"


def _kv_processors(net) -> dict:
    """The network's attention processors with diffusers' KV-aware ones in every block (they behave as the
    plain ones when no cache arguments are given)."""
    from diffusers.models.transformers.transformer_flux2 import (Flux2KVAttnProcessor,
                                                                Flux2KVParallelSelfAttnProcessor)

    saved = {}
    for blocks, kind in ((net.transformer_blocks, Flux2KVAttnProcessor),
                         (net.single_transformer_blocks, Flux2KVParallelSelfAttnProcessor)):
        for block in blocks:
            saved[block.attn] = block.attn.processor
            if not isinstance(block.attn.processor, kind):
                block.attn.set_processor(kind())
    return saved


class _Entry:
    """One conditioning part's cache: what the reference K/V depend on (the reference latents, the row
    count, the guidance value of models with a guidance embedding) and the per-block K/V."""

    def __init__(self, references: list[torch.Tensor], rows: int, guidance: float | None, cache):
        self.references = references
        self.rows = rows
        self.guidance = guidance
        self.cache = cache

    def matches(self, references: list[torch.Tensor], rows: int, guidance: float | None) -> bool:
        return (rows == self.rows and guidance == self.guidance and len(references) == len(self.references)
                and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(references, self.references)))


class Flux2KVRunner:
    """A Flux.2 runner with reference K/V caching: per conditioning part (by its place in the call), the
    first call extracts, later calls with the same reference latents reuse (the text does not enter the
    reference K/V, so a negative prompt with the same references may reuse the positive's).
    ``reuse = False`` extracts at every call (the uncached computation of the same thing, for checks)."""

    reuse = True

    def __init__(self, base: Flux2Runner):
        self.base = base
        self.net = base.net
        self.device = base.device
        self.dtype = base.dtype
        self.entries: dict[int, _Entry] = {}

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def begin_step(self, sigma: torch.Tensor, in_range) -> None:
        self.base.begin_step(sigma, in_range)

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        b, c, h, w = x_in.shape
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(b)
        img_ids = image_ids(h, w).to(self.device)
        outs, row = [], 0
        for index, p in enumerate(parts):
            rows = slice(row, row + p.rows)
            raw = [r for r in (p.extras.get("reference_latents") or ())]
            if not raw:  # nothing to cache: the plain call
                outs.append(self.base(x_in[rows], timestep.reshape(-1).expand(b)[rows], [p]))
                row += p.rows
                continue
            refs, ref_ids = self.base._references(p)
            states = pad_text(_rows(p.cond.to(self.device, self.dtype), p.rows))
            length = states.shape[1]
            txt_ids = torch.stack([torch.zeros(length, dtype=torch.long)] * 3 + [torch.arange(length)], -1)
            txt_ids = txt_ids.to(self.device).unsqueeze(0).expand(p.rows, -1, -1)
            tokens = x[rows].flatten(2).transpose(1, 2)
            guidance, g_value = None, None
            if self.base.guidance_embeds:
                g_value = float(p.extras.get("guidance", FLUX_DEFAULT_GUIDANCE))
                guidance = torch.full((p.rows,), g_value, device=self.device, dtype=torch.float32)
            common = dict(encoder_hidden_states=states, timestep=t[rows], txt_ids=txt_ids, guidance=guidance,
                          return_dict=False)
            entry = self.entries.get(index)
            if self.reuse and entry is not None and entry.matches(raw, p.rows, g_value):
                out = self.net(hidden_states=tokens, img_ids=img_ids.unsqueeze(0).expand(p.rows, -1, -1),
                               kv_cache=entry.cache, kv_cache_mode="cached", **common)[0]
            else:
                ids = torch.cat([*[i.to(self.device) for i in ref_ids], img_ids])
                out, cache = self.net(hidden_states=torch.cat([*refs, tokens], dim=1),
                                      img_ids=ids.unsqueeze(0).expand(p.rows, -1, -1), kv_cache_mode="extract",
                                      num_ref_tokens=sum(r.shape[1] for r in refs), ref_fixed_timestep=0.0,
                                      **common)
                self.entries[index] = _Entry(raw, p.rows, g_value, cache)
            outs.append(out[:, :h * w].transpose(1, 2).reshape(p.rows, c, h, w))
            row += p.rows
        return torch.cat(outs)


class Flux2KVCachePatch(ModelPatch):
    """Per run: KV-aware attention processors on the network (the previous ones back afterwards) and the
    innermost Flux.2 runner replaced by a :class:`Flux2KVRunner` (the other patches' proxies stay in
    front of it)."""

    key = "flux_kv_cache"

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        holder, attr, inner = run, "runner", run.runner
        while isinstance(inner, RunnerProxy):
            holder, attr, inner = inner, "inner", inner.inner
        if not isinstance(inner, Flux2Runner):
            raise TypeError(f"{WHERE}: the KV cache works on Flux.2 transformers; this run's model runner is "
                            f"{type(inner).__name__}")
        saved = _kv_processors(inner.net)
        setattr(holder, attr, Flux2KVRunner(inner))
        try:
            yield
        finally:
            setattr(holder, attr, inner)
            for attn, processor in saved.items():
                attn.set_processor(processor)


class FluxKVCache(Node):
    """Caches the reference images' keys and values of a Flux.2 Klein KV model: the first step computes
    them (reference tokens attending only to themselves at timestep 0), later steps reuse them. Exact for
    that model's attention pattern, which differs from the plain reference path. Stricter than ComfyUI:
    the MODEL must be a Flux.2 transformer."""

    category = "advanced/model"
    model = Input(MODEL)
    outputs = (Output(MODEL),)

    def execute(self, model) -> tuple:
        model = require_sampling_model(model, WHERE)
        if not isinstance(model, Flux2Model):
            raise TypeError(f"{WHERE}: the KV cache works on Flux.2 (Klein KV) transformers; this MODEL is "
                            f"{getattr(model, 'family', type(model).__name__)}")
        return (model.with_sampling_patches(model.sampling_patches.with_model_patch(Flux2KVCachePatch())),)
