"""Blocked values: an output that says "do not run what consumes me" (ComfyUI's ``ExecutionBlocker``).

A node returns an :class:`ExecutionBlocker` in place of an output value (or instead of its whole
result). A node that receives one — as an input value, or as an item of a list input — is not called
for that item: every output of that call is the blocker too, so whatever hangs below it does not run
either, output nodes included. A blocker with a ``message`` is reported once, by the first node it
reaches (an ``ExecutionBlocked`` event; ComfyUI's clients see an ``execution_error`` whose
``exception_type`` is ``ExecutionBlocked``), and travels on silently (message ``None``); the prompt
still ends in success. Custom node packs import it as ``comfy_execution.graph.ExecutionBlocker``.
"""

from __future__ import annotations

from typing import Any, Iterable


class ExecutionBlocker:
    """A value that blocks its consumers; ``message``: reported once, or ``None`` to block silently."""

    __slots__ = ("message",)

    def __init__(self, message: str | None) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ExecutionBlocker({self.message!r})"


def find_blocker(values: Iterable[Any], whole_lists: bool) -> ExecutionBlocker | None:
    """The first blocker among one call's input values (inside the lists when ``whole_lists``)."""
    for value in values:
        if isinstance(value, ExecutionBlocker):
            return value
        if whole_lists and isinstance(value, list):
            for item in value:
                if isinstance(item, ExecutionBlocker):
                    return item
    return None
