"""ComfyUI's string nodes (``utils/string``): concatenate, substring, length, trim, replace, contains,
and JsonExtractString. Names, inputs, defaults and outputs are ComfyUI's; the regex nodes are in
:mod:`.regex`.

Stricter than ComfyUI where it silently does something surprising: ``StringReplace`` refuses an empty
``find`` (Python would insert ``replace`` between every character), and ``JsonExtractString`` reports
a text without a JSON object or a missing key instead of returning an empty string.
"""

from __future__ import annotations

import json
from typing import Any

from nodegraph.node import COMBO, INT, Input, Node, Output
from nodegraph.types import BOOLEAN, STRING

CATEGORY = "utils/string"
TRIM_MODES = ["Both", "Left", "Right"]


class StringConcatenate(Node):
    """Joins string_a and string_b with the delimiter between them (an empty delimiter joins them directly)."""

    category = CATEGORY
    display_name = "Concatenate"
    string_a = Input(STRING, multiline=True)
    string_b = Input(STRING, multiline=True)
    delimiter = Input(STRING, default="")
    outputs = (Output(STRING),)

    def execute(self, string_a: str, string_b: str, delimiter: str = "") -> tuple:
        return (delimiter.join((string_a, string_b)),)


class StringSubstring(Node):
    """The characters from start up to (not including) end, as Python slices them: negative positions
    count from the end, positions past the end stop at the end."""

    category = CATEGORY
    display_name = "Substring"
    string = Input(STRING, multiline=True)
    start = Input(INT)
    end = Input(INT)
    outputs = (Output(STRING),)

    def execute(self, string: str, start: int, end: int) -> tuple:
        return (string[start:end],)


class StringLength(Node):
    """The number of characters in the string."""

    category = CATEGORY
    display_name = "Length"
    string = Input(STRING, multiline=True)
    outputs = (Output(INT, "length"),)

    def execute(self, string: str) -> tuple:
        return (len(string),)


class StringTrim(Node):
    """Removes whitespace at both ends, the left end or the right end."""

    category = CATEGORY
    display_name = "Trim"
    string = Input(STRING, multiline=True)
    mode = Input(COMBO, choices=TRIM_MODES)
    outputs = (Output(STRING),)

    def execute(self, string: str, mode: str) -> tuple:
        if mode == "Both":
            return (string.strip(),)
        if mode == "Left":
            return (string.lstrip(),)
        if mode == "Right":
            return (string.rstrip(),)
        raise ValueError(f"input 'mode' is {mode!r}; use one of {', '.join(TRIM_MODES)}")


class StringReplace(Node):
    """Replaces every occurrence of find (literal text) with replace. An empty find is an error (ComfyUI
    would insert replace between every character). For patterns use Regex Replace."""

    category = CATEGORY
    display_name = "Replace"
    string = Input(STRING, multiline=True)
    find = Input(STRING, multiline=True)
    replace = Input(STRING, multiline=True)
    outputs = (Output(STRING),)

    @classmethod
    def validate_inputs(cls, find: str | None = None, **_: Any) -> bool | str:
        if find == "":
            return "input 'find' is empty; give the text to replace"
        return True

    def execute(self, string: str, find: str, replace: str) -> tuple:
        if find == "":
            raise ValueError("input 'find' is empty; give the text to replace")
        return (string.replace(find, replace),)


class StringContains(Node):
    """True when substring occurs in string (optionally ignoring case)."""

    category = CATEGORY
    display_name = "Contains"
    string = Input(STRING, multiline=True)
    substring = Input(STRING, multiline=True)
    case_sensitive = Input(BOOLEAN, default=True)
    outputs = (Output(BOOLEAN, "contains"),)

    def execute(self, string: str, substring: str, case_sensitive: bool = True) -> tuple:
        if case_sensitive:
            return (substring in string,)
        return (substring.casefold() in string.casefold(),)


def first_json_object(text: str) -> dict | None:
    """The first JSON object in ``text``: tried from each ``{`` in turn, text around it ignored."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def json_value_text(value: Any) -> str:
    """A JSON value as text: strings as they are, ``null`` as empty, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class JsonExtractString(Node):
    """The value of key in the first JSON object found in json_string (text around it, such as Markdown
    fences or a model's prose, is skipped). Strings come out as they are, null as an empty string,
    numbers, booleans, arrays and objects as JSON text. Unlike ComfyUI, a text without a JSON object or
    an object without the key is an error naming the input, not a silent empty string."""

    category = CATEGORY
    display_name = "Extract Text from JSON"
    json_string = Input(STRING, multiline=True)
    key = Input(STRING)
    outputs = (Output(STRING),)

    def execute(self, json_string: str, key: str) -> tuple:
        found = first_json_object(json_string)
        if found is None:
            raise ValueError(f"input 'json_string' holds no JSON object: {json_string[:80]!r}")
        if key not in found:
            keys = ", ".join(repr(k) for k in list(found)[:20]) or "(none)"
            raise ValueError(f"input 'key' is {key!r}, which the JSON object does not have; its keys: {keys}")
        return (json_value_text(found[key]),)
