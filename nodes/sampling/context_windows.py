"""Context windows (ComfyUI's ``ContextWindowsManual`` and ``WanContextWindowsManual``): a model patch that
splits the sampled latent's frame axis into overlapping windows, runs the network on each window and
blends the windows' outputs per frame with the fuse method's weights.

Facts (ComfyUI's ``comfy/context_windows.py``; written here from its behaviour):

* windows are used only when the latent's ``dim`` axis is longer than ``context_length``;
* schedules ``standard_static`` (fixed windows every ``length - overlap`` frames, the last one moved back
  to end at the last frame), ``standard_uniform`` / ``looped_uniform`` (AnimateDiff's uniform windows,
  shifted per step by the ordered-halving sequence), ``batched`` (no overlap);
* fuse weights ``pyramid`` (1, 2, …, peak, …, 2, 1 over the window), ``relative`` (running average by
  each frame's closeness to the window centre), ``flat`` (1) and ``overlap-linear`` (linear ramps over the
  overlap at the inner edges); the fused output of a frame is the weighted sum over its windows divided by
  the weights' sum;
* conditioning tensors whose ``dim`` axis has the latent's length are sliced with the window;
  ``cond_retain_index_list`` puts the full tensor's frames at those window positions back (a concat
  start image at position 0 of every window); ``latent_retain_index_list`` does the same for the
  noisy latent itself;
* ``causal_window_fix``: a window that does not start at frame 0 gets the frame before it prepended (the
  "anchor", in the latent and the sliced conditioning) and that frame's output is dropped;
* ``freenoise``: before sampling, the initial noise of the frames past the first window is replaced by a
  seeded (the sampling seed) permutation of earlier frames, every ``length - overlap`` frames.

Network runners whose conditioning has tensors with another frame count read the window's global frame
indices (the anchor first) from the part extras' ``context_window`` entry (:class:`WindowIndices`).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from nodegraph.node import BOOLEAN, COMBO, INT, STRING, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun, RunnerProxy

SCHEDULES = ["standard_static", "standard_uniform", "looped_uniform", "batched"]
FUSE_METHODS = ["pyramid", "relative", "flat", "overlap-linear"]
MAX_RESOLUTION = 16384


@dataclass(frozen=True)
class ContextSettings:
    """One ContextWindowsManual configuration (lengths in latent frames along ``dim``)."""

    length: int
    overlap: int
    schedule: str = "standard_static"
    stride: int = 1
    closed_loop: bool = False
    fuse_method: str = "pyramid"
    dim: int = 2
    freenoise: bool = False
    cond_retain: tuple[int, ...] = ()
    latent_retain: tuple[int, ...] = ()
    causal_window_fix: bool = False


@dataclass(frozen=True)
class WindowIndices:
    """The global frame indices one network call sees: ``frames`` (the anchor first where there is one),
    of ``total`` frames; ``anchor``: whether ``frames[0]`` is a causal anchor whose output is dropped."""

    frames: tuple[int, ...]
    total: int
    anchor: bool = False


# -- schedules ------------------------------------------------------------------------------------------

def _ordered_halving(step: int) -> float:
    return int(f"{step:064b}"[::-1], 2) / (1 << 64)


def _static(n: int, s: ContextSettings, step: int) -> list[list[int]]:
    delta = s.length - s.overlap
    if delta <= 0:
        raise ValueError(f"ContextWindowsManual: context_overlap ({s.overlap}) must be below context_length "
                         f"({s.length})")
    windows = []
    for start in range(0, n, delta):
        if start + s.length >= n:
            start = n - s.length
            windows.append(list(range(start, start + s.length)))
            break
        windows.append(list(range(start, start + s.length)))
    return windows


def _batched(n: int, s: ContextSettings, step: int) -> list[list[int]]:
    return [list(range(a, min(a + s.length, n))) for a in range(0, n, s.length)]


def _uniform_raw(n: int, s: ContextSettings, step: int, closed: bool) -> list[list[int]]:
    import math

    stride = min(s.stride, int(math.ceil(math.log2(n / s.length))) + 1)
    half = _ordered_halving(step)
    windows = []
    for power in range(stride):
        cstep = 1 << power
        pad = int(round(n * half))
        stop = n + pad + (0 if closed else -s.overlap)
        for j in range(int(half * cstep) + pad, stop, s.length * cstep - s.overlap):
            windows.append([e % n for e in range(j, j + s.length * cstep, cstep)])
    return windows


def _looped(n: int, s: ContextSettings, step: int) -> list[list[int]]:
    return _uniform_raw(n, s, step, s.closed_loop)


def _rolls_at(window: list[int]) -> int:
    for i in range(1, len(window)):
        if window[i] < window[i - 1]:
            return i
    return -1


def _uniform(n: int, s: ContextSettings, step: int) -> list[list[int]]:
    windows = _uniform_raw(n, s, step, False)
    i = 0
    while i < len(windows):
        roll = _rolls_at(windows[i])
        if roll >= 0:
            roll_val = windows[i][roll]
            start = windows[i][0]
            shifted = [(v - start + n) % n for v in windows[i]]
            windows[i] = [v + n - shifted[-1] - 1 for v in shifted]
            if roll_val not in windows[(i + 1) % len(windows)]:
                windows.insert(i + 1, list(range(roll_val, roll_val + s.length)))
        i += 1
    unique: list[list[int]] = []
    for w in windows:
        if w not in unique:
            unique.append(w)
    return unique


_SCHEDULE_FUNCS = {"standard_static": _static, "standard_uniform": _uniform, "looped_uniform": _looped,
                   "batched": _batched}


def context_windows(n: int, s: ContextSettings, step: int = 0) -> list[list[int]]:
    """The frame index lists of ``n`` frames' windows at sampling step ``step``."""
    if n <= s.length and s.schedule != "looped_uniform" or n < s.length:
        return [list(range(n))]
    return _SCHEDULE_FUNCS[s.schedule](n, s, step)


