"""Conditioning nodes (ComfyUI semantics): combine, average, concat, timestep range, zero out, area.

CONDITIONING is a list of ``[tensor [1, tokens, dim], extras dict]``; setters copy each extras dict.
"""

from __future__ import annotations

import torch

from nodegraph.node import FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING

MAX_RESOLUTION = 16384


def set_values(conditioning: list, values: dict) -> list:
    return [[cond, {**extras, **values}] for cond, extras in conditioning]


class ConditioningCombine(Node):
    """Both conditionings guide the sampler (their noise predictions are averaged)."""

    category = "conditioning"
    display_name = "Conditioning (Combine)"
    conditioning_1 = Input(CONDITIONING)
    conditioning_2 = Input(CONDITIONING)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning_1: list, conditioning_2: list) -> tuple:
        return (conditioning_1 + conditioning_2,)


class ConditioningAverage(Node):
    """Weighted average of two conditionings' embeddings (the first entry of ``conditioning_from``)."""

    category = "conditioning"
    conditioning_to = Input(CONDITIONING)
    conditioning_from = Input(CONDITIONING)
    conditioning_to_strength = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning_to: list, conditioning_from: list, conditioning_to_strength: float) -> tuple:
        if not conditioning_from:
            return (conditioning_to,)
        cond_from = conditioning_from[0][0]
        pooled_from = conditioning_from[0][1].get("pooled_output")
        s = conditioning_to_strength
        out = []
        for t1, extras in conditioning_to:
            pooled_to = extras.get("pooled_output", pooled_from)
            t0 = cond_from[:, :t1.shape[1]]
            if t0.shape[1] < t1.shape[1]:
                t0 = torch.cat([t0, torch.zeros((1, t1.shape[1] - t0.shape[1], t1.shape[2]), dtype=t0.dtype)], dim=1)
            mixed = t1 * s + t0 * (1.0 - s)
            new = dict(extras)
            if pooled_from is not None and pooled_to is not None:
                new["pooled_output"] = pooled_to * s + pooled_from * (1.0 - s)
            elif pooled_from is not None:
                new["pooled_output"] = pooled_from
            out.append([mixed, new])
        return (out,)


class ConditioningConcat(Node):
    """Appends the first entry of ``conditioning_from`` to each entry's tokens."""

    category = "conditioning"
    display_name = "Conditioning (Concat)"
    conditioning_to = Input(CONDITIONING)
    conditioning_from = Input(CONDITIONING)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning_to: list, conditioning_from: list) -> tuple:
        if not conditioning_from:
            return (conditioning_to,)
        cond_from = conditioning_from[0][0]
        return ([[torch.cat((t1, cond_from), 1), dict(extras)] for t1, extras in conditioning_to],)


class ConditioningSetTimestepRange(Node):
    """Limits the conditioning to a part of the schedule (0 = first step, 1 = last)."""

    category = "advanced/conditioning"
    conditioning = Input(CONDITIONING)
    start = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.001)
    end = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.001)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning: list, start: float, end: float) -> tuple:
        return (set_values(conditioning, {"start_percent": start, "end_percent": end}),)


class ConditioningZeroOut(Node):
    """Zeros the embeddings (and pooled output)."""

    category = "advanced/conditioning"
    conditioning = Input(CONDITIONING)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning: list) -> tuple:
        out = []
        for cond, extras in conditioning:
            new = dict(extras)
            if new.get("pooled_output") is not None:
                new["pooled_output"] = torch.zeros_like(new["pooled_output"])
            out.append([torch.zeros_like(cond), new])
        return (out,)


class ConditioningSetArea(Node):
    """Restricts the conditioning to a rectangle of the image (pixels, multiples of 8)."""

    category = "conditioning"
    display_name = "Conditioning (Set Area)"
    conditioning = Input(CONDITIONING)
    width = Input(INT, default=64, min=64, max=MAX_RESOLUTION, step=8)
    height = Input(INT, default=64, min=64, max=MAX_RESOLUTION, step=8)
    x = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    y = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning: list, width: int, height: int, x: int, y: int, strength: float) -> tuple:
        return (set_values(conditioning, {"area": (height // 8, width // 8, y // 8, x // 8), "strength": strength,
                                          "set_area_to_bounds": False}),)


class ConditioningSetAreaPercentage(Node):
    """Restricts the conditioning to a rectangle given as fractions of the image."""

    category = "conditioning"
    conditioning = Input(CONDITIONING)
    width = Input(FLOAT, default=1.0, min=0, max=1.0, step=0.01)
    height = Input(FLOAT, default=1.0, min=0, max=1.0, step=0.01)
    x = Input(FLOAT, default=0, min=0, max=1.0, step=0.01)
    y = Input(FLOAT, default=0, min=0, max=1.0, step=0.01)
    strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning: list, width: float, height: float, x: float, y: float, strength: float) -> tuple:
        return (set_values(conditioning, {"area": ("percentage", height, width, y, x), "strength": strength,
                                          "set_area_to_bounds": False}),)


class ConditioningSetAreaStrength(Node):
    category = "conditioning"
    conditioning = Input(CONDITIONING)
    strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning: list, strength: float) -> tuple:
        return (set_values(conditioning, {"strength": strength}),)
