"""UI (canvas) workflow → API workflow conversion, against a small registry of test node classes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nodegraph.errors import WorkflowFormatError
from nodegraph.node import Input, Node, Output
from nodegraph.registry import NodeRegistry
from nodegraph.types import BOOLEAN, COMBO, FLOAT, IMAGE, INT, MASK, STRING
from nodegraph.workflow.ui_format import (is_api_workflow, is_ui_workflow, map_widget_values,
                                          parse_ui_workflow, ui_to_api)

# -- test node classes ----------------------------------------------------------------------------


class KSampler(Node):
    model = Input("MODEL")
    seed = Input(INT, default=0, min=0, max=2**64 - 1, control_after_generate=True)
    steps = Input(INT, default=20, min=1, max=10000)
    cfg = Input(FLOAT, default=8.0)
    sampler_name = Input(COMBO, choices=["euler", "heun", "dpmpp_2m"])
    scheduler = Input(COMBO, choices=["normal", "karras"])
    positive = Input("CONDITIONING")
    negative = Input("CONDITIONING")
    latent_image = Input("LATENT")
    denoise = Input(FLOAT, default=1.0)
    outputs = (Output("LATENT"),)


class NoiseText(Node):
    """``noise_seed`` gets a control value by name; the next widget is a STRING."""
    noise_seed = Input(INT, default=0)
    text = Input(STRING, default="")
    outputs = (Output(STRING),)


class EmptyImage(Node):
    display_name = "Empty Image"
    width = Input(INT, default=512)
    height = Input(INT, default=512)
    batch_size = Input(INT, default=1)
    color = Input(INT, default=0, display="color")
    outputs = (Output(IMAGE),)


class ImageBlur(Node):
    image = Input(IMAGE)
    blur_radius = Input(INT, default=1)
    sigma = Input(FLOAT, default=1.0)
    outputs = (Output(IMAGE),)


class MaskedInvert(Node):
    """A MASK socket before the IMAGE one: bypass must pick the IMAGE input for IMAGE output 0."""
    mask = Input(MASK)
    image = Input(IMAGE)
    outputs = (Output(IMAGE),)


class MaskOnly(Node):
    mask = Input(MASK)
    outputs = (Output(IMAGE),)


class LoadImage(Node):
    display_name = "Load Image"
    image = Input(COMBO, choices=["cat.png", "dog.png"], image_upload=True)
    outputs = (Output(IMAGE), Output(MASK))


class LoadImageMask(Node):
    image = Input(COMBO, choices=["cat.png", "dog.png"], image_upload=True)
    channel = Input(COMBO, choices=["alpha", "red", "green", "blue"])
    outputs = (Output(MASK),)


class SaveImage(Node):
    display_name = "Save Image"
    output_node = True
    images = Input(IMAGE)
    filename_prefix = Input(STRING, default="ComfyUI")
    hidden = ("prompt", "extra_pnginfo")


class PrimitiveInt(Node):
    value = Input(INT, default=0, control_after_generate=True)
    outputs = (Output(INT),)


class Picker(Node):
    """A combo with control_after_generate (value, control, filter), then a BOOLEAN and an optional."""
    choice = Input(COMBO, choices=["a", "b", "c"], control_after_generate=True)
    flag = Input(BOOLEAN, default=False)
    size = Input(INT, default=7, force_input=True)
    extra = Input(STRING, default="x", optional=True)
    outputs = (Output(STRING),)


class PreviewAny(Node):
    output_node = True
    source = Input("*")


class ListHolder(Node):
    values = Input(STRING, default="")


REGISTRY = NodeRegistry([KSampler, NoiseText, EmptyImage, ImageBlur, MaskedInvert, MaskOnly,
                         LoadImage, LoadImageMask, SaveImage, PrimitiveInt, Picker, PreviewAny,
                         ListHolder])

MINIMAL_UI = {
    "last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
    "nodes": [
        {"id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [315, 130], "flags": {}, "order": 0,
         "mode": 0, "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
         "properties": {}, "widgets_values": [64, 64, 1, 16711680]},
        {"id": 2, "type": "SaveImage", "pos": [400, 0], "size": [300, 270], "flags": {}, "order": 1,
         "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "properties": {},
         "widgets_values": ["demo"]}],
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
}

EMPTY_64 = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                    "color": 16711680},
            "_meta": {"title": "Empty Image"}}


# -- helpers --------------------------------------------------------------------------------------


def node(id_: int, type_: str, *, inputs: list | None = None, outputs: list | None = None,
         widgets: Any = None, mode: int = 0, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": id_, "type": type_, "pos": [0, 0], "size": [100, 100], "flags": {},
                           "order": id_, "mode": mode, "properties": {}}
    if inputs is not None:
        raw["inputs"] = inputs
    if outputs is not None:
        raw["outputs"] = outputs
    if widgets is not None:
        raw["widgets_values"] = widgets
    raw.update(extra)
    return raw


def sock(name: str, type_: str, link: int | None, widget: bool = False) -> dict[str, Any]:
    slot: dict[str, Any] = {"name": name, "type": type_, "link": link}
    if widget:
        slot["widget"] = {"name": name}
    return slot


def out(type_: str, links: list[int] | None = None, name: str | None = None) -> dict[str, Any]:
    return {"name": name or type_, "type": type_, "links": links}


def workflow(nodes: list, links: list, **extra: Any) -> dict[str, Any]:
    return {"last_node_id": 99, "last_link_id": 99, "version": 0.4, "groups": [], "config": {},
            "extra": {}, "nodes": nodes, "links": links, **extra}


def empty(id_: int, links: list[int], size: int = 64) -> dict[str, Any]:
    return node(id_, "EmptyImage", outputs=[out(IMAGE, links)], widgets=[size, size, 1, 0])


def save(id_: int, link: int | None, prefix: str = "out") -> dict[str, Any]:
    return node(id_, "SaveImage", inputs=[sock("images", IMAGE, link)], widgets=[prefix])


def blur(id_: int, link: int | None, links: list[int], mode: int = 0) -> dict[str, Any]:
    return node(id_, "ImageBlur", inputs=[sock("image", IMAGE, link)], outputs=[out(IMAGE, links)],
                widgets=[3, 1.5], mode=mode)


def empty_api(size: int = 64) -> dict[str, Any]:
    return {"class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0},
            "_meta": {"title": "Empty Image"}}


def save_api(images: list | None, prefix: str = "out") -> dict[str, Any]:
    inputs: dict[str, Any] = {} if images is None else {"images": images}
    inputs["filename_prefix"] = prefix
    return {"class_type": "SaveImage", "inputs": inputs, "_meta": {"title": "Save Image"}}


def convert(data: dict[str, Any]) -> dict[str, Any]:
    return ui_to_api(data, REGISTRY)


# -- basics ---------------------------------------------------------------------------------------


def test_minimal_file_from_the_compat_notes():
    assert convert(MINIMAL_UI) == {"1": EMPTY_64, "2": save_api(["1", 0], "demo")}


def test_conversion_does_not_modify_the_input():
    data = copy.deepcopy(MINIMAL_UI)
    convert(data)
    assert data == MINIMAL_UI


def test_custom_title_goes_to_meta():
    data = copy.deepcopy(MINIMAL_UI)
    data["nodes"][1]["title"] = "Keep this"
    assert convert(data)["2"]["_meta"] == {"title": "Keep this"}


def test_pos_and_size_as_objects_are_accepted():
    data = copy.deepcopy(MINIMAL_UI)
    data["nodes"][0]["pos"] = {"0": 10, "1": 20}
    data["nodes"][0]["size"] = {"0": 315, "1": 130}
    assert convert(data) == {"1": EMPTY_64, "2": save_api(["1", 0], "demo")}


def test_ksampler_widgets_values_skip_the_control_value():
    data = workflow([node(3, "KSampler", widgets=[156680208700286, "randomize", 20, 8, "euler",
                                                  "normal", 1])], [])
    assert convert(data)["3"]["inputs"] == {"seed": 156680208700286, "steps": 20, "cfg": 8,
                                            "sampler_name": "euler", "scheduler": "normal",
                                            "denoise": 1}


def test_legacy_boolean_control_value_is_skipped():
    data = workflow([node(3, "KSampler", widgets=[5, True, 30, 7.5, "heun", "karras", 0.5])], [])
    assert convert(data)["3"]["inputs"] == {"seed": 5, "steps": 30, "cfg": 7.5, "sampler_name": "heun",
                                            "scheduler": "karras", "denoise": 0.5}


def test_seed_named_int_gets_a_control_value_without_the_option():
    data = workflow([node(1, "NoiseText", widgets=[9, "fixed", "hello"])], [])
    assert convert(data)["1"]["inputs"] == {"noise_seed": 9, "text": "hello"}


def test_old_file_without_control_value():
    data = workflow([node(3, "KSampler", widgets=[42, 20, 8, "euler", "normal", 1])], [])
    assert convert(data)["3"]["inputs"] == {"seed": 42, "steps": 20, "cfg": 8, "sampler_name": "euler",
                                            "scheduler": "normal", "denoise": 1}


def test_old_file_without_control_value_before_a_string_widget():
    # "fixed" could be the text itself: with too few values it is kept as the STRING's value.
    assert map_widget_values(NoiseText, [9, "fixed"]) == {"noise_seed": 9, "text": "fixed"}
    assert map_widget_values(NoiseText, [9, "hello"]) == {"noise_seed": 9, "text": "hello"}


def test_combo_with_control_skips_control_and_filter():
    data = workflow([node(1, "Picker", widgets=["b", "increment-wrap", "", True, "y"])], [])
    assert convert(data)["1"]["inputs"] == {"choice": "b", "flag": True, "extra": "y"}


def test_combo_control_missing_in_old_file():
    assert map_widget_values(Picker, ["c", True, "z"]) == {"choice": "c", "flag": True, "extra": "z"}


def test_image_upload_extra_value_is_ignored():
    data = workflow([node(1, "LoadImage", outputs=[out(IMAGE), out(MASK)], widgets=["cat.png", "image"]),
                     node(2, "LoadImageMask", outputs=[out(MASK)],
                          widgets=["dog.png", "red", "image"])], [])
    assert convert(data) == {
        "1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"},
              "_meta": {"title": "Load Image"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "dog.png", "channel": "red"},
              "_meta": {"title": "LoadImageMask"}},
    }


def test_widgets_values_as_object_maps_by_name():
    data = workflow([node(1, "EmptyImage", widgets={"height": 32, "width": 16, "junk": 1})], [])
    assert convert(data)["1"]["inputs"] == {"width": 16, "height": 32, "batch_size": 1, "color": 0}


def test_missing_widgets_take_their_defaults():
    data = workflow([node(1, "EmptyImage", widgets=[100]),
                     node(2, "LoadImageMask", outputs=[out(MASK)])], [])
    result = convert(data)
    assert result["1"]["inputs"] == {"width": 100, "height": 512, "batch_size": 1, "color": 0}
    assert result["2"]["inputs"] == {"image": "cat.png", "channel": "alpha"}


def test_array_widget_value_is_wrapped():
    data = workflow([node(1, "ListHolder", widgets=[["a", 1]])], [])
    assert convert(data)["1"]["inputs"] == {"values": {"__value__": ["a", 1]}}


# -- links ----------------------------------------------------------------------------------------


def test_chain_of_links():
    data = workflow([empty(1, [1]), blur(2, 1, [2]), save(3, 2)],
                    [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]])
    assert convert(data) == {
        "1": empty_api(),
        "2": {"class_type": "ImageBlur", "inputs": {"blur_radius": 3, "sigma": 1.5, "image": ["1", 0]},
              "_meta": {"title": "ImageBlur"}},
        "3": save_api(["2", 0]),
    }


def test_widget_slots_listed_with_null_links_and_renumbered_target_slots():
    autosave = workflow([empty(1, [7]), node(2, "ImageBlur",
                                             inputs=[sock("image", IMAGE, 7),
                                                     sock("blur_radius", INT, None, widget=True),
                                                     sock("sigma", FLOAT, None, widget=True)],
                                             outputs=[out(IMAGE)], widgets=[4, 2.0])],
                        [[7, 1, 0, 2, 0, "IMAGE"]])
    # an old export lists only the socket and writes a stale target_slot: matching is by name
    export = workflow([empty(1, [7]), node(2, "ImageBlur", inputs=[sock("image", IMAGE, 7)],
                                           outputs=[out(IMAGE)], widgets=[4, 2.0])],
                      [[7, 1, 0, 2, 5, "IMAGE"]])
    expected = {"1": empty_api(), "2": {"class_type": "ImageBlur",
                                        "inputs": {"blur_radius": 4, "sigma": 2.0, "image": ["1", 0]},
                                        "_meta": {"title": "ImageBlur"}}}
    assert convert(autosave) == expected
    assert convert(export) == expected


def test_linked_widget_input_takes_the_link():
    data = workflow([node(1, "PrimitiveInt", outputs=[out(INT, [4])], widgets=[77, "fixed"]),
                     node(2, "KSampler", inputs=[sock("model", "MODEL", None),
                                                 sock("seed", INT, 4, widget=True)],
                          widgets=[156680208700286, "randomize", 20, 8, "euler", "normal", 1])],
                    [[4, 1, 0, 2, 1, "INT"]])
    result = convert(data)
    assert result["1"]["inputs"] == {"value": 77}
    assert result["2"]["inputs"] == {"seed": ["1", 0], "steps": 20, "cfg": 8, "sampler_name": "euler",
                                     "scheduler": "normal", "denoise": 1}


def test_pre_1_16_converted_widget_input_named_by_widget():
    data = workflow([node(1, "PrimitiveInt", outputs=[out(INT, [4])], widgets=[77, "fixed"]),
                     node(2, "ImageBlur", inputs=[sock("image", IMAGE, None),
                                                  {"name": "radius label", "type": "INT", "link": 4,
                                                   "widget": {"name": "blur_radius"}}],
                          widgets=[3, 1.5])],
                    [[4, 1, 0, 2, 1, "INT"]])
    assert convert(data)["2"]["inputs"] == {"blur_radius": ["1", 0], "sigma": 1.5}


def test_node_without_inputs_list_names_links_by_canonical_slot():
    data = workflow([empty(1, [1]), node(2, "SaveImage", widgets=["x"])], [[1, 1, 0, 2, 0, "IMAGE"]])
    assert convert(data)["2"] == save_api(["1", 0], "x")


def test_modes_1_and_3_queue_like_0():
    data = workflow([empty(1, [1]), blur(2, 1, [2], mode=1), save(3, 2)],
                    [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]])
    data["nodes"][2]["mode"] = 3
    assert set(convert(data)) == {"1", "2", "3"}


def test_dangling_link_and_missing_origin_are_dropped():
    data = workflow([save(3, 42), save(4, 8)], [[8, 77, 0, 4, 0, "IMAGE"]])
    assert convert(data) == {"3": save_api(None), "4": save_api(None)}


def test_stale_link_to_a_missing_target_is_ignored():
    """A link entry whose target node does not exist feeds nothing (ComfyUI's
    image_flux2_klein_image_edit_9b_distilled template has one inside its subgraph): it is dropped,
    as the frontend drops it on load, and the rest converts."""
    data = copy.deepcopy(MINIMAL_UI)
    data["links"].append([5, 1, 0, 9, 0, "IMAGE"])
    data["nodes"][0]["outputs"][0]["links"].append(5)
    assert convert(data) == {"1": EMPTY_64, "2": save_api(["1", 0], "demo")}
    assert "5" not in parse_ui_workflow(data).links
    inner = copy.deepcopy(subgraph_workflow())
    inner["definitions"]["subgraphs"][0]["links"].append(
        {"id": 9, "origin_id": 1, "origin_slot": 0, "target_id": 79, "target_slot": 0, "type": "IMAGE"})
    assert convert(inner) == convert(subgraph_workflow())


# -- virtual nodes --------------------------------------------------------------------------------


def test_reroute_chain():
    data = workflow([empty(1, [1]),
                     node(10, "Reroute", inputs=[sock("", "*", 1)], outputs=[out(IMAGE, [2])]),
                     node(11, "Reroute", inputs=[sock("", "*", 2)], outputs=[out(IMAGE, [3])]),
                     save(3, 3)],
                    [[1, 1, 0, 10, 0, "IMAGE"], [2, 10, 0, 11, 0, "IMAGE"], [3, 11, 0, 3, 0, "IMAGE"]])
    assert convert(data) == {"1": empty_api(), "3": save_api(["1", 0])}


def test_unconnected_reroute_gives_no_input():
    data = workflow([node(10, "Reroute", inputs=[sock("", "*", None)], outputs=[out(IMAGE, [3])]),
                     save(3, 3)], [[3, 10, 0, 3, 0, "IMAGE"]])
    assert convert(data) == {"3": save_api(None)}


def test_primitive_node_values_land_in_widget_inputs():
    primitive = {"id": 20, "type": "PrimitiveNode", "mode": 0, "pos": [0, 0], "size": [1, 1],
                 "outputs": [{"name": "INT", "type": "INT", "links": [5, 6],
                              "widget": {"name": "seed"}}],
                 "properties": {"Run widget replace on values": False},
                 "widgets_values": [123456, "fixed"]}
    through_reroute = node(21, "Reroute", inputs=[sock("", "*", 6)], outputs=[out(INT, [7])])
    sampler = node(3, "KSampler", inputs=[sock("model", "MODEL", None), sock("seed", INT, 5, widget=True)],
                   widgets=[1, "randomize", 20, 8, "euler", "normal", 1])
    noise = node(4, "NoiseText", inputs=[sock("noise_seed", INT, 7, widget=True)],
                 outputs=[out(STRING)], widgets=[2, "fixed", "t"])
    data = workflow([primitive, through_reroute, sampler, noise],
                    [[5, 20, 0, 3, 1, "INT"], [6, 20, 0, 21, 0, "INT"], [7, 21, 0, 4, 0, "INT"]])
    result = convert(data)
    assert set(result) == {"3", "4"}
    assert result["3"]["inputs"] == {"seed": 123456, "steps": 20, "cfg": 8, "sampler_name": "euler",
                                     "scheduler": "normal", "denoise": 1}
    assert result["4"]["inputs"] == {"noise_seed": 123456, "text": "t"}


def test_notes_are_skipped():
    data = copy.deepcopy(MINIMAL_UI)
    data["nodes"].append(node(7, "Note", widgets=["remember"]))
    data["nodes"].append(node(8, "MarkdownNote", widgets=["# hi"]))
    assert set(convert(data)) == {"1", "2"}


def test_extra_virtual_types_can_be_skipped():
    data = copy.deepcopy(MINIMAL_UI)
    data["nodes"].append(node(7, "Fast Groups Bypasser (rgthree)"))
    assert set(ui_to_api(data, REGISTRY, virtual_types=["Fast Groups Bypasser (rgthree)"])) == {"1", "2"}


# -- bypass and mute ------------------------------------------------------------------------------


def test_bypassed_node_is_rewired_to_its_upstream():
    data = workflow([empty(1, [1]), blur(2, 1, [2], mode=4), save(3, 2)],
                    [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]])
    assert convert(data) == {"1": empty_api(), "3": save_api(["1", 0])}


def test_chain_of_two_bypassed_nodes_and_a_reroute():
    data = workflow([empty(1, [1]), blur(2, 1, [2], mode=4),
                     node(10, "Reroute", inputs=[sock("", "*", 2)], outputs=[out(IMAGE, [3])]),
                     blur(4, 3, [4], mode=4), save(5, 4)],
                    [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 10, 0, "IMAGE"], [3, 10, 0, 4, 0, "IMAGE"],
                     [4, 4, 0, 5, 0, "IMAGE"]])
    assert convert(data) == {"1": empty_api(), "5": save_api(["1", 0])}


def test_bypass_prefers_an_input_of_the_wanted_type():
    data = workflow([node(1, "LoadImage", outputs=[out(IMAGE, [1]), out(MASK, [2])],
                          widgets=["dog.png", "image"]),
                     node(2, "MaskedInvert", inputs=[sock("mask", MASK, 2), sock("image", IMAGE, 1)],
                          outputs=[out(IMAGE, [3])], mode=4),
                     save(3, 3)],
                    [[1, 1, 0, 2, 1, "IMAGE"], [2, 1, 1, 2, 0, "MASK"], [3, 2, 0, 3, 0, "IMAGE"]])
    result = convert(data)
    assert set(result) == {"1", "3"}
    assert result["3"] == save_api(["1", 0])


def test_bypass_prefers_exact_type_over_a_wildcard_input():
    # an unknown bypassed class: only the file's slots are known; "*" is compatible but not exact
    data = workflow([empty(1, [1], size=8), empty(2, [2], size=16),
                     node(3, "LoadImage", outputs=[out(IMAGE), out(MASK, [3])], widgets=["cat.png"]),
                     node(4, "Switchy", inputs=[sock("mask", MASK, 3), sock("any", "*", 1),
                                                sock("image", IMAGE, 2)],
                          outputs=[out(IMAGE, [4])], mode=4),
                     save(5, 4)],
                    [[1, 1, 0, 4, 1, "IMAGE"], [2, 2, 0, 4, 2, "IMAGE"], [3, 3, 1, 4, 0, "MASK"],
                     [4, 4, 0, 5, 0, "IMAGE"]])
    assert convert(data)["5"] == save_api(["2", 0])


def test_bypass_feeding_a_wildcard_input_takes_the_same_index():
    data = workflow([node(1, "LoadImage", outputs=[out(IMAGE, [1]), out(MASK, [2])], widgets=["cat.png"]),
                     node(2, "MaskedInvert", inputs=[sock("mask", MASK, 2), sock("image", IMAGE, 1)],
                          outputs=[out(IMAGE, [3])], mode=4),
                     node(3, "PreviewAny", inputs=[sock("source", "*", 3)])],
                    [[1, 1, 0, 2, 1, "IMAGE"], [2, 1, 1, 2, 0, "MASK"], [3, 2, 0, 3, 0, "*"]])
    assert convert(data)["3"]["inputs"] == {"source": ["1", 1]}


def test_bypass_prefers_the_input_at_the_output_index():
    data = workflow([empty(1, [1], size=8), empty(2, [2], size=16),
                     node(3, "Swap", inputs=[sock("a", IMAGE, 1), sock("b", IMAGE, 2)],
                          outputs=[out(IMAGE), out(IMAGE, [3])], mode=4),
                     save(4, 3)],
                    [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "IMAGE"], [3, 3, 1, 4, 0, "IMAGE"]])
    assert convert(data)["4"] == save_api(["2", 0])


def test_bypass_uses_the_declared_type_not_the_file_slot_type():
    # the save node's slot says "*", but SaveImage declares IMAGE: the bypass must skip the MASK
    data = workflow([node(1, "LoadImage", outputs=[out(IMAGE, [1]), out(MASK, [2])], widgets=["cat.png"]),
                     node(2, "MaskedInvert", inputs=[sock("mask", MASK, 2), sock("image", IMAGE, 1)],
                          outputs=[out(IMAGE, [3])], mode=4),
                     node(3, "SaveImage", inputs=[sock("images", "*", 3)], widgets=["p"])],
                    [[1, 1, 0, 2, 1, "IMAGE"], [2, 1, 1, 2, 0, "MASK"], [3, 2, 0, 3, 0, "IMAGE"]])
    assert convert(data)["3"] == save_api(["1", 0], "p")


def test_bypass_without_a_compatible_input_omits_the_input():
    data = workflow([node(1, "LoadImage", outputs=[out(IMAGE), out(MASK, [2])], widgets=["dog.png"]),
                     node(2, "MaskOnly", inputs=[sock("mask", MASK, 2)], outputs=[out(IMAGE, [3])],
                          mode=4),
                     save(3, 3)],
                    [[2, 1, 1, 2, 0, "MASK"], [3, 2, 0, 3, 0, "IMAGE"]])
    assert convert(data)["3"] == save_api(None)


def test_muted_node_and_its_outgoing_links_are_dropped():
    data = workflow([empty(1, [1]), blur(2, 1, [2], mode=2), save(3, 2)],
                    [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]])
    assert convert(data) == {"1": empty_api(), "3": save_api(None)}


def test_muted_source_of_a_widget_input_removes_the_input():
    data = workflow([node(1, "PrimitiveInt", outputs=[out(INT, [4])], widgets=[77, "fixed"], mode=2),
                     node(2, "ImageBlur", inputs=[sock("image", IMAGE, None),
                                                  sock("blur_radius", INT, 4, widget=True)],
                          widgets=[3, 1.5])],
                    [[4, 1, 0, 2, 1, "INT"]])
    assert convert(data) == {"2": {"class_type": "ImageBlur", "inputs": {"sigma": 1.5},
                                   "_meta": {"title": "ImageBlur"}}}


def test_bypass_through_muted_upstream_drops_the_link():
    data = workflow([node(1, "EmptyImage", outputs=[out(IMAGE, [1])], widgets=[8, 8, 1, 0], mode=2),
                     blur(2, 1, [2], mode=4), save(3, 2)],
                    [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]])
    assert convert(data) == {"3": save_api(None)}


# -- unknown classes and subgraphs ----------------------------------------------------------------


def test_unknown_class_is_kept_with_raw_widget_values():
    data = workflow([empty(1, [1]),
                     node(2, "FancyUpscale", inputs=[sock("image", IMAGE, 1)], outputs=[out(IMAGE)],
                          widgets=[2.0, "lanczos"], title="Upscale!")],
                    [[1, 1, 0, 2, 0, "IMAGE"]])
    assert convert(data)["2"] == {"class_type": "FancyUpscale", "inputs": {"image": ["1", 0]},
                                  "_meta": {"title": "Upscale!", "widgets_values": [2.0, "lanczos"]}}


def subgraph_workflow(outer_mode: int = 0) -> dict[str, Any]:
    definition = {
        "id": "8a1f-blur-twice", "name": "Blur twice", "version": 1, "state": {},
        "inputNode": {"id": -10, "bounding": [0, 0, 10, 10]},
        "outputNode": {"id": -20, "bounding": [0, 0, 10, 10]},
        "inputs": [{"id": "in-0", "name": "image", "type": "IMAGE", "linkIds": [1]}],
        "outputs": [{"id": "out-0", "name": "IMAGE", "type": "IMAGE", "linkIds": [3]}],
        "widgets": [],
        "nodes": [blur(1, 1, [2]), node(2, "ImageBlur", inputs=[sock("image", IMAGE, 2)],
                                        outputs=[out(IMAGE, [3])], widgets=[1, 0.5])],
        "links": [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0,
                   "type": "IMAGE"},
                  {"id": 2, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0,
                   "type": "IMAGE"},
                  {"id": 3, "origin_id": 2, "origin_slot": 0, "target_id": -20, "target_slot": 0,
                   "type": "IMAGE"}],
    }
    return workflow([empty(1, [1]),
                     node(5, "8a1f-blur-twice", inputs=[sock("image", IMAGE, 1)],
                          outputs=[out(IMAGE, [2])], mode=outer_mode),
                     save(6, 2)],
                    [[1, 1, 0, 5, 0, "IMAGE"], [2, 5, 0, 6, 0, "IMAGE"]],
                    definitions={"subgraphs": [definition]})


def test_subgraph_is_flattened_with_outer_inner_ids():
    assert convert(subgraph_workflow()) == {
        "1": empty_api(),
        "5:1": {"class_type": "ImageBlur", "inputs": {"blur_radius": 3, "sigma": 1.5, "image": ["1", 0]},
                "_meta": {"title": "ImageBlur"}},
        "5:2": {"class_type": "ImageBlur", "inputs": {"blur_radius": 1, "sigma": 0.5, "image": ["5:1", 0]},
                "_meta": {"title": "ImageBlur"}},
        "6": save_api(["5:2", 0]),
    }


def test_bypassed_subgraph_node_passes_its_input_through():
    assert convert(subgraph_workflow(outer_mode=4)) == {"1": empty_api(), "6": save_api(["1", 0])}


def test_muted_subgraph_node_drops_its_contents():
    assert convert(subgraph_workflow(outer_mode=2)) == {"1": empty_api(), "6": save_api(None)}


def test_subgraph_output_naming_a_missing_link_feeds_nothing():
    """The pattern of the package's ``video_ltx2_i2v_lora`` template: the subgraph's output slot lists link 3 in
    ``linkIds``, but the definition's links lack it (and the inner node's output lists no links). The frontend
    resolves a subgraph output through the links it finds for the slot (``SubgraphNode.resolveSubgraphOutputLink``:
    none here), so the outer input is left out of the prompt (ComfyUI then reports it missing); nothing is
    guessed from the slot's type."""
    data = subgraph_workflow()
    definition = data["definitions"]["subgraphs"][0]
    definition["links"] = [link for link in definition["links"] if link["id"] != 3]
    definition["nodes"][1]["outputs"][0]["links"] = []
    api = convert(data)
    assert api["6"] == save_api(None)
    assert api["5:2"]["inputs"]["image"] == ["5:1", 0]


