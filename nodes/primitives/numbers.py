"""ComfyUI's number nodes: ComfyMathExpression, ComfyNumberConvert, ResolutionSelector, SeedNode.

Names, inputs, defaults and outputs are ComfyUI's. ComfyMathExpression's growable ``values`` group is
declared as the flat inputs its API prompts carry: ``values.a`` … ``values.z``.
"""

from __future__ import annotations

import math
import string
import sys
from typing import Any

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import BOOLEAN, STRING

from .safe_math import FUNCTIONS, ExpressionError, check_expression, evaluate, names_used

#: ComfyUI's ``values`` autogrow: one optional input per letter, number or boolean
VALUE_LETTERS = tuple(string.ascii_lowercase)
VALUE_TYPE = "FLOAT,INT,BOOLEAN"

#: ResolutionSelector's choices, in ComfyUI's order, with their width:height
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1 (Square)": (1, 1),
    "3:2 (Photo)": (3, 2),
    "4:3 (Standard)": (4, 3),
    "16:9 (Widescreen)": (16, 9),
    "21:9 (Ultrawide)": (21, 9),
    "2:3 (Portrait Photo)": (2, 3),
    "3:4 (Portrait Standard)": (3, 4),
    "9:16 (Portrait Widescreen)": (9, 16),
}


class ComfyMathExpression(Node):
    """Evaluates a formula over the connected values a, b, c, … (numbers or booleans; all of them also
    as the list `values`). Outputs the result as FLOAT, as INT (truncated) and as BOOL (non-zero).
    Parsed with Python's ast and checked against a whitelist, never eval'd — the numeric part of
    ComfyUI's grammar (simpleeval's operators): numbers, True/False, the letters and `values`,
    + - * / // % **, the bitwise & | ^ << >> ~ on whole numbers, unary - + not, comparisons, in / not in
    a list, and/or, `x if c else y`, list literals, values[i] and values[i:j], and the functions sum min
    max abs round pow sqrt ceil floor log log2 log10 sin cos tan int float (keyword arguments allowed).
    Stricter than ComfyUI: strings, None, `is` and attribute access are refused. Anything else, a letter
    whose input is not connected, or a result that is not a finite number is an error."""

    category = "utilities"
    display_name = "Math Expression"
    expression = Input(STRING, default="a + b", multiline=True)
    vars().update({f"values.{letter}": Input(VALUE_TYPE, optional=True) for letter in VALUE_LETTERS})
    outputs = (Output(FLOAT, "FLOAT"), Output(INT, "INT"), Output(BOOLEAN, "BOOL"))

    @classmethod
    def validate_inputs(cls, expression: str | None = None, **_: Any) -> bool | str:
        if expression is None:
            return True
        try:
            tree = check_expression(expression)
        except ExpressionError as exc:
            return f"input 'expression': {exc}"
        unknown = sorted(names_used(tree) - set(VALUE_LETTERS) - {"values"})
        if unknown:
            return (f"input 'expression' uses {', '.join(map(repr, unknown))}; the names are the "
                    f"letters a..z of the values inputs and 'values' (functions: {', '.join(FUNCTIONS)})")
        return True

    def execute(self, expression: str, **values: Any) -> tuple:
        try:
            tree = check_expression(expression)
        except ExpressionError as exc:
            raise ValueError(f"input 'expression': {exc}") from None
        names: dict[str, Any] = {}
        for letter in VALUE_LETTERS:
            key = f"values.{letter}"
            if key in values and values[key] is not None:
                value = values[key]
                if not isinstance(value, (int, float)):
                    raise TypeError(f"input '{key}' is a {type(value).__name__}; it takes a number or a boolean")
                names[letter] = value
        for name in sorted(names_used(tree) - set(names) - {"values"}):
            hint = f"connect input 'values.{name}'" if name in VALUE_LETTERS else "use the letters a..z"
            raise ValueError(f"input 'expression' uses {name!r}, which has no value; {hint}")
        names["values"] = list(names.values())
        try:
            result = evaluate(tree, names)
        except ExpressionError as exc:
            raise ValueError(f"input 'expression' ({expression.strip()!r}) cannot be computed: {exc}") from None
        if not isinstance(result, (int, float)):
            raise ValueError(f"input 'expression' ({expression.strip()!r}) must give a number, "
                             f"not {type(result).__name__} {result!r}")
        try:
            as_float = float(result)
        except OverflowError:
            raise ValueError(f"input 'expression' ({expression.strip()!r}) gives a number too large "
                             "for a float") from None
        if not math.isfinite(as_float):
            raise ValueError(f"input 'expression' ({expression.strip()!r}) gives {as_float}, not a "
                             "finite number")
        return (as_float, int(result), bool(result))


