"""ComfyUI's everyday string/logic/number nodes (nodes/primitives/{text_ops,regex,numbers,logic}.py):
their /object_info entries against ComfyUI's specs (written out below), and each node run through the
engine or called with a test context."""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

import pytest

from nodegraph.builder import Graph
from nodegraph.context import NodeContext, Paths, RunContext
from nodegraph.errors import ValidationFailed
from nodegraph.events import EventBus
from nodegraph.registry import default_registry
from nodegraph_nodes.primitives import logic, numbers, regex, safe_math, text_ops

# -- ComfyUI's specs ------------------------------------------------------------------------------
# (name → required inputs, optional inputs, outputs, output names), each input as ComfyUI's
# /object_info writes it: [TYPE or [choices], {options}].

LETTERS = "abcdefghijklmnopqrstuvwxyz"
ASPECTS = ["1:1 (Square)", "3:2 (Photo)", "4:3 (Standard)", "16:9 (Widescreen)", "21:9 (Ultrawide)",
           "2:3 (Portrait Photo)", "3:4 (Portrait Standard)", "9:16 (Portrait Widescreen)"]

COMFY_SPECS = {
    "ComfySwitchNode": (
        {"switch": ["BOOLEAN", {}]},
        {"on_false": ["*", {"lazy": True}], "on_true": ["*", {"lazy": True}]},
        ["*"], ["output"]),
    "ComfyMathExpression": (
        {"expression": ["STRING", {"default": "a + b", "multiline": True}]},
        {f"values.{c}": ["FLOAT,INT,BOOLEAN", {}] for c in LETTERS},
        ["FLOAT", "INT", "BOOLEAN"], ["FLOAT", "INT", "BOOL"]),
    "ComfyNumberConvert": (
        {"value": ["INT,FLOAT,STRING,BOOLEAN", {}]}, {}, ["FLOAT", "INT"], ["FLOAT", "INT"]),
    "CustomCombo": (
        {"choice": [[], {}]}, {"index": ["INT", {"default": 0}]}, ["STRING", "INT"], ["STRING", "INDEX"]),
    "ResolutionSelector": (
        {"aspect_ratio": [ASPECTS, {"default": "1:1 (Square)"}],
         "megapixels": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 16.0, "step": 0.1}],
         "multiple": ["INT", {"default": 8, "min": 8, "max": 128, "step": 4}],
         "minimum": ["INT", {"default": 256, "min": 32, "max": 4096, "step": 32}]},
        {}, ["INT", "INT"], ["width", "height"]),
    "SeedNode": (
        {"seed": ["INT", {"min": 0, "max": sys.maxsize, "control_after_generate": True}]}, {},
        ["INT"], ["seed"]),
    "PrimitiveStringMultiline": ({"value": ["STRING", {"multiline": True}]}, {}, ["STRING"], ["STRING"]),
    "StringConcatenate": (
        {"string_a": ["STRING", {"multiline": True}], "string_b": ["STRING", {"multiline": True}],
         "delimiter": ["STRING", {"default": ""}]}, {}, ["STRING"], ["STRING"]),
    "StringReplace": (
        {"string": ["STRING", {"multiline": True}], "find": ["STRING", {"multiline": True}],
         "replace": ["STRING", {"multiline": True}]}, {}, ["STRING"], ["STRING"]),
    "StringContains": (
        {"string": ["STRING", {"multiline": True}], "substring": ["STRING", {"multiline": True}],
         "case_sensitive": ["BOOLEAN", {"default": True}]}, {}, ["BOOLEAN"], ["contains"]),
    "StringLength": ({"string": ["STRING", {"multiline": True}]}, {}, ["INT"], ["length"]),
    "StringSubstring": (
        {"string": ["STRING", {"multiline": True}], "start": ["INT", {}], "end": ["INT", {}]}, {},
        ["STRING"], ["STRING"]),
    "StringTrim": (
        {"string": ["STRING", {"multiline": True}], "mode": [["Both", "Left", "Right"], {"default": "Both"}]},
        {}, ["STRING"], ["STRING"]),
    "RegexMatch": (
        {"string": ["STRING", {"multiline": True}], "regex_pattern": ["STRING", {"multiline": True}],
         "case_insensitive": ["BOOLEAN", {"default": True}], "multiline": ["BOOLEAN", {"default": False}],
         "dotall": ["BOOLEAN", {"default": False}]}, {}, ["BOOLEAN"], ["matches"]),
    "RegexExtract": (
        {"string": ["STRING", {"multiline": True}], "regex_pattern": ["STRING", {"multiline": True}],
         "mode": [["First Match", "All Matches", "First Group", "All Groups"], {"default": "First Match"}],
         "case_insensitive": ["BOOLEAN", {"default": True}], "multiline": ["BOOLEAN", {"default": False}],
         "dotall": ["BOOLEAN", {"default": False}],
         "group_index": ["INT", {"default": 1, "min": 0, "max": 100}]}, {}, ["STRING"], ["STRING"]),
    "RegexReplace": (
        {"string": ["STRING", {"multiline": True}], "regex_pattern": ["STRING", {"multiline": True}],
         "replace": ["STRING", {"multiline": True}]},
        {"case_insensitive": ["BOOLEAN", {"default": True}], "multiline": ["BOOLEAN", {"default": False}],
         "dotall": ["BOOLEAN", {"default": False}],
         "count": ["INT", {"default": 0, "min": 0, "max": 100}]}, ["STRING"], ["STRING"]),
    "JsonExtractString": (
        {"json_string": ["STRING", {"multiline": True}], "key": ["STRING", {}]}, {}, ["STRING"], ["STRING"]),
    "CreateList": (
        {"inputs.input0": ["*", {}]}, {f"inputs.input{i}": ["*", {}] for i in range(1, 10)},
        ["*"], ["list"]),
    "GetItemFromList": ({"list": ["*", {}], "index": ["INT", {"default": 0}]}, {}, ["*"], ["*"]),
}

