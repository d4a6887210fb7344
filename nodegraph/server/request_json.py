"""Request bodies as JSON, with a nesting-depth guard, parsed off the event loop when they are big.

Python's JSON decoder recurses once per nesting level and raises ``RecursionError`` past about a
thousand levels; a value nested a few hundred levels deep parses, but every later recursive walk of
it (validation, ``repr`` in an error sentence, ``json.dumps`` into the job store) can then blow the
stack. :func:`parse_json` turns both into one clean :class:`JsonBodyError` (a 400): the decoder's own
``RecursionError``, and any parsed value deeper than :data:`MAX_JSON_DEPTH` (checked with an explicit
stack, no recursion). ComfyUI's prompts are a handful of levels deep (body → prompt → node → inputs →
value), its canvas workflows a dozen or so.
"""

from __future__ import annotations

from typing import Any

from .. import jsontext

#: the deepest nesting a request body may have (objects and arrays); far above any real workflow
MAX_JSON_DEPTH = 100

#: bodies at least this large are parsed on a thread, so a big prompt does not stall the event loop
OFF_LOOP_BYTES = 64 * 1024


class JsonBodyError(ValueError):
    """A body that is not JSON, or nested too deeply; ``kind`` is the error type the client sees."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) nests objects/arrays more than ``limit`` levels (one level at a
    time, no recursion)."""
    if type(value) is not dict and type(value) is not list:
        return False
    level = [value]
    depth = 1
    while True:
        level = [item for node in level for item in (node.values() if type(node) is dict else node)
                 if type(item) is dict or type(item) is list]
        if not level:
            return False
        depth += 1
        if depth > limit:
            return True


def parse_json(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The parsed body; raises :class:`JsonBodyError` (``invalid_json`` or ``json_too_deep``)."""
    try:
        value = jsontext.loads(raw)
    except RecursionError:
        raise JsonBodyError("json_too_deep", f"the body nests JSON objects/arrays too deeply (more than "
                            f"{max_depth} levels are refused)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonBodyError("invalid_json", f"the body is not valid JSON: {exc}") from None
    if too_deep(value, max_depth):
        raise JsonBodyError("json_too_deep", f"the body nests JSON objects/arrays more than {max_depth} "
                            "levels deep; a workflow never needs that many")
    return value
