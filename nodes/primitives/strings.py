"""Text utility nodes: StringConcat, TextList (a list output) and ShowText (displays text).

ComfyUI's StringReplace (string, find, replace) and RegexReplace live in :mod:`.text_ops` and :mod:`.regex`.
"""

from __future__ import annotations

from nodegraph.node import Input, Node, NodeResult, Output
from nodegraph.types import STRING


class StringConcat(Node):
    """Join two texts with a separator (empty parts are skipped)."""

    category = "utils/text"
    a = Input(STRING, default="", multiline=True)
    b = Input(STRING, default="", multiline=True)
    separator = Input(STRING, default=", ")
    outputs = (Output(STRING),)

    def execute(self, a, b, separator=", ") -> tuple:
        return (separator.join(p for p in (a, b) if p),)


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