#: options our declarations add on top of ComfyUI's spec (tooltips: descriptive only)
IGNORED_OPTIONS = {"tooltip"}


def _comparable(spec: list) -> list:
    head, options = spec
    return [head, {k: v for k, v in options.items() if k not in IGNORED_OPTIONS}]


@pytest.mark.parametrize("name", sorted(COMFY_SPECS))
def test_object_info_matches_comfyui(name):
    required, optional, output, output_name = COMFY_SPECS[name]
    info = default_registry(packs=False).object_info(name)[name]
    got_required = {k: _comparable(v) for k, v in info["input"]["required"].items()}
    got_optional = {k: _comparable(v) for k, v in info["input"].get("optional", {}).items()}
    assert got_required == required
    assert got_optional == optional
    assert info["input_order"]["required"] == list(required)  # ComfyUI's input order
    assert info["input_order"].get("optional", []) == list(optional)
    assert info["output"] == output
    assert info["output_name"] == output_name


def test_list_nodes_declare_comfyui_list_flags():
    info = default_registry(packs=False).object_info()
    assert info["CreateList"]["output_is_list"] == [True]
    assert info["GetItemFromList"]["output_is_list"] == [False]
    assert info["ComfySwitchNode"]["experimental"] and info["CustomCombo"]["experimental"]


# -- direct calls -----------------------------------------------------------------------------------

@pytest.fixture
def make(tmp_path: Path):
    run = RunContext(prompt_id="t", bus=EventBus(), interrupt=threading.Event(), paths=Paths.under(tmp_path))

    def factory(cls):
        return cls(NodeContext(run, "1", cls.__name__))
    return factory


