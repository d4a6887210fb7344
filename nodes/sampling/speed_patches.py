"""Speed patches on the network (ComfyUI's nodes): ``TorchCompileModel`` and ``ModelAttentionBackend``.

* **TorchCompileModel**: the network's ``forward`` runs through ``torch.compile`` (``inductor`` or
  ``cudagraphs``) for the runs of the patched MODEL. The compiled function is made once per patch and
  network class and kept, so later runs reuse dynamo's compiled graphs (a new latent size recompiles);
  the module's own ``forward`` is back after each run.
* **ModelAttentionBackend**: every network call runs under ``torch.nn.attention.sdpa_kernel`` with the
  chosen scaled-dot-product backend. ``pytorch attention`` (ComfyUI's default) leaves the choice to
  torch; ``comfy kitchen attention`` (ComfyUI's INT8 kernels, which nodegraph does not have) falls back
  to PyTorch attention with a logged warning, as ComfyUI does where they are not installed — workflows
  saved with it keep working. The other choices are nodegraph's: they pin one of torch's SDPA kernels
  (math, flash, memory-efficient, cuDNN); such a kernel that cannot run on the device or for these
  inputs is an error naming the node (no silent fallback).
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from nodegraph.node import COMBO, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun, RunnerProxy

log = logging.getLogger(__name__)
KITCHEN = "comfy kitchen attention"


@dataclass(eq=False)
class TorchCompilePatch(ModelPatch):
    """``backend``: a ``torch.compile`` backend name (the node offers inductor and cudagraphs; the tests
    use dynamo's cheap ``eager``)."""

    key = "torch.compile"
    backend: str = "inductor"
    compiled: dict = field(default_factory=dict, repr=False)

    def compiled_forward(self, network: torch.nn.Module):
        cls = type(network)
        if cls not in self.compiled:
            self.compiled[cls] = torch.compile(cls.forward, backend=self.backend)
        return self.compiled[cls]

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        network = run.network
        had_own = "forward" in vars(network)
        previous = vars(network).get("forward")
        network.forward = functools.partial(self.compiled_forward(network), network)
        try:
            yield
        finally:
            if had_own:
                network.forward = previous
            else:
                del network.forward


class TorchCompileModel(Node):
    """Compiles the model's network with torch.compile for its sampling runs (the first run pays the
    compile time)."""

    category = "_for_testing"
    experimental = True
    model = Input(MODEL)
    backend = Input(COMBO, choices=["inductor", "cudagraphs"])
    outputs = (Output(MODEL),)

    def execute(self, model, backend: str) -> tuple:
        model = require_sampling_model(model, "TorchCompileModel.model")
        patch = TorchCompilePatch(backend)
        return (model.with_sampling_patches(model.sampling_patches.with_model_patch(patch)),)


# -- attention backend ---------------------------------------------------------------------------------

def _sdpa_backends() -> dict[str, object]:
    from torch.nn.attention import SDPBackend

    return {"pytorch attention": None, KITCHEN: None, "pytorch math attention": SDPBackend.MATH,
            "pytorch flash attention": SDPBackend.FLASH_ATTENTION,
            "pytorch memory efficient attention": SDPBackend.EFFICIENT_ATTENTION,
            "pytorch cudnn attention": SDPBackend.CUDNN_ATTENTION}


ATTENTION_CHOICES = list(_sdpa_backends())


class _SdpaRunner(RunnerProxy):
    def __init__(self, inner, choice: str, backend):
        super().__init__(inner)
        self.choice = choice
        self.backend = backend

    def __call__(self, x_in, timestep, parts):
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self.backend):
            try:
                return self.inner(x_in, timestep, parts)
            except RuntimeError as e:
                if "No available kernel" not in str(e) and "No viable backend" not in str(e):
                    raise
                raise RuntimeError(f"ModelAttentionBackend.attention: {self.choice!r} cannot run on "
                                   f"{self.inner.device} for this model's attention; choose 'pytorch attention'") from e


@dataclass(eq=False)
class AttentionBackendPatch(ModelPatch):
    key = "attention_backend"
    choice: str = "pytorch attention"

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        backend = _sdpa_backends()[self.choice]
        if self.choice == KITCHEN:
            log.warning("ModelAttentionBackend: %r is not available in nodegraph; using PyTorch attention", KITCHEN)
        if backend is not None:
            run.runner = _SdpaRunner(run.runner, self.choice, backend)
        yield


class ModelAttentionBackend(Node):
    """Selects the dense attention backend for the model's attention: a copy of the model whose sampling
    runs use it. 'pytorch attention' lets torch choose its scaled-dot-product kernel; 'comfy kitchen
    attention' is not available here and falls back to PyTorch attention (as in ComfyUI); the
    'pytorch … attention' choices pin one of torch's kernels (an error where it cannot run)."""

    display_name = "Model Attention Backend"
    category = "advanced/model"
    model = Input(MODEL, tooltip="The model to patch.")
    attention = Input(COMBO, choices=ATTENTION_CHOICES, default="pytorch attention",
                      tooltip="The dense attention backend to apply.")
    outputs = (Output(MODEL),)

    def execute(self, model, attention: str) -> tuple:
        model = require_sampling_model(model, "ModelAttentionBackend.model")
        patch = AttentionBackendPatch(attention)
        return (model.with_sampling_patches(model.sampling_patches.with_model_patch(patch)),)
