"""Step caching (ComfyUI's ``EasyCache`` and ``LazyCache``): skip a network evaluation when its input has
changed little since the last computed step, and reuse that step's residual (output − input).

How a step is judged (the same for both): from the last two computed steps the cache learns ``k``, the
ratio of the output's mean absolute change to the input's (on an 8× subsampled grid). At a new step the
input's change since the last computed step, times ``k``, over the last output's mean magnitude, is the
*estimated* relative output change; these estimates add up over skipped steps, and while the sum stays
under ``reuse_threshold`` the step is skipped: the output is the input plus the cached residual. A
computed step resets the sum. Only steps with ``sigma`` at or below ``start_percent``'s sigma are judged;
from ``end_percent``'s sigma on, every step is computed (and the cache left alone).

* **EasyCache** wraps the *network* call (the runner: scaled model input → raw output). Each
  conditioning entry (its rows of the batch) keeps its own residual; the first entry of the first judged
  call decides for the whole step, and the other entries' calls in that step follow it.
* **LazyCache** wraps the guider's whole *prediction* (noisy latent → guided denoised latent), one
  residual for everything — cheaper to reason about, works with any guider, usually a bit worse.

Each run starts with an empty cache. The patch keeps the last run's :class:`CacheStats` (``last_stats``)
and logs ``skipped N/M steps``; ``verbose`` also logs each decision.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from nodegraph.node import BOOLEAN, FLOAT, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling.model import Prediction, require_sampling_model
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun, RunnerProxy

log = logging.getLogger(__name__)

SUBSAMPLE = 8


@dataclass
class CacheStats:
    """One run's figures: steps in the schedule, steps skipped (the deciding entry's), network calls made
    and skipped."""

    name: str
    steps: int
    skipped: int = 0
    calls: int = 0
    skipped_calls: int = 0

    @property
    def speedup(self) -> float:
        return self.steps / (self.steps - self.skipped) if self.steps > self.skipped else 1.0


@dataclass
class ChangeTracker:
    """The skip decision (see the module docstring) for one run."""

    threshold: float
    start_sigma: float
    end_sigma: float
    name: str
    verbose: bool = False
    rate: float | None = None  # k: output change per input change
    cumulative: float = 0.0
    x_prev: torch.Tensor | None = None
    out_prev: torch.Tensor | None = None
    out_prev_norm: float | None = None

    def past_end(self, sigma: float) -> bool:
        return sigma <= self.end_sigma

    def judged(self, sigma: float) -> bool:
        return sigma <= self.start_sigma

    @staticmethod
    def sub(x: torch.Tensor) -> torch.Tensor:
        return x[..., ::SUBSAMPLE, ::SUBSAMPLE] if SUBSAMPLE > 1 else x

    def input_change(self, x: torch.Tensor) -> float | None:
        if self.x_prev is None or self.x_prev.shape != self.sub(x).shape:
            return None
        return float((self.sub(x) - self.x_prev).abs().mean())

    def should_skip(self, change: float | None) -> bool:
        """Adds this step's estimated output change; True while the sum stays under the threshold."""
        if change is None or self.out_prev_norm is None or self.rate is None or self.out_prev_norm == 0:
            return False
        self.cumulative += self.rate * change / self.out_prev_norm
        if self.cumulative < self.threshold:
            if self.verbose:
                log.info("%s: skipping step; cumulative change %.4f < %.4f", self.name, self.cumulative, self.threshold)
            return True
        if self.verbose:
            log.info("%s: computing step; cumulative change %.4f", self.name, self.cumulative)
        self.cumulative = 0.0
        return False

    def computed(self, x: torch.Tensor, out: torch.Tensor, change: float | None) -> None:
        """Learn from a computed step."""
        if self.out_prev is not None and change is not None and change > 0 and self.out_prev.shape == self.sub(out).shape:
            self.rate = float((self.sub(out) - self.out_prev).abs().mean()) / change
        self.x_prev = self.sub(x).clone()
        self.out_prev = self.sub(out).clone()
        self.out_prev_norm = float(out.abs().mean())