def test_string_nodes(make):
    assert make(text_ops.StringConcatenate).execute("a", "b", " | ") == ("a | b",)
    assert make(text_ops.StringConcatenate).execute("", "b", "-") == ("-b",)  # empty parts kept (ComfyUI)
    assert make(text_ops.StringSubstring).execute("hello world", 0, 5) == ("hello",)
    assert make(text_ops.StringSubstring).execute("hello world", -5, 100) == ("world",)
    assert make(text_ops.StringLength).execute("héllo\n") == (6,)
    trim = make(text_ops.StringTrim)
    assert [trim.execute("  x \n", m)[0] for m in ("Both", "Left", "Right")] == ["x", "x \n", "  x"]
    assert make(text_ops.StringReplace).execute("a fox, a fox", "fox", "cat") == ("a cat, a cat",)
    contains = make(text_ops.StringContains)
    assert contains.execute("A Red Fox", "red fox", True) == (False,)
    assert contains.execute("A Red Fox", "red fox", False) == (True,)


def test_string_replace_refuses_an_empty_find(make):
    with pytest.raises(ValueError, match="input 'find' is empty"):
        make(text_ops.StringReplace).execute("abc", "", "-")
    assert "input 'find'" in text_ops.StringReplace.validate_inputs(find="")


def test_regex_match_and_replace(make):
    match = make(regex.RegexMatch)
    assert match.execute("Hello\nWorld", "^world$", True, True, False) == (True,)
    assert match.execute("Hello\nWorld", "^world$", True, False, False) == (False,)
    assert match.execute("Hello", "hello", False, False, False) == (False,)
    assert match.execute("a\nb", "a.b", True, False, True) == (True,)
    replace = make(regex.RegexReplace)
    assert replace.execute("a fox and a fox", r"f(o)x", r"b\1x") == ("a box and a box",)
    assert replace.execute("x1 x2 x3", r"\d", "#", count=2) == ("x# x# x3",)
    assert replace.execute("ABC", "b", "-", case_insensitive=False) == ("ABC",)
    with pytest.raises(ValueError, match="input 'replace'"):
        replace.execute("abc", "b", r"\2")


def test_regex_extract_modes(make):
    extract = make(regex.RegexExtract)
    text = "w=512 h=768 w=64"
    assert extract.execute(text, r"w=(\d+)", "First Match") == ("w=512",)
    assert extract.execute(text, r"w=(\d+)", "All Matches") == ("512\n64",)   # group 1, as ComfyUI
    assert extract.execute(text, r"\d+", "All Matches") == ("512\n768\n64",)
    assert extract.execute(text, r"(\w)=(\d+)", "First Group", group_index=2) == ("512",)
    assert extract.execute(text, r"(\w)=(\d+)", "All Groups", group_index=1) == ("w\nh\nw",)
    assert extract.execute(text, r"z=(\d+)", "First Group") == ("",)
    with pytest.raises(ValueError, match="input 'group_index' is 3, but the pattern has 2"):
        extract.execute(text, r"(\w)=(\d+)", "First Group", group_index=3)


@pytest.mark.parametrize("cls", [regex.RegexMatch, regex.RegexExtract, regex.RegexReplace])
def test_invalid_regex_is_a_validation_error(engine, cls):
    inputs = {"string": "x", "regex_pattern": "(", "replace": "y", "mode": "First Match"}
    inputs = {k: v for k, v in inputs.items() if k in cls.INPUTS}
    g = Graph()
    g.node("Sink", value=g.node(cls.__name__, **inputs))
    with pytest.raises(ValidationFailed, match="input 'regex_pattern' is not a valid regular expression"):
        engine.run(g)


