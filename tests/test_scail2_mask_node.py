"""SCAIL2ColoredMask (nodes/mask/scail2_mask.py) on hand-made SAM 3 tracks: palette order, overlap, sort
orders, object_indices, the two modes' backgrounds, a plain MASK or no reference, small masks enlarged."""

from __future__ import annotations

import pytest
import torch

from nodegraph_nodes.mask.sam3_track import Sam3TrackData
from nodegraph_nodes.mask.scail2_mask import SCAIL2ColoredMask

BLUE, RED, GREEN, MAGENTA = (0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.0, 1.0)
WHITE, BLACK = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)


def box(t: int, h: int, w: int, frames: set[int], y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(t, h, w, dtype=torch.bool)
    for f in frames:
        m[f, y0:y1, x0:x1] = True
    return m


def track(*objects: torch.Tensor, size: tuple[int, int] | None = None) -> Sam3TrackData:
    masks = torch.stack(objects, dim=1)
    return Sam3TrackData(masks, tuple(0.9 for _ in objects), size or tuple(masks.shape[-2:]), masks.shape[0])


def color(img: torch.Tensor, f: int, y: int, x: int) -> tuple:
    return tuple(float(v) for v in img[f, y, x])


@pytest.fixture
def scene() -> Sam3TrackData:
    """3 frames 8×12: object 0 on the right (frame 0 on), object 1 on the left and bigger (frame 0 on), object 2
    appears on frame 1 at the far left; objects 0 and 1 overlap at (2, 6)."""
    t, h, w = 3, 8, 12
    right = box(t, h, w, {0, 1, 2}, 0, 3, 6, 9)
    left = box(t, h, w, {0, 1, 2}, 2, 7, 2, 7)
    late = box(t, h, w, {1, 2}, 6, 8, 0, 1)
    return track(right, left, late)


def test_left_to_right_animation_mode(make, scene):
    pose, ref = make(SCAIL2ColoredMask).execute(scene, "", "left_to_right", False, None)
    assert pose.shape == (3, 8, 12, 3) and pose.dtype == torch.float32
    # first frame objects by centroid: left (obj 1) blue, right (obj 0) red; the late one green
    assert color(pose, 0, 4, 3) == BLUE and color(pose, 0, 0, 7) == RED and color(pose, 1, 7, 0) == GREEN
    assert color(pose, 0, 2, 6) == BLUE  # overlap: the first colour wins
    assert color(pose, 0, 7, 11) == BLACK and color(pose, 0, 7, 0) == BLACK  # background; obj 2 not yet there
    assert ref.shape == (1, 8, 12, 3) and torch.equal(ref, torch.ones(1, 8, 12, 3))  # no reference: white


def test_sort_none_area_and_indices(make, scene):
    node = make(SCAIL2ColoredMask)
    pose, _ = node.execute(scene, "", "none", True, None)
    assert color(pose, 0, 0, 7) == BLUE and color(pose, 0, 4, 3) == RED and color(pose, 2, 7, 0) == GREEN
    assert color(pose, 0, 2, 6) == BLUE and color(pose, 0, 7, 11) == WHITE  # replacement: white background
    pose, _ = node.execute(scene, "", "area", False, None)
    assert color(pose, 0, 4, 3) == BLUE and color(pose, 0, 0, 7) == RED  # the left one is bigger
    # sorted [obj 1, obj 0, obj 2]; "2, x, 0, 9" keeps sorted 2 then 0: the late object blue, the left one red
    pose, _ = node.execute(scene, "2, x, 0, 9", "left_to_right", False, None)
    assert color(pose, 1, 7, 0) == BLUE and color(pose, 0, 4, 3) == RED and color(pose, 0, 2, 6) == RED
    assert color(pose, 0, 0, 7) == BLACK  # the right object is dropped
    pose, _ = node.execute(scene, "7", "left_to_right", True, None)  # nothing left: all background
    assert torch.equal(pose, torch.ones(3, 8, 12, 3))


def test_reference_track_mask_and_palette_cycle(make, scene):
    node = make(SCAIL2ColoredMask)
    t, h, w = 1, 6, 6
    ref_track = track(*(box(t, h, w, {0}, 0, 1, i, i + 1) for i in range(6)), box(t, h, w, {0}, 5, 6, 0, 6))
    pose, ref = node.execute(scene, "", "left_to_right", True, ref_track)
    assert ref.shape == (1, 6, 6, 3)
    # sorted by centroid: the bottom row (centre x 3) sits between objects 2 and 3
    got = [color(ref, 0, 0, i) for i in range(6)]
    assert got == [BLUE, RED, GREEN, (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), BLUE]  # 7 objects: the 7th cycles
    assert color(ref, 0, 5, 0) == MAGENTA and color(ref, 0, 3, 3) == BLACK  # replacement: ref on black
    plain = torch.zeros(2, 4, 5)
    plain[1, 1:3, 1:4] = 0.7
    plain[0, 0, 0] = 0.5  # not above 0.5
    _, ref = node.execute(scene, "", "left_to_right", False, plain)
    assert ref.shape == (2, 4, 5, 3) and color(ref, 1, 2, 2) == BLUE and color(ref, 0, 0, 0) == WHITE
    _, ref = node.execute(scene, "", "left_to_right", False, plain[1])  # [H, W] mask
    assert ref.shape == (1, 4, 5, 3)
    with pytest.raises(TypeError, match="ref_track_data"):
        node.execute(scene, "", "left_to_right", False, "mask")


def test_small_masks_are_enlarged_nearest(make):
    small = box(2, 4, 4, {0, 1}, 0, 2, 0, 2)
    data = track(small, size=(8, 8))
    pose, ref = make(SCAIL2ColoredMask).execute(data, "", "left_to_right", True, None)
    assert pose.shape == (2, 8, 8, 3) and ref.shape == (1, 8, 8, 3) and torch.equal(ref, torch.zeros(1, 8, 8, 3))
    assert color(pose, 0, 3, 3) == BLUE and color(pose, 0, 4, 4) == WHITE
