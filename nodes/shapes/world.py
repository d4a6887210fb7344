"""Scenes of the shapes world as typed records, and seeded sampling of them.

The world is fixed (an outside evaluator scores against it): 64×64 canvas, an 8-colour palette, one
background colour, one object at a position or two non-overlapping objects in a relation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

CANVAS = 64

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38), "orange": (245, 140, 20), "yellow": (240, 220, 30), "green": (34, 170, 60),
    "blue": (30, 80, 220), "purple": (140, 50, 190), "white": (245, 245, 245), "black": (20, 20, 20),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "large")
#: Pixels across per size ("about 14 px" and "about 28 px").
SIZE_PIXELS = {"small": 14, "large": 28}
POSITIONS = ("center", "left", "right", "top", "bottom")
#: Centre of an object at each position.
POSITION_CENTERS = {"center": (32, 32), "left": (16, 32), "right": (48, 32), "top": (32, 16),
                    "bottom": (32, 48)}
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str


@dataclass(frozen=True)
class Scene:
    """One object at ``position``, or ``objects[0]`` ``relation`` ``objects[1]`` (e.g. A left of B)."""

    background: str
    objects: tuple[ShapeObject, ...]
    position: str | None = None
    relation: str | None = None

    def __post_init__(self) -> None:
        if len(self.objects) == 1:
            assert self.position in POSITIONS and self.relation is None, self
        elif len(self.objects) == 2:
            assert self.relation in RELATIONS and self.position is None, self
            assert self.objects[0].color != self.objects[1].color, self
        else:
            raise ValueError("a scene has one or two objects")
        assert all(o.color != self.background for o in self.objects), self

    def placements(self) -> list[tuple[ShapeObject, tuple[int, int]]]:
        """Each object with its centre in pixels."""
        if self.position is not None:
            return [(self.objects[0], POSITION_CENTERS[self.position])]
        first, second = RELATION_POSITIONS[self.relation]
        return [(self.objects[0], POSITION_CENTERS[first]), (self.objects[1], POSITION_CENTERS[second])]

    def normalized(self) -> "Scene":
        """The same picture described one way only: 'right of' → 'left of', 'below' → 'above'."""
        if self.relation == "right of":
            return Scene(self.background, (self.objects[1], self.objects[0]), relation="left of")
        if self.relation == "below":
            return Scene(self.background, (self.objects[1], self.objects[0]), relation="above")
        return self


#: Where the two objects of a relation stand (first object, second object).
RELATION_POSITIONS = {"left of": ("left", "right"), "right of": ("right", "left"),
                      "above": ("top", "bottom"), "below": ("bottom", "top")}


def sample_scene(rng: random.Random, two_objects: bool | None = None, pair_share: float = 0.5) -> Scene:
    """A random scene; ``two_objects`` None picks two objects with probability ``pair_share``."""
    background = rng.choice(COLORS)
    others = [c for c in COLORS if c != background]
    if two_objects is None:
        two_objects = rng.random() < pair_share
    if not two_objects:
        obj = ShapeObject(rng.choice(SHAPES), rng.choice(others), rng.choice(SIZES))
        return Scene(background, (obj,), position=rng.choice(POSITIONS))
    color_a, color_b = rng.sample(others, 2)
    a = ShapeObject(rng.choice(SHAPES), color_a, rng.choice(SIZES))
    b = ShapeObject(rng.choice(SHAPES), color_b, rng.choice(SIZES))
    return Scene(background, (a, b), relation=rng.choice(RELATIONS))


def scene_for_seed(seed: int, two_objects: bool | None = None) -> Scene:
    return sample_scene(random.Random(seed), two_objects)