def test_json_extract_string(make):
    node = make(text_ops.JsonExtractString)
    reply = 'Sure! ```json\n{"prompt": "a fox", "steps": 20, "tags": ["a", "b"], "none": null}\n``` done'
    assert node.execute(reply, "prompt") == ("a fox",)
    assert node.execute(reply, "steps") == ("20",)
    assert node.execute(reply, "tags") == ('["a", "b"]',)
    assert node.execute(reply, "none") == ("",)
    assert node.execute('{broken {"k": true}', "k") == ("true",)   # skips a { that does not decode
    with pytest.raises(ValueError, match="input 'key' is 'missing'.*'prompt'"):
        node.execute(reply, "missing")
    with pytest.raises(ValueError, match="input 'json_string' holds no JSON object"):
        node.execute("[1, 2] no object here", "k")


def test_number_convert(make):
    node = make(numbers.ComfyNumberConvert)
    assert node.execute(True) == (1.0, 1)
    assert node.execute(7) == (7.0, 7)
    assert node.execute(-2.9) == (-2.9, -2)
    assert node.execute(" 42 ") == (42.0, 42)
    assert node.execute("3.99") == (3.99, 3)
    assert node.execute("1e3") == (1000.0, 1000)
    for bad, message in (("", "empty string"), ("abc", "not a number"), ("inf", "not a finite"),
                         ("nan", "not a finite")):
        with pytest.raises(ValueError, match=f"input 'value'.*{message}"):
            node.execute(bad)


@pytest.mark.parametrize("aspect, megapixels, multiple, minimum, expected", [
    ("1:1 (Square)", 1.0, 8, 256, (1024, 1024)),
    ("16:9 (Widescreen)", 1.0, 8, 256, (1368, 768)),
    ("9:16 (Portrait Widescreen)", 1.0, 8, 256, (768, 1368)),
    ("3:2 (Photo)", 2.0, 64, 256, (1792, 1152)),
    ("21:9 (Ultrawide)", 0.1, 8, 256, (672, 288)),   # under the minimum: the smallest exact 21:9 ≥ 256
])
def test_resolution_selector(make, aspect, megapixels, multiple, minimum, expected):
    assert make(numbers.ResolutionSelector).execute(aspect, megapixels, multiple, minimum) == expected


def test_seed_and_custom_combo(make):
    assert make(numbers.SeedNode).execute(123456789) == (123456789,)
    assert make(logic.CustomCombo).execute("Turbo", 2) == ("Turbo", 2)
    assert "input 'index'" in logic.CustomCombo.validate_inputs(choice="x", index=-1)


def test_custom_combo_takes_a_choice_of_its_own_in_the_engine(engine):
    g = Graph()
    combo = g.node("CustomCombo", choice="my own option", index=1)
    g.node("Sink", value=combo.out(0))
    g.node("Sink", value=combo.out(1))
    result = engine.run(g)
    assert result.ok, result.failure
    assert result.values[combo.id] == (["my own option"], [1])


# -- math expression --------------------------------------------------------------------------------

def run_math(engine, expression: str, **values):
    g = Graph()
    inputs = {f"values.{k}": g.node("PrimitiveFloat" if isinstance(v, float) else
                                    "PrimitiveBoolean" if isinstance(v, bool) else "PrimitiveInt", value=v)
              for k, v in values.items()}
    math_node = g.node("ComfyMathExpression", expression=expression, **inputs)
    for index in range(3):
        g.node("Sink", value=math_node.out(index))
    result = engine.run(g)
    return result, math_node