class ComfyNumberConvert(Node):
    """Converts an INT, FLOAT, STRING or BOOLEAN to a FLOAT and an INT (floats and decimal strings are
    truncated; true is 1). A string must hold one finite number (surrounding spaces allowed): empty,
    non-numeric, inf and nan are errors."""

    category = "math"
    display_name = "Number Convert"
    value = Input("INT,FLOAT,STRING,BOOLEAN")
    outputs = (Output(FLOAT, "FLOAT"), Output(INT, "INT"))

    def execute(self, value: Any) -> tuple:
        if isinstance(value, bool):
            return (float(value), int(value))
        if isinstance(value, int):
            return (float(value), value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"input 'value' is {value}, not a finite number")
            return (value, int(value))
        if isinstance(value, str):
            return _parse_number(value)
        raise TypeError(f"input 'value' is a {type(value).__name__}; it takes INT, FLOAT, STRING or BOOLEAN")


def _parse_number(text: str) -> tuple[float, int]:
    stripped = text.strip()
    if not stripped:
        raise ValueError("input 'value' is an empty string; it needs a number such as '42' or '3.5'")
    try:
        as_float = float(stripped)
    except ValueError:
        raise ValueError(f"input 'value' is {text!r}, which is not a number") from None
    if not math.isfinite(as_float):
        raise ValueError(f"input 'value' is {text!r}, not a finite number")
    try:
        return as_float, int(stripped)
    except ValueError:
        return as_float, int(as_float)


def resolution_for(aspect_ratio: str, megapixels: float, multiple: int = 8, minimum: int = 256) -> tuple[int, int]:
    """Width and height near ``megapixels`` (1 MP = 1024²) with the ratio, rounded to ``multiple``;
    when a side falls under ``minimum``, the smallest size with the exact ratio, both sides multiples
    of ``multiple`` and at least ``minimum``."""
    w_ratio, h_ratio = ASPECT_RATIOS[aspect_ratio]
    scale = math.sqrt(megapixels * 1024 * 1024 / (w_ratio * h_ratio))
    width = round(w_ratio * scale / multiple) * multiple
    height = round(h_ratio * scale / multiple) * multiple
    if width < minimum or height < minimum:
        step_w = multiple // math.gcd(w_ratio, multiple)
        step_h = multiple // math.gcd(h_ratio, multiple)
        k_step = math.lcm(step_w, step_h)
        k = math.ceil(math.ceil(max(minimum / w_ratio, minimum / h_ratio)) / k_step) * k_step
        width, height = w_ratio * k, h_ratio * k
    return width, height


class ResolutionSelector(Node):
    """Calculate width and height from aspect ratio and megapixel target. Useful for setting up Empty
    Latent Image dimensions."""

    category = "utilities"
    display_name = "Resolution Selector"
    aspect_ratio = Input(COMBO, choices=list(ASPECT_RATIOS), default="1:1 (Square)",
                         tooltip="The aspect ratio for the output dimensions.")
    megapixels = Input(FLOAT, default=1.0, min=0.1, max=16.0, step=0.1,
                       tooltip="Target total megapixels. 1.0 MP ≈ 1024×1024 for square.")
    multiple = Input(INT, default=8, min=8, max=128, step=4,
                     tooltip="Nearest multiple of the result to set the selected resolution to.")
    minimum = Input(INT, default=256, min=32, max=4096, step=32,
                    tooltip="Set minimum resolution for any side to be used")
    outputs = (Output(INT, "width", tooltip="Calculated width in pixels (multiple of 8)."),
               Output(INT, "height", tooltip="Calculated height in pixels (multiple of 8)."))

    def execute(self, aspect_ratio: str, megapixels: float, multiple: int = 8, minimum: int = 256) -> tuple:
        if aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"input 'aspect_ratio' is {aspect_ratio!r}; use one of {', '.join(ASPECT_RATIOS)}")
        return resolution_for(aspect_ratio, megapixels, multiple, minimum)


class SeedNode(Node):
    """A seed value (0 … 2⁶³−1) for the nodes that take one; the canvas keeps it fixed by default."""

    category = "utilities"
    display_name = "Seed"
    seed = Input(INT, min=0, max=sys.maxsize, control_after_generate=True)
    outputs = (Output(INT, "seed"),)

    def execute(self, seed: int) -> tuple:
        return (seed,)