def _tracker(name: str, threshold: float, start: float, end: float, verbose: bool, run: PatchRun) -> ChangeTracker:
    ms = run.model_sampling
    return ChangeTracker(threshold, float(ms.percent_to_sigma(start)), float(ms.percent_to_sigma(end)), name, verbose)


def _part_key(part) -> tuple:
    return (id(part.extras), id(part.cond), part.negative)


class _EasyCacheRunner(RunnerProxy):
    """The network call with EasyCache's per-entry residuals."""

    def __init__(self, inner, tracker: ChangeTracker, stats: CacheStats):
        super().__init__(inner)
        self.tracker = tracker
        self.stats = stats
        self.sigma = float("inf")
        self.first_key: tuple | None = None
        self.skip_step = False
        self.residuals: dict[tuple, torch.Tensor] = {}

    def begin_step(self, sigma, in_range) -> None:
        self.sigma = float(sigma.reshape(-1)[0])
        self.skip_step = False
        super().begin_step(sigma, in_range)

    def _slices(self, parts) -> list[tuple[tuple, slice]]:
        out, start = [], 0
        for p in parts:
            out.append((_part_key(p), slice(start, start + p.rows)))
            start += p.rows
        return out

    def _reuse(self, x_in: torch.Tensor, slices) -> torch.Tensor | None:
        pieces = []
        for key, rows in slices:
            residual = self.residuals.get(key)
            if residual is None or residual.shape != x_in[rows].shape:
                return None
            pieces.append(x_in[rows] + residual.to(x_in.device, x_in.dtype))
        return torch.cat(pieces)

    def __call__(self, x_in, timestep, parts):
        tr, slices = self.tracker, self._slices(parts)
        self.stats.calls += 1
        if tr.past_end(self.sigma):
            return self.inner(x_in, timestep, parts)
        keys = [k for k, _ in slices]
        deciding = None
        change = None
        if tr.judged(self.sigma):
            if self.first_key is None:
                self.first_key = keys[0]
            if self.first_key in keys:
                deciding = slices[keys.index(self.first_key)][1]
            skip = self.skip_step
            if not skip and deciding is not None:
                change = tr.input_change(x_in[deciding])
                skip = self.skip_step = tr.should_skip(change)
            if skip:
                reused = self._reuse(x_in, slices)
                if reused is not None:
                    self.stats.skipped_calls += 1
                    if deciding is not None:
                        self.stats.skipped += 1
                    return reused
        out = self.inner(x_in, timestep, parts)
        for key, rows in slices:
            self.residuals[key] = (out[rows] - x_in[rows]).detach()
        if deciding is not None:
            tr.computed(x_in[deciding], out[deciding], change)
        return out


def _report(stats: CacheStats) -> None:
    log.info("%s - skipped %d/%d steps (%.2fx speedup)", stats.name, stats.skipped, stats.steps, stats.speedup)


@dataclass(eq=False)
class _StepCachePatch(ModelPatch):
    """The settings both caches take, and the last run's stats (kept and logged when the run ends)."""

    key = "step_cache"
    #: the name in logs and :class:`CacheStats`
    cache_name = ""
    reuse_threshold: float = 0.2
    start_percent: float = 0.15
    end_percent: float = 0.95
    verbose: bool = False
    last_stats: CacheStats | None = field(default=None, repr=False)

    def _start(self, run: PatchRun) -> tuple[CacheStats, ChangeTracker]:
        tracker = _tracker(self.cache_name, self.reuse_threshold, self.start_percent, self.end_percent,
                           self.verbose, run)
        return CacheStats(self.cache_name, max(len(run.sigmas) - 1, 0)), tracker

    def _finish(self, stats: CacheStats) -> None:
        self.last_stats = stats
        _report(stats)


@dataclass(eq=False)
class EasyCachePatch(_StepCachePatch):
    cache_name = "EasyCache"

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        stats, tracker = self._start(run)
        run.runner = _EasyCacheRunner(run.runner, tracker, stats)
        try:
            yield
        finally:
            self._finish(stats)


