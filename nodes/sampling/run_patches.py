"""Patches on a MODEL's network calls for the length of one sampling run (ComfyUI's model wrappers,
attention replacements and block patches).

A :class:`ModelPatch` rides in :attr:`SamplingPatches.model_patches
<nodegraph_nodes.sampling.model.SamplingPatches>` (one per ``key``; a later patch with the same key
replaces the earlier, as ComfyUI's ``add_wrapper_with_key``). When a run opens the model, each patch's
:meth:`ModelPatch.attach` context manager gets the run's :class:`PatchRun` and may

* put a :class:`RunnerProxy` in front of ``run.runner`` (EasyCache, ModelAttentionBackend);
* add a predict wrapper around the guider's prediction (LazyCache);
* install hooks or attention processors on ``run.network`` (FreeU, PAG, SAG, TorchCompileModel),
  removing them on exit.

The MODEL value itself never changes (the nodes return copies with one more patch); the network
module is shared with every other MODEL on the same weights, so a patch's hooks live exactly as long
as the run that attached them (the model manager hands the network to one run at a time).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager, Iterator

import torch

from nodegraph_nodes.sampling.model_sampling import ModelSampling

#: a predict wrapper: ``(predict, x, sigma) -> Prediction`` where ``predict(x, sigma)`` is the next one in
#: the chain (the guider's prediction at the end)
PredictWrapper = Callable[[Callable, torch.Tensor, torch.Tensor], Any]


@dataclass
class PatchRun:
    """One sampling run as the model patches see it.

    ``runner``: the (possibly proxied) :class:`~nodegraph_nodes.sampling.model.ModelRunner`;
    ``sigmas``: the run's schedule; ``options``: what the evaluation in progress asks of the patched
    network (PAG's ``{"perturbed_attention": True}``), set by :meth:`using`; ``parts``: the
    conditioning parts of the network call in progress (which batch rows are negative);
    ``predict_wrappers``: wrappers around the guider's prediction, outermost last; ``noise_hooks``:
    ``(noise, seed) -> noise`` applied in order to the initial noise before sampling (FreeNoise).
    """

    runner: Any
    sigmas: torch.Tensor
    model_sampling: ModelSampling
    options: dict = field(default_factory=dict)
    parts: list = field(default_factory=list)
    predict_wrappers: list[PredictWrapper] = field(default_factory=list)
    noise_hooks: list[Callable[[torch.Tensor, int], torch.Tensor]] = field(default_factory=list)

    @property
    def network(self) -> torch.nn.Module:
        return network_of(self.runner)

    @contextmanager
    def using(self, options: dict | None) -> Iterator[None]:
        """Network calls inside see ``options`` (merged over the current ones)."""
        if not options:
            yield
            return
        saved = self.options
        self.options = {**saved, **options}
        try:
            yield
        finally:
            self.options = saved

    def predict(self, predict: Callable, x: torch.Tensor, sigma: torch.Tensor):
        """The guider's prediction through the predict wrappers."""
        fn = predict
        for wrapper in self.predict_wrappers:
            fn = (lambda w, inner: (lambda xx, ss: w(inner, xx, ss)))(wrapper, fn)
        return fn(x, sigma)


def network_of(runner: Any) -> torch.nn.Module:
    """The ``torch.nn.Module`` a runner calls: its ``network`` attribute, or a UNet runner's ``unet``, or
    ``net``; proxies are looked through."""
    for name in ("network", "unet", "net"):
        module = getattr(runner, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise TypeError(f"this model's runner ({type(runner).__name__}) does not expose its network module, which "
                    "the model patch needs")


class RunnerProxy:
    """A runner in front of another: the same attributes, the same call unless a subclass changes it."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # device, dtype, can_batch, … of the runner behind
        return getattr(self.inner, name)

    def begin_step(self, sigma: torch.Tensor, in_range) -> None:
        begin = getattr(self.inner, "begin_step", None)
        if begin is not None:
            begin(sigma, in_range)

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list) -> torch.Tensor:
        return self.inner(x_in, timestep, parts)


class _PartsRecorder(RunnerProxy):
    """Keeps ``run.parts`` on the network call in progress (attention hooks read which rows are negative)."""

    def __init__(self, inner: Any, run: PatchRun):
        super().__init__(inner)
        self.run = run

    def __call__(self, x_in, timestep, parts):
        self.run.parts = list(parts)
        return self.inner(x_in, timestep, parts)


class ModelPatch:
    """Base of the per-run patches (see the module docstring)."""

    #: one patch per key on a MODEL
    key: ClassVar[str] = ""

    def attach(self, run: PatchRun) -> ContextManager[None]:
        raise NotImplementedError


def attach_patches(stack: ExitStack, patches: tuple, run: PatchRun) -> Any:
    """Attach ``patches`` in order for the run (undone when ``stack`` closes); the runner to call."""
    if patches:
        run.runner = _PartsRecorder(run.runner, run)
        for patch in patches:
            stack.enter_context(patch.attach(run))
    return run.runner


def with_patch(patches: tuple, patch: ModelPatch) -> tuple:
    """``patches`` with ``patch`` added, replacing one with the same key."""
    return tuple(p for p in patches if p.key != patch.key) + (patch,)


def is_unet(network: Any) -> bool:
    """Whether the network is UNet-shaped (diffusers ``UNet2DConditionModel``: down, mid and up blocks)."""
    return all(hasattr(network, name) for name in ("down_blocks", "mid_block", "up_blocks"))


def require_unet(network: Any, where: str) -> torch.nn.Module:
    if not is_unet(network) or network.mid_block is None:
        raise TypeError(f"{where}: works on UNet models (SD 1.x, SD 2.x, SDXL); this model's network is "
                        f"{type(network).__name__}")
    return network
