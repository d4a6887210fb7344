"""CreateBoundingBoxes and Flux3LayoutPrompt on their own: the boxes a template saves become pixel boxes and
0–1000 elements, the layout table is BFL's (diffusers' FLUX.3 ``boxes_to_canvas`` rows after the caption), an
upstream value replaces the canvas. ReferenceMultiLatent is checked against diffusers' multi-reference edit in
test_flux3 and runs in the edit templates (test_flux3_templates)."""

from __future__ import annotations

import json

import pytest

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.helpers.engines import make_engine

#: the box the image_flux3_klein_image_edit template saves (896×1152 canvas)
DRESS = {"x": 128, "y": 192, "width": 736, "height": 896, "metadata": {"type": "obj", "text": "", "desc": "dress",
                                                                        "palette": []}}


@pytest.fixture
def engine(tmp_path):
    (tmp_path / "models").mkdir()
    eng = make_engine(tmp_path, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def boxes_graph(editor_state: list, prompt: str, width: int = 896, height: int = 1152, upstream=None) -> Graph:
    g = Graph()
    inputs = dict(width=width, height=height, editor_state=editor_state, last_incoming=[])
    if upstream is not None:
        inputs["bboxes"] = g.node("PrimitiveStringMultiline", value=upstream).out(0)
    boxes = g.node("CreateBoundingBoxes", "boxes", **inputs)
    g.node("PreviewAny", source=boxes.out(1))
    g.node("PreviewAny", source=boxes.out(2))
    layout = g.node("Flux3LayoutPrompt", "layout", prompt=prompt, element=boxes.out(2))
    g.node("PreviewAny", source=layout)
    g.node("PreviewImage", images=boxes.out(0))
    return g


def test_template_box_becomes_elements_and_layout_table(engine):
    from diffusers.modular_pipelines.flux3.prompt_upsampler import boxes_to_canvas

    prompt = "In <ref_image_0>, change the dress color <obj_1> to red"
    result = engine.run(boxes_graph([DRESS], prompt)).raise_for_status()
    preview, bboxes, elements = result.value("boxes", 0), result.value("boxes", 1), result.value("boxes", 2)
    assert preview.shape == (1, 1152, 896, 3)
    assert bboxes == [[DRESS]]
    box = [192 / 1152, 128 / 896, (192 + 896) / 1152, (128 + 736) / 896]  # y_min, x_min, y_max, x_max in 0-1
    assert elements == [{"type": "obj", "bbox": [167, 143, 944, 964], "text": "", "desc": "dress", "palette": []}]
    rows = boxes_to_canvas([{"id": "obj_1", "bbox": box, "desc": "dress"}])  # diffusers' (BFL's) table rows
    assert result.value("layout") == f"{prompt} {json.dumps(rows, ensure_ascii=False)}"
    assert result.value("layout") == (prompt + ' [{"id": "obj_1", "bbox": [167, 143, 944, 964], "desc": "dress"}]')


def test_no_boxes_leave_the_prompt_unchanged_and_text_boxes_quote_their_words(engine):
    assert engine.run(boxes_graph([], "a quiet harbour")).raise_for_status().value("layout") == "a quiet harbour"
    sign = {"x": 0, "y": 0, "width": 448, "height": 576,
            "metadata": {"type": "text", "text": "OPEN", "desc": "red neon", "palette": ["#ff0000"]}}
    graph = boxes_graph([sign, DRESS], "a shop <obj_1>, a dress <obj_2>")
    layout = engine.run(graph).raise_for_status().value("layout")
    rows = json.loads(layout[len("a shop <obj_1>, a dress <obj_2> "):])
    assert rows == [{"id": "obj_1", "bbox": [0, 0, 500, 500], "desc": '"OPEN" red neon'},
                    {"id": "obj_2", "bbox": [167, 143, 944, 964], "desc": "dress"}]


def test_upstream_boxes_replace_the_canvas(engine):
    upstream = json.dumps([{"type": "obj", "bbox": [0, 0, 500, 1000], "desc": "sky"}])
    result = engine.run(boxes_graph([DRESS], "p", width=1024, height=1024, upstream=upstream)).raise_for_status()
    assert result.value("boxes", 1) == [[{"x": 0, "y": 0, "width": 1024, "height": 512,
                                          "metadata": {"type": "obj", "text": "", "desc": "sky", "palette": []}}]]
    with pytest.raises(Exception, match="not JSON boxes"):
        engine.run(boxes_graph([DRESS], "p", upstream="{not json")).raise_for_status()
