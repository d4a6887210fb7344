"""ComfyUI's logic and list nodes: ComfySwitchNode (lazy if/else), CustomCombo, CreateList, GetItemFromList.

Names, inputs and outputs are ComfyUI's. ComfyUI's "autogrow" input groups are declared as the
flat inputs its API prompts carry (``inputs.input0`` … ``inputs.input9`` for CreateList).

Stricter than ComfyUI: the switch fails, naming the input, when the branch it selects is not
connected (ComfyUI outputs ``None``); CreateList refuses lists whose items are of different kinds;
GetItemFromList refuses an index outside the list with its length.
"""

from __future__ import annotations

from typing import Any

from nodegraph.node import COMBO, INT, Input, Node, Output
from nodegraph.types import ANY, BOOLEAN, STRING

_MISSING: Any = object()

#: ComfyUI's CreateList autogrow: prefix "input", 10 slots, the first one required
CREATE_LIST_SLOTS = tuple(f"inputs.input{i}" for i in range(10))


class ComfySwitchNode(Node):
    """Passes on_true when switch is true, else on_false. Both inputs are lazy: only the chosen branch is
    computed. A chosen branch that is not connected passes nothing (``None``), as in ComfyUI — official
    templates rely on it (Wan Animate 2's loop gives no ``continue_motion`` on its first pass) —, and the
    node says so in a warning naming the input, so that a node failing on the missing value downstream
    is traced back here."""

    category = "utilities/logic"
    display_name = "If/Else Switch"
    experimental = True
    switch = Input(BOOLEAN)
    on_false = Input(ANY, lazy=True, optional=True)
    on_true = Input(ANY, lazy=True, optional=True)
    outputs = (Output(ANY, "output"),)

    def check_lazy(self, switch: bool, on_false: Any = _MISSING, on_true: Any = _MISSING) -> list[str]:
        # unconnected inputs are absent (the sentinel); connected, not yet computed ones are None
        if switch and on_true is None:
            return ["on_true"]
        if not switch and on_false is None:
            return ["on_false"]
        return []

    def execute(self, switch: bool, on_false: Any = _MISSING, on_true: Any = _MISSING) -> tuple:
        name, value = ("on_true", on_true) if switch else ("on_false", on_false)
        if value is _MISSING:
            self.ctx.warn(f"switch is {str(bool(switch)).lower()} but input '{name}' is not connected: "
                          "passing nothing (None) on")
            return (None,)
        return (value,)


class CustomCombo(Node):
    """A drop-down whose options the user writes on the canvas; outputs the chosen text and its index.
    As in ComfyUI, choice is not checked against a list (the options are the canvas's); index must not
    be negative."""

    category = "utilities"
    display_name = "Custom Combo"
    experimental = True
    #: the option widgets the canvas adds and posts (the choices themselves; unused here)
    extra_inputs = (r"option\d+",)
    choice = Input(COMBO, choices=[])
    index = Input(INT, default=0, optional=True)
    outputs = (Output(STRING, "STRING"), Output(INT, "INDEX"))

    @classmethod
    def validate_inputs(cls, choice: str | None = None, index: int | None = None) -> bool | str:
        if index is not None and index < 0:
            return f"input 'index' is {index}; an option's index is 0 or more"
        return True

    def execute(self, choice: str, index: int = 0) -> tuple:
        if index < 0:
            raise ValueError(f"input 'index' is {index}; an option's index is 0 or more")
        return (choice, index)


class CreateList(Node):
    """Joins the items of its inputs (input0, input1, … in that order) into one list; each downstream
    node then runs once per item. Inputs take lists too. Items of different kinds may be mixed, as in
    ComfyUI: official templates carry a loop's state as one list (Wan Animate 2: the frames so far and a
    frame count) and take its items back with GetItemFromList."""

    category = "utilities"
    display_name = "Create List"
    takes_lists = True
    vars().update({name: Input(ANY, optional=i > 0) for i, name in enumerate(CREATE_LIST_SLOTS)})
    outputs = (Output(ANY, "list", is_list=True),)

    def execute(self, **inputs: list) -> tuple:
        items: list = []
        for name in CREATE_LIST_SLOTS:
            items.extend(inputs.get(name) or [])
        return (items,)


class GetItemFromList(Node):
    """The item at index of a list (0 is the first; negative counts from the end). An index outside
    the list is an error giving the list's length."""

    category = "utilities"
    display_name = "Get Item From List"
    takes_lists = True
    list = Input(ANY)
    index = Input(INT, default=0)
    outputs = (Output(ANY),)

    def execute(self, list: list, index: list) -> tuple:  # noqa: A002 - ComfyUI's input name
        position = index[0]
        if not -len(list) <= position < len(list):
            raise IndexError(f"input 'index' is {position}, outside the list of {len(list)} item(s); "
                             f"use 0..{len(list) - 1}" if list else "input 'list' is empty")
        return (list[position],)