def test_proxy_widget_value_reaches_the_other_targets_of_its_subgraph_input():
    """Today's frontend saves a promoted widget as ``properties.proxyWidgets`` with its value left on the
    inner node (the subgraph node's own ``widgets_values`` empty). A subgraph input that feeds such a
    widget and also a socket (ComfyUI's ERNIE-Image templates: width → EmptyFlux2LatentImage.width and
    PreviewAny.source) gives the socket the widget's value."""
    definition = {
        "id": "sized", "name": "Sized", "version": 1, "state": {},
        "inputNode": {"id": -10, "bounding": [0, 0, 10, 10]},
        "outputNode": {"id": -20, "bounding": [0, 0, 10, 10]},
        "inputs": [{"id": "in-0", "name": "width", "type": "INT", "linkIds": [1, 2]}],
        "outputs": [], "widgets": [],
        "nodes": [node(1, "EmptyImage", inputs=[sock("width", INT, 1, widget=True)], outputs=[out(IMAGE)],
                       widgets=[96, 64, 1, 0]),
                  node(2, "PreviewAny", inputs=[sock("source", "*", 2)])],
        "links": [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0,
                   "type": "INT"},
                  {"id": 2, "origin_id": -10, "origin_slot": 0, "target_id": 2, "target_slot": 0,
                   "type": "*"}],
    }
    outer = node(5, "sized", inputs=[], outputs=[], widgets=[],
                 properties={"proxyWidgets": [["1", "width"]]})
    api = convert(workflow([outer], [], definitions={"subgraphs": [definition]}))
    assert api["5:1"]["inputs"]["width"] == 96
    assert api["5:2"]["inputs"] == {"source": 96}
    # the subgraph node's own value, where it has one, still wins (older files)
    outer["widgets_values"] = [128]
    api = convert(workflow([outer], [], definitions={"subgraphs": [definition]}))
    assert api["5:1"]["inputs"]["width"] == 128 and api["5:2"]["inputs"] == {"source": 128}