# -- fuse weights ---------------------------------------------------------------------------------------

def pyramid_weights(length: int) -> list[float]:
    peak = (length + 1) // 2
    if length % 2 == 0:
        return [float(v) for v in list(range(1, peak + 1)) + list(range(peak, 0, -1))]
    return [float(v) for v in list(range(1, peak)) + [peak] + list(range(peak - 1, 0, -1))]


def fuse_weights(window: list[int], n: int, s: ContextSettings) -> torch.Tensor:
    length = len(window)
    if s.fuse_method == "flat":
        return torch.ones(length)
    if s.fuse_method == "overlap-linear":
        w = torch.ones(length)
        if min(window) > 0 and s.overlap > 0:
            w[:s.overlap] = torch.linspace(1e-37, 1, s.overlap)
        if max(window) < n - 1 and s.overlap > 0:
            w[-s.overlap:] = torch.linspace(1, 1e-37, s.overlap)
        return w
    return torch.tensor(pyramid_weights(length))


def _along(values: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    return values.reshape([1] * dim + [-1] + [1] * (ndim - dim - 1))


def freenoise(noise: torch.Tensor, s: ContextSettings, seed: int) -> torch.Tensor:
    """FreeNoise's shuffled initial noise (a new tensor)."""
    noise = noise.clone()
    n, delta = noise.shape[s.dim], s.length - s.overlap
    gen = torch.Generator("cpu").manual_seed(int(seed))
    for start in range(0, n - s.length, max(delta, 1)):
        place = start + s.length
        count = min(delta, n - place)
        if count <= 0:
            break
        src = (torch.randperm(count, generator=gen) + start).to(noise.device)
        dst = [slice(None)] * noise.ndim
        dst[s.dim] = slice(place, place + count)
        noise[tuple(dst)] = noise.index_select(s.dim, src)
    return noise


# -- the runner proxy -----------------------------------------------------------------------------------

def _slice(t: torch.Tensor, dim: int, frames: list[int], retain: tuple[int, ...]) -> torch.Tensor:
    out = t.index_select(dim, torch.tensor(frames, device=t.device))
    for i in retain:
        if 0 <= i < out.shape[dim] and i < t.shape[dim]:
            out.narrow(dim, i, 1).copy_(t.narrow(dim, i, 1))
    return out


def _window_extras(extras: dict, n: int, s: ContextSettings, frames: list[int], window: WindowIndices) -> dict:
    out = {}
    for key, value in extras.items():
        if isinstance(value, torch.Tensor) and value.ndim > s.dim and value.shape[s.dim] == n:
            value = _slice(value, s.dim, frames, s.cond_retain)
        out[key] = value
    out["context_window"] = window
    return out


class ContextWindowRunner(RunnerProxy):
    """Runs the network window by window along ``settings.dim`` and fuses the outputs."""

    def __init__(self, inner, settings: ContextSettings, run: PatchRun):
        super().__init__(inner)
        self.settings = settings
        self.run = run
        self.step = 0

    def begin_step(self, sigma, in_range) -> None:
        sigmas = self.run.sigmas.to(sigma.device, torch.float32)
        hits = torch.nonzero(torch.isclose(sigmas, sigma.reshape(-1)[0].float(), rtol=1e-4)).reshape(-1)
        if hits.numel():
            self.step = int(hits[0])
        super().begin_step(sigma, in_range)

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list) -> torch.Tensor:
        s = self.settings
        if s.dim >= x_in.ndim:
            raise ValueError(f"ContextWindowsManual.dim: {s.dim} is not an axis of this model's latent "
                             f"{list(x_in.shape)}")
        n = x_in.shape[s.dim]
        if n <= s.length:
            return self.inner(x_in, timestep, parts)
        total = None
        counts = torch.zeros(n, device=x_in.device, dtype=torch.float32)
        relative_bias = [0.0] * n
        for window in context_windows(n, s, self.step):
            anchor = s.causal_window_fix and window[0] - 1 >= 0
            frames = ([window[0] - 1] if anchor else []) + list(window)
            info = WindowIndices(tuple(frames), n, anchor)
            sub_x = _slice(x_in, s.dim, frames, s.latent_retain)
            sub_parts = [dataclasses.replace(p, extras=_window_extras(p.extras, n, s, frames, info)) for p in parts]
            out = self.inner(sub_x, timestep, sub_parts).float()
            if anchor:
                out = out.narrow(s.dim, 1, out.shape[s.dim] - 1)
            if total is None:
                shape = list(out.shape)
                shape[s.dim] = n
                total = torch.zeros(shape, device=out.device, dtype=torch.float32)
            index = torch.tensor(window, device=out.device)
            if s.fuse_method == "relative":
                lo, hi = window[0], window[-1]
                for pos, idx in enumerate(window):
                    bias = max(1e-2, 1 - abs(idx - (lo + hi) / 2) / ((hi - lo + 1e-2) / 2))
                    prev = relative_bias[idx]
                    dst = total.narrow(s.dim, idx, 1)
                    dst.copy_(dst * (prev / (prev + bias)) + out.narrow(s.dim, pos, 1) * (bias / (prev + bias)))
                    relative_bias[idx] = prev + bias
                continue
            w = fuse_weights(window, n, s).to(out.device)
            total.index_add_(s.dim, index, out * _along(w, out.ndim, s.dim))
            counts.index_add_(0, index.to(counts.device), w.to(counts.device))
        if s.fuse_method == "relative":
            return total
        return total / _along(counts.to(total.device), total.ndim, s.dim)


