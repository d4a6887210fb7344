"""Text utility nodes: StringConcat, StringReplace, TextList (a list output) and ShowText (displays text)."""

from __future__ import annotations

import re
from typing import Any

from nodegraph.node import Input, Node, NodeResult, Output
from nodegraph.types import BOOLEAN, STRING


class StringConcat(Node):
    """Join two texts with a separator (empty parts are skipped)."""

    category = "utils/text"
    a = Input(STRING, default="", multiline=True)
    b = Input(STRING, default="", multiline=True)
    separator = Input(STRING, default=", ")
    outputs = (Output(STRING),)

    def execute(self, a, b, separator=", ") -> tuple:
        return (separator.join(p for p in (a, b) if p),)


class StringReplace(Node):
    """Replace text (literal, or a regular expression) in a string."""

    category = "utils/text"
    text = Input(STRING, default="", multiline=True)
    find = Input(STRING, default="")
    replace = Input(STRING, default="")
    regex = Input(BOOLEAN, default=False)
    outputs = (Output(STRING),)

    @classmethod
    def validate_inputs(cls, find=None, regex=None, **_: Any) -> bool | str:
        if regex and isinstance(find, str):
            try:
                re.compile(find)
            except re.error as exc:
                return f"input 'find' is not a valid regular expression: {exc}"
        return True

    def execute(self, text, find, replace="", regex=False) -> tuple:
        if not find:
            return (text,)
        if regex:
            try:
                return (re.sub(find, replace, text),)
            except re.error as exc:
                raise ValueError(f"input 'find' is not a valid regular expression: {exc}") from exc
        return (text.replace(find, replace),)


class TextList(Node):
    """Split a text into a list of lines (or by a delimiter); each downstream node runs once per item."""

    category = "utils/text"
    text = Input(STRING, default="a fox\na cat", multiline=True)
    delimiter = Input(STRING, default="\\n", tooltip="\\n for lines; any other text splits on it.")
    outputs = (Output(STRING, "texts", is_list=True),)

    def execute(self, text, delimiter="\\n") -> tuple:
        sep = "\n" if delimiter in ("\\n", "\n", "") else delimiter
        items = [t.strip() for t in text.split(sep)]
        items = [t for t in items if t]
        if not items:
            raise ValueError("input 'text' has no items; write at least one line")
        return (items,)


class ShowText(Node):
    """Display text on the node (every item of a list); passes it on."""

    category = "utils/text"
    output_node = True
    takes_lists = True
    text = Input(STRING, force_input=True)
    outputs = (Output(STRING, "text", is_list=True),)

    def execute(self, text) -> NodeResult:
        items = [t if isinstance(t, str) else str(t) for t in text]
        return NodeResult(outputs=(items,), ui={"text": items})