# -- detection ------------------------------------------------------------------------------------


def test_detectors():
    api = convert(MINIMAL_UI)
    assert is_ui_workflow(MINIMAL_UI) and not is_api_workflow(MINIMAL_UI)
    assert is_api_workflow(api) and not is_ui_workflow(api)
    assert not is_ui_workflow([]) and not is_api_workflow([])
    assert not is_api_workflow({}) and not is_api_workflow({"1": {"inputs": {}}})
    assert not is_ui_workflow({"nodes": {}})


# -- malformed input ------------------------------------------------------------------------------


def broken(mutate) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL_UI)
    mutate(data)
    return data


def _reroute_loop(data: dict[str, Any]) -> None:
    data["nodes"] += [node(10, "Reroute", inputs=[sock("", "*", 2)], outputs=[out(IMAGE, [3])]),
                      node(11, "Reroute", inputs=[sock("", "*", 3)], outputs=[out(IMAGE, [2, 4])])]
    data["nodes"][1]["inputs"][0]["link"] = 4
    data["links"] += [[2, 11, 0, 10, 0, "*"], [3, 10, 0, 11, 0, "*"], [4, 11, 0, 2, 0, "IMAGE"]]


@pytest.mark.parametrize("data, words", [
    ("not a workflow", ["JSON object", "str"]),
    ({"nodes": {"1": {}}}, ["'nodes' list"]),
    (broken(lambda d: d.update(links={"1": []})), ["'links'", "list"]),
    (broken(lambda d: d["links"].__setitem__(0, [1, 1, 0, 2, "IMAGE"])), ["links[0]", "5 entries"]),
    (broken(lambda d: d["links"].__setitem__(0, "x")), ["links[0]"]),
    (broken(lambda d: d["links"].__setitem__(0, [1, 1, "0", 2, 0, "IMAGE"])), ["link 1", "origin slot"]),
    (broken(lambda d: d["links"].append([1, 1, 0, 2, 1, "IMAGE"])), ["link 1", "twice"]),
    (broken(lambda d: d["nodes"].append("node")), ["nodes[2]"]),
    (broken(lambda d: d["nodes"][0].pop("id")), ["nodes[0]", "'id'"]),
    (broken(lambda d: d["nodes"][1].pop("type")), ["node 2", "'type'"]),
    (broken(lambda d: d["nodes"][1].update(id=1)), ["node id 1", "twice"]),
    (broken(lambda d: d["nodes"][1].update(inputs={"images": 1})), ["node 2", "'inputs'"]),
    (broken(lambda d: d["nodes"][1].update(inputs=[["images", "IMAGE", 1]])), ["node 2", "inputs[0]"]),
    (broken(lambda d: d["nodes"][1]["inputs"][0].update(link=[1])), ["node 2", "images", "link"]),
    (broken(lambda d: d["nodes"][0].update(outputs="IMAGE")), ["node 1", "'outputs'"]),
    (broken(lambda d: d["nodes"][0].update(widgets_values=64)), ["node 1", "widgets_values"]),
    (broken(lambda d: d["nodes"][0].update(mode="bypass")), ["node 1", "mode"]),
    (broken(_reroute_loop), ["loop", "link"]),
    (broken(lambda d: d.update(definitions={"subgraphs": {"x": {}}})), ["definitions.subgraphs"]),
])
def test_malformed_workflows_raise_a_format_error(data, words):
    with pytest.raises(WorkflowFormatError) as info:
        convert(data)
    for word in words:
        assert word in str(info.value)


def test_links_to_unnamed_slots_of_an_unknown_node_without_inputs_raise():
    data = workflow([empty(1, [1]), node(2, "Mystery")], [[1, 1, 0, 2, 0, "IMAGE"]])
    with pytest.raises(WorkflowFormatError, match="node 2 .*Mystery"):
        convert(data)


def test_link_to_a_slot_past_the_declared_inputs_raises():
    data = workflow([empty(1, [1]), node(2, "SaveImage")], [[1, 1, 0, 2, 5, "IMAGE"]])
    with pytest.raises(WorkflowFormatError, match="link 1 .*slot 5 of node 2"):
        convert(data)


def test_parse_gives_typed_nodes_and_links():
    graph = parse_ui_workflow(MINIMAL_UI)
    assert list(graph.nodes) == ["1", "2"]
    link = graph.links["1"]
    assert (link.origin, link.origin_slot, link.target, link.target_slot, link.type) == \
        ("1", 0, "2", 0, "IMAGE")
    assert graph.nodes["2"].inputs[0].link == "1"