@dataclass(eq=False)
class ContextWindowsPatch(ModelPatch):
    key = "context_windows"
    settings: ContextSettings = None

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        run.runner = ContextWindowRunner(run.runner, self.settings, run)
        if self.settings.freenoise:
            run.noise_hooks.append(self._freenoise)
        yield

    def _freenoise(self, noise: torch.Tensor, seed: int) -> torch.Tensor:
        s = self.settings
        if noise.ndim <= s.dim or noise.shape[s.dim] <= s.length:
            return noise
        return freenoise(noise, s, seed)


def parse_indices(text: str, where: str) -> tuple[int, ...]:
    """``"0, 2"`` → ``(0, 2)``; an error naming ``where`` for anything else."""
    try:
        return tuple(int(v.strip()) for v in (text or "").split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a comma-separated list of integers (e.g. '0' or '0,1')") from None


def stride_loop_fuse_inputs() -> dict[str, Input]:
    """The ``context_stride``, ``closed_loop`` and ``fuse_method`` inputs both manual context-window nodes take
    (ComfyUI's); a node's class body takes them with ``vars().update(stride_loop_fuse_inputs())``."""
    return {"context_stride": Input(INT, default=1, min=1, max=MAX_RESOLUTION,
                                    tooltip="The stride of the context window; only applicable to uniform schedules."),
            "closed_loop": Input(BOOLEAN, default=False,
                                 tooltip="Whether to close the context window loop; only applicable to looped "
                                         "schedules."),
            "fuse_method": Input(COMBO, choices=FUSE_METHODS, default="pyramid",
                                 tooltip="The method to use to fuse the context windows.")}


def refuse_split_conds(split_conds_to_windows: bool, node: str) -> None:
    """The error for ``split_conds_to_windows`` (not supported yet) on the manual node ``node``."""
    if split_conds_to_windows:
        raise ValueError(f"{node}.split_conds_to_windows: splitting combined conditionings to "
                         "windows is not supported by nodegraph yet; set it to false")


def apply_context_windows(model, settings: ContextSettings, where: str):
    model = require_sampling_model(model, where)
    if settings.overlap >= settings.length and settings.schedule != "batched":
        raise ValueError(f"{where}: context_overlap ({settings.overlap}) must be below context_length "
                         f"({settings.length})")
    patch = ContextWindowsPatch(settings)
    return model.with_sampling_patches(model.sampling_patches.with_model_patch(patch))


class ContextWindowsManual(Node):
    """Samples the model in overlapping context windows along one latent axis, blending the windows'
    outputs (long videos on models trained on short clips)."""

    display_name = "Context Windows (Manual)"
    category = "context"
    experimental = True
    model = Input(MODEL, tooltip="The model to apply context windows to during sampling.")
    context_length = Input(INT, default=16, min=1, max=MAX_RESOLUTION, tooltip="The length of the context window.")
    context_overlap = Input(INT, default=4, min=0, max=MAX_RESOLUTION, tooltip="The overlap of the context window.")
    context_schedule = Input(COMBO, choices=SCHEDULES, tooltip="The stride of the context window.")
    vars().update(stride_loop_fuse_inputs())
    dim = Input(INT, default=0, min=0, max=5, tooltip="The dimension to apply the context windows to.")
    freenoise = Input(BOOLEAN, default=False,
                      tooltip="Whether to apply FreeNoise noise shuffling, improves window blending.")
    cond_retain_index_list = Input(STRING, default="", optional=True,
                                   tooltip="Window positions whose conditioning keeps the full tensor's frames.")
    split_conds_to_windows = Input(BOOLEAN, default=False, optional=True,
                                   tooltip="Split combined conditionings to the windows by region.")
    latent_retain_index_list = Input(STRING, default="", optional=True,
                                     tooltip="Window positions whose noisy latent keeps the full latent's frames.")
    causal_window_fix = Input(BOOLEAN, default=True, optional=True,
                              tooltip="Prepend the frame before a window (not starting at 0) and drop its output.")
    outputs = (Output(MODEL),)

    def execute(self, model, context_length: int, context_overlap: int, context_schedule: str, context_stride: int,
                closed_loop: bool, fuse_method: str, dim: int, freenoise: bool = False,
                cond_retain_index_list: str = "", split_conds_to_windows: bool = False,
                latent_retain_index_list: str = "", causal_window_fix: bool = True) -> tuple:
        refuse_split_conds(split_conds_to_windows, "ContextWindowsManual")
        settings = ContextSettings(
            context_length, context_overlap, context_schedule, context_stride, closed_loop, fuse_method, dim,
            freenoise, parse_indices(cond_retain_index_list, "ContextWindowsManual.cond_retain_index_list"),
            parse_indices(latent_retain_index_list, "ContextWindowsManual.latent_retain_index_list"),
            causal_window_fix)
        return (apply_context_windows(model, settings, "ContextWindowsManual.model"),)


class WanContextWindowsManual(Node):
    """Context windows for Wan-like models along the latent's frame axis (dim 2), lengths in video frames:
    ``context_length`` → ``(length - 1) // 4 + 1`` latent frames, ``context_overlap`` → ``(overlap - 1) // 4 + 1``
    (ComfyUI's conversion). ``retain_first_frame`` keeps the start image's condition frame at position 0 of every
    window (cond_retain_index_list '0'); the causal anchor frame is used as in ContextWindowsManual's default."""

    display_name = "WAN Context Windows (Manual)"
    category = "context"
    experimental = True
    model = Input(MODEL, tooltip="The model to apply context windows to during sampling.")
    context_length = Input(INT, default=81, min=1, max=MAX_RESOLUTION, step=4,
                           tooltip="The length of the context window in video frames (4n + 1).")
    context_overlap = Input(INT, default=30, min=0, max=MAX_RESOLUTION,
                            tooltip="The overlap of the context window in video frames.")
    context_schedule = Input(COMBO, choices=SCHEDULES, default="standard_uniform",
                             tooltip="Step-dependent scheduling algorithm for context windows.")
    vars().update(stride_loop_fuse_inputs())
    freenoise = Input(BOOLEAN, default=True, tooltip="Whether to apply FreeNoise noise shuffling.")
    retain_first_frame = Input(BOOLEAN, default=False,
                               tooltip="Retain the first I2V frame in every context window.")
    split_conds_to_windows = Input(BOOLEAN, default=False,
                                   tooltip="Split combined conditionings to the windows by region.")
    outputs = (Output(MODEL),)

    def execute(self, model, context_length: int, context_overlap: int, context_schedule: str, context_stride: int,
                closed_loop: bool, fuse_method: str, freenoise: bool = True, retain_first_frame: bool = False,
                split_conds_to_windows: bool = False) -> tuple:
        refuse_split_conds(split_conds_to_windows, "WanContextWindowsManual")
        length = max((context_length - 1) // 4 + 1, 1)
        overlap = max((context_overlap - 1) // 4 + 1, 0) if context_overlap > 0 else 0
        settings = ContextSettings(length, min(overlap, length - 1), context_schedule, context_stride, closed_loop,
                                   fuse_method, 2, freenoise, (0,) if retain_first_frame else (), (), True)
        return (apply_context_windows(model, settings, "WanContextWindowsManual.model"),)
