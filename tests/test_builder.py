"""The Python graph builder: ids, links, API JSON round trip, and `nodegraph.run`."""

from __future__ import annotations

import json

import pytest

from nodegraph import Graph, run
from nodegraph.workflow.api_format import Link


def test_builder_makes_api_json_and_reads_it_back():
    g = Graph()
    img = g.node("EmptyImage", width=64, height=32, color=0xFF0000)
    inv = g.node("ImageInvert", image=img, title="Invert it")
    g.node("SaveImage", images=inv.out(0), filename_prefix="demo")
    api = g.to_api()
    assert api == {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "color": 0xFF0000}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}, "_meta": {"title": "Invert it"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "demo"}},
    }
    again = Graph.from_api(json.loads(json.dumps(api)))
    assert again.to_api() == api
    assert again.node("PreviewImage", images=again.lookup(2)).id == "4"   # ids continue after the max


def test_list_constants_are_wrapped_and_duplicate_ids_refused():
    g = Graph()
    g.node("PreviewAny", id="x", source=[1, 2, 3])
    assert g.to_api()["x"]["inputs"]["source"] == {"__value__": [1, 2, 3]}
    with pytest.raises(ValueError, match="already used"):
        g.node("PreviewAny", id="x", source=1)
    assert isinstance(g.lookup("x")[0], Link)


def test_run_returns_outputs(tmp_path):
    from nodegraph import Paths

    g = Graph()
    size = g.node("GetImageSize", image=g.node("EmptyImage", width=40, height=24))
    g.node("PreviewAny", source=size.out(1))
    result = run(g, paths=Paths.under(tmp_path), device="cpu")
    assert result.outputs["3"] == {"text": ["24"]}
    assert result.value("2", 0) == 40
