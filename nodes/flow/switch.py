"""Flow-control nodes: Switch (lazy: only the branch it takes is evaluated)."""

from __future__ import annotations

from typing import Any

from nodegraph.node import Input, Node, Output
from nodegraph.types import ANY, BOOLEAN


class Switch(Node):
    """Pass on_true or on_false depending on switch; only the chosen branch is computed."""

    category = "utils/logic"
    switch = Input(BOOLEAN, default=True)
    on_true = Input(ANY, lazy=True, force_input=True)
    on_false = Input(ANY, lazy=True, force_input=True)
    outputs = (Output(ANY, "output"),)

    def check_lazy(self, switch: bool, on_true: Any = None, on_false: Any = None) -> list[str]:
        wanted = "on_true" if switch else "on_false"
        value = on_true if switch else on_false
        return [wanted] if value is None else []

    def execute(self, switch: bool, on_true: Any = None, on_false: Any = None) -> tuple:
        return (on_true if switch else on_false,)