@pytest.mark.parametrize("expression, values, expected", [
    ("a + b", {"a": 2, "b": 3}, (5.0, 5, True)),
    ("a / 2", {"a": 7}, (3.5, 3, True)),
    ("a - b", {"a": 1.5, "b": 1.5}, (0.0, 0, False)),
    ("max(a, b) ** 2 + sqrt(c)", {"a": 3, "b": -4, "c": 16.0}, (13.0, 13, True)),
    ("round(a * 24) + (5 - round(a * 24) % 17) % 17", {"a": 5.0}, (124.0, 124, True)),
    ("a if b else 0", {"a": 9, "b": False}, (0.0, 0, False)),
    ("sum(values) + values[-1]", {"a": 1, "b": 2, "c": 3}, (9.0, 9, True)),
    ("floor(a) + ceil(a) + abs(-a) + int(2.7) + float(1)", {"a": 1.5}, (7.5, 7, True)),
    ("a > 1 and a < 3", {"a": 2}, (1.0, 1, True)),
    ("log2(8) + log10(100) + log(1) + sin(0) + cos(0) + tan(0) + pow(2, 3) + min(values)",
     {"a": 4}, (18.0, 18, True)),
    # ComfyUI evaluates with simpleeval's default operators; its official templates use "a & ~1" and
    # "a & -8" (round down to even / to a multiple of 8)
    ("a & ~1", {"a": 7}, (6.0, 6, True)),
    ("a & -8", {"a": 23}, (16.0, 16, True)),
    ("((a | 4) ^ 1) + (1 << 3) + (a >> 1)", {"a": 3}, (15.0, 15, True)),
    ("~b", {"b": True}, (-2.0, -2, True)),
    ("2 in values and 5 not in values", {"a": 1, "b": 2}, (1.0, 1, True)),
    ("sum(values[1:]) + values[::-1][0]", {"a": 1, "b": 2, "c": 3}, (8.0, 8, True)),
    ("round(a, ndigits=1)", {"a": 1.26}, (1.3, 1, True)),
    ("1.0001 ** 10000", {}, (1.0001 ** 10000, 2, True)),
])
def test_math_expression_runs_in_the_engine(engine, expression, values, expected):
    result, node = run_math(engine, expression, **values)
    assert result.ok, result.failure
    assert tuple(v[0] for v in result.values[node.id]) == expected


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('x')", "not allowed"),
    ("a.__class__", "not allowed"),
    ("open('x')", "'open' is not allowed"),
    ("'text'", "only numbers"),
    ("[x for x in values]", "not allowed"),
    ("a = 1", "not valid"),
    ("", "empty"),
    ("len(values)", "'len' is not allowed"),
    ("a is b", "the comparison Is is not allowed"),
    ("None", "only numbers"),
    ("a.real", "not allowed"),
    ("round(**values)", "no \\*args or \\*\\*kwargs"),
    ("width + 1", "uses 'width'"),
])
def test_math_expression_refuses_anything_off_the_whitelist(engine, expression, message):
    with pytest.raises(ValidationFailed, match=message):
        run_math(engine, expression, a=1, b=2)


@pytest.mark.parametrize("expression, values, message", [
    ("a + c", {"a": 1}, "uses 'c', which has no value; connect input 'values.c'"),
    ("a / 0", {"a": 1}, "division by zero"),
    ("2 ** 5000", {}, "too large for a float"),
    ("2 ** 5000000", {}, "above the limit 4000000"),
    ("pow(2, 5000)", {}, "exponent 5000 is above the limit 4000"),
    ("a & 1", {"a": 1.5}, "'&' needs whole numbers"),
    ("~a", {"a": 1.5}, "'~' needs a whole number"),
    ("1 << 20000", {}, "above the limit 10000"),
    ("2 in a", {"a": 1}, "'in' needs a list"),
    ("pow(9, 3999) ** 3999", {}, "too large"),
    ("1e308 * 10", {}, "not a finite number"),
    ("sqrt(a)", {"a": -1}, "math domain error"),
    ("[a, a]", {"a": 1}, "must give a number"),
])
def test_math_expression_run_time_errors_name_the_input(engine, expression, values, message):
    result, node = run_math(engine, expression, **values)
    assert not result.ok and result.failure.node_id == node.id
    assert "input 'expression'" in result.failure.exception_message
    assert message in result.failure.exception_message


def test_safe_math_never_touches_python_eval(monkeypatch):
    import builtins

    def refuse(*_):
        raise AssertionError("eval must not be called")
    monkeypatch.setattr(builtins, "eval", refuse)
    tree = safe_math.check_expression("a * (b + 1)")
    assert safe_math.evaluate(tree, {"a": 2, "b": 3}) == 8
    assert safe_math.names_used(safe_math.check_expression("max(a, values[0])")) == {"a", "values"}


