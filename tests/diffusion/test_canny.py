"""The Canny node: kornia's Canny (ComfyUI's) computed in torch — thin edges at intensity steps,
hysteresis keeping weak edges only where they touch strong ones, a 3-channel edge IMAGE out."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph

from nodegraph_nodes.diffusion.canny import canny


def test_vertical_step_gives_one_thin_line():
    image = torch.zeros(1, 3, 24, 24)
    image[..., 13:] = 1.0
    image[..., 12] = 0.7  # off-centre step: the maximum is one column, not a tie
    edges = canny(image, 0.1, 0.2)
    assert edges.shape == (1, 1, 24, 24)
    columns = edges[0, 0, 4:20].nonzero()[:, 1].unique().tolist()
    assert columns == [12]  # one column, all rows (away from the borders)
    assert bool(edges[0, 0, 4:20, 12].all())
    assert set(edges.unique().tolist()) <= {0.0, 1.0}


def test_gray_weights_and_flat_image():
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert not canny(flat, 0.05, 0.1).any()
    red = torch.zeros(1, 3, 20, 20)
    red[:, 0, :, 11:] = 1.0
    red[:, 0, :, 10] = 0.7
    gray = red[:, :1] * 0.299
    assert torch.equal(canny(red, 0.05, 0.1), canny(gray, 0.05, 0.1))


def _fading_step(top: float, bottom: float) -> torch.Tensor:
    """A vertical step whose height fades from ``top`` (first row) to ``bottom`` (last row)."""
    height = torch.linspace(top, bottom, 32).reshape(1, 1, 32, 1)
    image = torch.zeros(1, 1, 32, 32)
    image[..., 17:] = height
    image[..., 16:17] = 0.7 * height
    return image


def test_hysteresis_keeps_weak_edges_joined_to_strong_ones():
    image = _fading_step(1.0, 0.2)  # gradient magnitude about 2.6 at the top, 0.5 at the bottom
    joined = canny(image, 0.3, 1.5)
    strong_only = canny(image, 1.5, 1.5)
    assert joined[0, 0, 3:29, 16].all()  # the weak lower part is kept through the strong upper part
    assert strong_only[0, 0, 3:10, 16].all() and not strong_only[0, 0, 22:29, 16].any()
    assert not canny(_fading_step(0.2, 0.2), 0.3, 1.5).any()  # weak alone is dropped


def test_thresholds_out_of_order_are_an_error():
    with pytest.raises(ValueError, match="low_threshold"):
        canny(torch.zeros(1, 3, 8, 8), 0.5, 0.2)


def test_canny_node_runs(sd_engine):
    g = Graph()
    image = g.node("EmptyImage", width=32, height=24, batch_size=2, color=0xFFFFFF)
    g.node("Canny", "edges", image=image, low_threshold=0.4, high_threshold=0.8)
    g.node("PreviewAny", source=g.lookup("edges").out(0))
    out = sd_engine.run(g).raise_for_status().value("edges")
    assert out.shape == (2, 24, 32, 3)
    assert torch.equal(out[..., 0], out[..., 2])
    assert not out.any()  # a flat picture has no edges