@dataclass(eq=False)
class LazyCachePatch(_StepCachePatch):
    cache_name = "LazyCache"

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        stats, tr = self._start(run)
        state: dict = {"residual": None, "uncond_residual": None}

        def wrapper(predict, x: torch.Tensor, sigma: torch.Tensor) -> Prediction:
            s = float(sigma.reshape(-1)[0])
            stats.calls += 1
            if tr.past_end(s):
                return predict(x, sigma)
            change = None
            if tr.judged(s) and state["residual"] is not None and state["residual"].shape == x.shape:
                change = tr.input_change(x)
                if tr.should_skip(change):
                    stats.skipped += 1
                    stats.skipped_calls += 1
                    uncond = state["uncond_residual"]
                    return Prediction(x + state["residual"], None if uncond is None else x + uncond)
            pred = predict(x, sigma)
            state["residual"] = pred.denoised - x
            state["uncond_residual"] = None if pred.uncond is None else pred.uncond - x
            tr.computed(x, pred.denoised, change)
            return pred

        run.predict_wrappers.append(wrapper)
        try:
            yield
        finally:
            self._finish(stats)


_THRESHOLD = dict(min=0.0, max=3.0, step=0.01)


class _StepCacheNode(Node):
    abstract = True
    category = "advanced/debug/model"
    experimental = True
    patch_class: type = EasyCachePatch
    outputs = (Output(MODEL),)

    def execute(self, model, reuse_threshold: float, start_percent: float, end_percent: float,
                verbose: bool = False) -> tuple:
        name = type(self).__name__
        model = require_sampling_model(model, f"{name}.model")
        if end_percent < start_percent:
            raise ValueError(f"{name}.end_percent: {end_percent} is before start_percent {start_percent}")
        patch = self.patch_class(reuse_threshold, start_percent, end_percent, verbose)
        patches = model.sampling_patches
        return (model.with_sampling_patches(patches.with_model_patch(patch)),)


class EasyCache(_StepCacheNode):
    """Native EasyCache implementation: skips network evaluations whose input changed less than the
    threshold since the last computed step and reuses that step's residual. Stricter than ComfyUI: an
    end_percent before start_percent is an error."""

    display_name = "EasyCache"
    patch_class = EasyCachePatch
    model = Input(MODEL, tooltip="The model to add EasyCache to.")
    reuse_threshold = Input(FLOAT, default=0.2, tooltip="The threshold for reusing cached steps.", **_THRESHOLD)
    start_percent = Input(FLOAT, default=0.15, min=0.0, max=1.0, step=0.01,
                          tooltip="The relative sampling step to begin use of EasyCache.")
    end_percent = Input(FLOAT, default=0.95, min=0.0, max=1.0, step=0.01,
                        tooltip="The relative sampling step to end use of EasyCache.")
    verbose = Input(BOOLEAN, default=False, tooltip="Whether to log verbose information.")
    outputs = (Output(MODEL, tooltip="The model with EasyCache."),)


class LazyCache(_StepCacheNode):
    """A homebrew version of EasyCache - even 'easier' version of EasyCache to implement. Overall works
    worse than EasyCache, but better in some rare cases AND universal compatibility with everything in
    ComfyUI. (Caches the guided prediction as a whole.)"""

    display_name = "LazyCache"
    patch_class = LazyCachePatch
    model = Input(MODEL, tooltip="The model to add LazyCache to.")
    reuse_threshold = Input(FLOAT, default=0.2, tooltip="The threshold for reusing cached steps.", **_THRESHOLD)
    start_percent = Input(FLOAT, default=0.15, min=0.0, max=1.0, step=0.01,
                          tooltip="The relative sampling step to begin use of LazyCache.")
    end_percent = Input(FLOAT, default=0.95, min=0.0, max=1.0, step=0.01,
                        tooltip="The relative sampling step to end use of LazyCache.")
    verbose = Input(BOOLEAN, default=False, tooltip="Whether to log verbose information.")
    outputs = (Output(MODEL, tooltip="The model with LazyCache."),)
