"""Primitive nodes: a single constant value (int, float, string, boolean) as an output.

They mirror ComfyUI's ``comfy_extras/nodes_primitive.py``: category ``utils/primitive``, one input
named ``value`` without a default, one output named after its type.
"""

from __future__ import annotations

import sys

from nodegraph.node import BOOLEAN, FLOAT, INT, STRING, Input, Node, Output

CATEGORY = "utils/primitive"


class PrimitiveInt(Node):
    """An integer constant."""

    category = CATEGORY
    display_name = "Int"
    value = Input(INT, min=-sys.maxsize, max=sys.maxsize, control_after_generate=True)
    outputs = (Output(INT),)

    def execute(self, value: int) -> tuple:
        return (value,)


class PrimitiveFloat(Node):
    """A floating-point constant."""

    category = CATEGORY
    display_name = "Float"
    value = Input(FLOAT, min=-sys.maxsize, max=sys.maxsize)
    outputs = (Output(FLOAT),)

    def execute(self, value: float) -> tuple:
        return (value,)


class PrimitiveString(Node):
    """A one-line string constant."""

    category = CATEGORY
    display_name = "String"
    value = Input(STRING)
    outputs = (Output(STRING),)

    def execute(self, value: str) -> tuple:
        return (value,)


class PrimitiveStringMultiline(Node):
    """A multi-line string constant."""

    category = CATEGORY
    display_name = "String (Multiline)"
    value = Input(STRING, multiline=True)
    outputs = (Output(STRING),)

    def execute(self, value: str) -> tuple:
        return (value,)


class PrimitiveBoolean(Node):
    """A boolean constant."""

    category = CATEGORY
    display_name = "Boolean"
    value = Input(BOOLEAN)
    outputs = (Output(BOOLEAN),)

    def execute(self, value: bool) -> tuple:
        return (value,)