# -- switch and lists through the engine ------------------------------------------------------------

def test_switch_evaluates_only_the_chosen_branch(engine, log):
    g = Graph()
    yes = g.node("Add", a=g.node("Number", value=1), b=1)
    no = g.node("Fail", value=g.node("Number", value=2))     # would fail if evaluated
    switch = g.node("ComfySwitchNode", switch=True, on_true=yes, on_false=no)
    g.node("Sink", value=switch)
    result = engine.run(g)
    assert result.ok, result.failure
    assert result.value(switch.id) == 2
    assert no.id not in result.executed
    switch.set(switch=False)
    failed = engine.run(g)
    assert failed.status == "error" and failed.failure.node_id == no.id


def test_switch_with_the_chosen_branch_unconnected_passes_none_with_a_warning(engine):
    from nodegraph.events import NodeWarning

    g = Graph()
    switch = g.node("ComfySwitchNode", switch=False, on_true=g.node("Number", value=5))
    g.node("Sink", value=switch)
    warnings = []
    result = engine.run(g, listeners=[lambda e: warnings.append(e) if isinstance(e, NodeWarning) else None])
    assert result.ok and result.value(switch.id) is None
    assert [(w.node_id, "input 'on_false' is not connected" in w.message) for w in warnings] == [(switch.id, True)]
    switch.set(switch=True)
    assert engine.run(g).value(switch.id) == 5


def test_create_list_and_get_item(engine):
    g = Graph()
    listed = g.node("CreateList", **{"inputs.input0": g.node("Range", count=3),
                                     "inputs.input1": g.node("Number", value=7)})
    plus = g.node("Add", a=listed, b=100)                  # runs once per item
    item = g.node("GetItemFromList", list=listed, index=-1)
    g.node("Sink", value=plus)
    g.node("Sink", value=item)
    result = engine.run(g)
    assert result.ok, result.failure
    assert result.values[listed.id] == ([0, 1, 2, 7],)
    assert result.values[plus.id] == ([100, 101, 102, 107],)
    assert result.value(item.id) == 7


def test_a_list_may_mix_kinds_and_list_errors_name_the_input(engine):
    g = Graph()  # as ComfyUI: a loop's state carried as one list (frames and a count), items taken back
    listed = g.node("CreateList", **{"inputs.input0": g.node("Number", value=1),
                                     "inputs.input1": g.node("Text", text="x")})
    text = g.node("GetItemFromList", list=listed, index=1)
    g.node("Sink", value=text)
    result = engine.run(g)
    assert result.ok, result.failure
    assert result.values[listed.id] == ([1, "x"],) and result.value(text.id) == "x"
    g = Graph()
    item = g.node("GetItemFromList", list=g.node("Range", count=3), index=3)
    g.node("Sink", value=item)
    result = engine.run(g)
    assert "input 'index' is 3, outside the list of 3 item(s)" in result.failure.exception_message


def test_string_nodes_chain_in_the_engine(engine):
    g = Graph()
    cat = g.node("StringConcatenate", string_a="a fox", string_b="at night", delimiter=" ")
    rep = g.node("StringReplace", string=cat, find="fox", replace="cat")
    length = g.node("StringLength", string=rep)
    number = g.node("ComfyNumberConvert", value=g.node("RegexExtract", string="size 768px",
                                                         regex_pattern=r"\d+", mode="First Match"))
    g.node("Sink", value=length)
    g.node("Sink", value=number.out(1))
    result = engine.run(g)
    assert result.ok, result.failure
    assert result.value(rep.id) == "a cat at night" and result.value(length.id) == 14
    assert result.value(number.id, 1) == 768 and math.isclose(result.value(number.id, 0), 768.0)
