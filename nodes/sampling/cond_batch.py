"""Conditioning during sampling: each CONDITIONING entry's area, mask, strength and active sigma range,
and the batched model evaluation of several conditionings at one step (ComfyUI's semantics).

:func:`prepare` resolves a CONDITIONING list for one run (percentage areas to latent cells, masks to the
latent size, ``start_percent``/``end_percent`` to sigmas). :func:`calc_cond_batch` evaluates several
such lists (e.g. positive and negative) at one ``(x, sigma)``: every active entry is cropped to its
area, entries with equal shapes share one network call (in reverse order, so a plain
``[positive, negative]`` pair runs as one batch ``[negative, positive]``), and each list's result is
the strength/mask-weighted average of its entries over the latent (areas feathered by up to 8 cells
where they do not touch the border).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from nodegraph_nodes.sampling.model import CondPart, ModelRunner
from nodegraph_nodes.sampling.model_sampling import ModelSampling


@dataclass(frozen=True)
class Cond:
    """One CONDITIONING entry prepared for a run."""

    cond: torch.Tensor
    extras: dict
    area: tuple[int, int, int, int] | None = None  # (h, w, y, x) in latent cells
    mask: torch.Tensor | None = None  # [B or 1, h, w] at the latent size
    mask_strength: float = 1.0
    strength: float = 1.0
    sigma_start: float | None = None  # active while sigma <= sigma_start …
    sigma_end: float | None = None  # … and sigma >= sigma_end
    negative: bool = False


def _resolve_area(area, h: int, w: int) -> tuple[int, int, int, int]:
    if area[0] == "percentage":
        return (max(1, round(area[1] * h)), max(1, round(area[2] * w)), round(area[3] * h), round(area[4] * w))
    return tuple(int(v) for v in area)


def _mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    bounds = torch.max(torch.abs(mask), dim=0).values
    ys, xs = torch.nonzero(bounds, as_tuple=True)
    if len(ys) == 0:
        return (8, 8, 0, 0)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    return (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)


def prepare(conditioning: list | None, latent_shape: tuple, ms: ModelSampling, device, negative: bool = False
            ) -> list[Cond]:
    """The entries of a CONDITIONING list, resolved for a latent of ``latent_shape``."""
    if conditioning is None:
        return []
    h, w = latent_shape[-2], latent_shape[-1]
    out: list[Cond] = []
    for cond, extras in conditioning:
        extras = dict(extras)
        area = _resolve_area(extras["area"], h, w) if "area" in extras else None
        mask = extras.get("mask")
        if mask is not None:
            mask = mask.to(device=device, dtype=torch.float32)
            if mask.ndim == 2:
                mask = mask.unsqueeze(0)
            if tuple(mask.shape[1:]) != (h, w):
                mask = F.interpolate(mask.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
            if extras.get("set_area_to_bounds", False):
                area = _mask_bounds(mask)
        start = ms.percent_to_sigma(extras["start_percent"]) if "start_percent" in extras else None
        end = ms.percent_to_sigma(extras["end_percent"]) if "end_percent" in extras else None
        out.append(Cond(cond, extras, area, mask, float(extras.get("mask_strength", 1.0)),
                        float(extras.get("strength", 1.0)), start, end, negative))
    return out


def _entry_extras(entry) -> dict:
    return entry.extras if isinstance(entry, Cond) else entry[1]


def _entry_with(entry, extras: dict):
    return replace(entry, extras=extras) if isinstance(entry, Cond) else [entry[0], extras]


def spread_control_to_uncond(lists: dict[str, list]) -> dict[str, list]:
    """ControlNetApply's ``control_apply_to_uncond`` (ComfyUI's rule, ``apply_empty_x_to_equal_area``):
    when no entry of another list (without an area) carries a ``control``, the positive entries'
    controls that asked for it are given to that list's entries without an area, one each in turn.
    Entries are :class:`Cond` records or raw ``[tensor, extras]`` pairs; the lists are not changed."""
    shared = [_entry_extras(e)["control"] for e in lists.get("positive") or ()
              if _entry_extras(e).get("control_apply_to_uncond") and "area" not in _entry_extras(e)
              and _entry_extras(e).get("control") is not None]
    if not shared:
        return lists
    out = dict(lists)
    for name, entries in lists.items():
        if name == "positive" or not entries:
            continue
        plain = [i for i, e in enumerate(entries) if "area" not in _entry_extras(e)]
        if not plain or any(_entry_extras(entries[i]).get("control") is not None for i in plain):
            continue
        new = list(entries)
        for k, control in enumerate(shared):
            i = plain[k % len(plain)]
            new[i] = _entry_with(entries[i], {**_entry_extras(entries[i]), "control": control})
        out[name] = new
    return out


def _inside(a: tuple, b: tuple) -> bool:
    """Whether area ``a`` lies inside area ``b`` (both (h, w, y, x))."""
    return a[2] >= b[2] and a[3] >= b[3] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


def pair_areas(lists: list[list[Cond]]) -> list[list[Cond]]:
    """Every area entry of one list gets a partner with the same area in each other list (taken from
    that list's smallest entry containing it), so that areas are guided against their own negative."""
    out = [list(entries) for entries in lists]
    for k, entries in enumerate(lists):
        for c in entries:
            if c.area is None:
                continue
            for kk, other in enumerate(out):
                if kk == k or not other:
                    continue
                smallest = None
                for x in other:
                    if x.area is not None:
                        if _inside(c.area, x.area) and (smallest is None or smallest.area is None
                                                         or math.prod(smallest.area[:2]) > math.prod(x.area[:2])):
                            smallest = x
                    elif smallest is None:
                        smallest = x
                if smallest is None or smallest.area == c.area:
                    continue
                other.append(replace(c, cond=smallest.cond, extras={**c.extras, **{
                    key: v for key, v in smallest.extras.items() if key not in ("area", "strength", "mask")}},
                    negative=smallest.negative))
    return out


@dataclass
class _Job:
    x: torch.Tensor
    mult: torch.Tensor
    area: tuple | None
    cond: Cond
    index: int


def _job(c: Cond, x_in: torch.Tensor, sigma: torch.Tensor, index: int) -> _Job | None:
    s = float(sigma.reshape(-1)[0])
    if c.sigma_start is not None and s > c.sigma_start:
        return None
    if c.sigma_end is not None and s < c.sigma_end:
        return None
    H, W = x_in.shape[2], (x_in.shape[3] if x_in.ndim > 3 else 1)  # audio latents [B, C, T] have no width
    area = None
    x = x_in
    if c.area is not None:
        ah, aw, ay, ax = c.area
        ah, aw = min(H - ay, ah), min(W - ax, aw)
        area = (ah, aw, ay, ax)
        x = x_in[:, :, ay:ay + ah, ax:ax + aw]
    if c.mask is not None:
        mask = c.mask[:x.shape[0]]
        if area is not None:
            mask = mask[:, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
        mask = (mask * c.mask_strength).unsqueeze(1).repeat(x.shape[0] // mask.shape[0], x.shape[1], 1, 1)
    else:
        mask = torch.ones_like(x)
    mult = mask * c.strength
    if c.mask is None and area is not None:
        ah, aw, ay, ax = area
        for dim, (size, offset, full) in enumerate(((ah, ay, H), (aw, ax, W))):
            rr = min(8, mult.shape[2 + dim] // 4)
            if offset != 0:
                for t in range(rr):
                    mult.narrow(dim + 2, t, 1).mul_((1.0 / rr) * (t + 1))
            if size + offset < full:
                for t in range(rr):
                    mult.narrow(dim + 2, size - 1 - t, 1).mul_((1.0 / rr) * (t + 1))
    return _Job(x, mult, area, c, index)


def _default_can_batch(a: Cond, b: Cond) -> bool:
    ca, cb = a.cond, b.cond
    if ca.shape[0] != cb.shape[0] or ca.shape[2:] != cb.shape[2:]:
        return False
    if ca.shape[1] != cb.shape[1]:
        lcm = math.lcm(ca.shape[1], cb.shape[1])
        if lcm // min(ca.shape[1], cb.shape[1]) > 4:
            return False
    pa, pb = a.extras.get("pooled_output"), b.extras.get("pooled_output")
    if (pa is None) != (pb is None) or (pa is not None and pa.shape != pb.shape):
        return False
    return True


def apply_model(runner: ModelRunner, ms: ModelSampling, x: torch.Tensor, sigma: torch.Tensor,
                parts: list[CondPart]) -> torch.Tensor:
    """One network evaluation turned into a denoised latent (input scaling, timestep, output → x0)."""
    xc = ms.calculate_input(sigma, x).to(runner.dtype)
    t = ms.timestep(sigma).float()
    out = runner(xc, t, parts).float()
    return ms.calculate_denoised(sigma, out, x)


def calc_cond_batch(runner: ModelRunner, ms: ModelSampling, lists: list[list[Cond] | None], x_in: torch.Tensor,
                    sigma: torch.Tensor) -> list[torch.Tensor]:
    """The denoised prediction of each conditioning list at ``(x_in, sigma)`` (a ``None`` list: zeros)."""
    outs = [torch.zeros_like(x_in) for _ in lists]
    counts = [torch.ones_like(x_in) * 1e-37 for _ in lists]
    to_run: list[_Job] = []
    for i, entries in enumerate(lists):
        for c in entries or ():
            job = _job(c, x_in, sigma, i)
            if job is not None:
                to_run.append(job)
    can_batch = getattr(runner, "can_batch", _default_can_batch)
    while to_run:
        first = to_run[0]
        picked = [k for k, job in enumerate(to_run) if job.x.shape == first.x.shape and can_batch(job.cond, first.cond)]
        batch = [to_run[k] for k in reversed(picked)]
        for k in reversed(picked):
            to_run.pop(k)
        xs = torch.cat([job.x for job in batch])
        sig = torch.cat([sigma] * len(batch))
        parts = [CondPart(job.cond.cond, job.cond.extras, job.x.shape[0], job.cond.negative) for job in batch]
        output = apply_model(runner, ms, xs, sig, parts).chunk(len(batch))
        for job, out in zip(batch, output):
            target, count = outs[job.index], counts[job.index]
            if job.area is not None:
                ah, aw, ay, ax = job.area
                target = target[:, :, ay:ay + ah, ax:ax + aw]
                count = count[:, :, ay:ay + ah, ax:ax + aw]
            target += out * job.mult
            count += job.mult
    return [o / c for o, c in zip(outs, counts)]
