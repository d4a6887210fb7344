"""A small, safe arithmetic evaluator for ComfyMathExpression: ``ast`` parsing and a whitelist, never ``eval``.

:func:`check_expression` parses a formula and refuses anything outside the whitelist; :func:`evaluate`
runs the checked tree over named numbers. The grammar is the numeric part of what ComfyUI's node
accepts (ComfyUI evaluates with ``simpleeval.simple_eval`` and its default operators, with a function
whitelist of its own):

* numbers (int, float) and ``True``/``False``; the names given (``a`` … ``z``, ``values``);
* ``+ - * / // % **``, the bitwise ``& | ^ << >>`` (whole numbers and booleans), unary ``+ - ~ not``,
  comparisons (``< <= == != > >=``, chained), ``in``/``not in`` (membership in a list), ``and``/``or``,
  ``x if cond else y``;
* list/tuple literals, ``values[i]`` (an integer index into a list) and slices ``values[i:j:k]``;
* calls of :data:`FUNCTIONS`, with positional and keyword arguments (``round(a, ndigits=2)``):
  ``sum min max abs round pow sqrt ceil floor log log2 log10 sin cos tan int float`` (``sum`` takes a
  list or several numbers).

Refused, although simpleeval would take them: strings and f-strings, ``None``, ``is``/``is not``,
attribute access (``a.real``), ``**kwargs``/``*args``. None of them can make the numeric result
ComfyUI's node requires, except by attribute tricks this evaluator does not allow. Also refused:
comprehensions, lambdas, assignments, any other name or function. Limits keep one expression from
hogging the CPU, as simpleeval's do: ``**`` with a base or exponent above :data:`MAX_POWER`,
``pow()`` with an exponent above :data:`MAX_EXPONENT` (ComfyUI's cap on the function), shifts by more
than :data:`MAX_SHIFT` bits or of a number above :data:`MAX_SHIFT_BASE`, and integers above
:data:`MAX_INT_BITS` bits are errors.
"""

from __future__ import annotations

import ast
import math
import operator
import sys
from typing import Any, Callable, Mapping

#: largest exponent ``pow()`` accepts (ComfyUI's ``_safe_pow`` cap)
MAX_EXPONENT = 4000
#: largest base or exponent ``**`` accepts (simpleeval's ``MAX_POWER``, which guards ComfyUI's ``**``)
MAX_POWER = 4_000_000
#: largest shift count of ``<<``/``>>`` and largest number shifted (simpleeval's ``MAX_SHIFT``/``MAX_SHIFT_BASE``)
MAX_SHIFT = 10_000
MAX_SHIFT_BASE = int(sys.float_info.max)
#: largest integer an intermediate result may be, in bits
MAX_INT_BITS = 1 << 16


class ExpressionError(ValueError):
    """The expression is malformed, uses something outside the whitelist, or cannot be computed."""


def _sum(*args: Any) -> Any:
    """``sum(values)`` and ``sum(a, b, c)`` alike."""
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        return sum(args[0])
    return sum(args)


def _pow(base: Any, exponent: Any) -> Any:
    if isinstance(exponent, (int, float)) and abs(exponent) > MAX_EXPONENT:
        raise ExpressionError(f"pow(): exponent {exponent} is above the limit {MAX_EXPONENT}")
    return _power(base, exponent)


def _shift(op: Callable[[Any, Any], Any], symbol: str) -> Callable[[Any, Any], Any]:
    def shift(value: Any, count: Any) -> Any:
        if isinstance(count, (int, float)) and abs(count) > MAX_SHIFT:
            raise ExpressionError(f"a shift by {count} bits is above the limit {MAX_SHIFT}")
        if isinstance(value, (int, float)) and abs(value) > MAX_SHIFT_BASE:
            raise ExpressionError(f"{value} {symbol} {count}: the number shifted is too large")
        return op(value, count)
    return shift


def _invert(value: Any) -> Any:
    """``~x``; a boolean counts as its integer (``~True`` is -2, without Python's deprecation warning)."""
    return ~int(value) if isinstance(value, bool) else operator.invert(value)


def _contains(item: Any, container: Any) -> bool:
    if not isinstance(container, list):
        raise ExpressionError("'in' needs a list on its right, e.g. a in values")
    return item in container


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sum": _sum, "min": min, "max": max, "abs": abs, "round": round, "pow": _pow,
    "sqrt": math.sqrt, "ceil": math.ceil, "floor": math.floor, "log": math.log, "log2": math.log2,
    "log10": math.log10, "sin": math.sin, "cos": math.cos, "tan": math.tan, "int": int, "float": float,
}

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_, ast.BitXor: operator.xor, ast.LShift: _shift(operator.lshift, "<<"),
    ast.RShift: _shift(operator.rshift, ">>"),
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg,
                                             ast.Not: operator.not_, ast.Invert: _invert}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Eq: operator.eq, ast.NotEq: operator.ne,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: _contains,
    ast.NotIn: lambda item, container: not _contains(item, container),
}
_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
            ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<",
            ast.RShift: ">>"}
_UNARY_SYMBOLS = {ast.UAdd: "+", ast.USub: "-", ast.Not: "not", ast.Invert: "~"}
_COMPARE_SYMBOLS = {ast.Lt: "<", ast.LtE: "<=", ast.Eq: "==", ast.NotEq: "!=", ast.Gt: ">", ast.GtE: ">=",
                    ast.In: "in", ast.NotIn: "not in"}


def _power(base: Any, exponent: Any) -> Any:
    for value in (base, exponent):
        if isinstance(value, (int, float)) and abs(value) > MAX_POWER:
            raise ExpressionError(f"'**' with a base or exponent above the limit {MAX_POWER}: too large")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if base.bit_length() * exponent > MAX_INT_BITS:
            raise ExpressionError(f"{base} ** {exponent} is too large (over {MAX_INT_BITS} bits)")
    return base ** exponent


def check_expression(expression: str) -> ast.Expression:
    """Parse ``expression`` and check every part against the whitelist; the tree, or ExpressionError."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("the expression is empty; write a formula such as 'a + b'")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"the expression is not valid: {exc.msg} (column {exc.offset})") from None
    for node in ast.walk(tree):
        _check_node(node)
    return tree


def names_used(tree: ast.Expression) -> set[str]:
    """The variable names an expression reads (function names excluded)."""
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}


def _check_node(node: ast.AST) -> None:
    if isinstance(node, (ast.Expression, ast.Load, ast.BoolOp, ast.And, ast.Or, ast.IfExp,
                         ast.List, ast.Tuple, ast.Name, ast.Subscript, ast.Slice)):
        return
    if isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise ExpressionError(f"the comparison {type(op).__name__} is not allowed; use "
                                      f"{' '.join(_COMPARE_SYMBOLS.values())}")
        return
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float, bool):
            raise ExpressionError(f"only numbers and True/False may be written in the expression, "
                                  f"not {node.value!r}")
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY and not isinstance(node.op, ast.Pow):
            raise ExpressionError(f"the operator {type(node.op).__name__} is not allowed; use "
                                  f"{' '.join(_SYMBOLS.values())}")
        return
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise ExpressionError(f"the operator {type(node.op).__name__} is not allowed; use "
                                  f"{' '.join(_UNARY_SYMBOLS.values())}")
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            shown = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ExpressionError(f"the function {shown!r} is not allowed; use one of "
                                  f"{', '.join(FUNCTIONS)}")
        if any(k.arg is None for k in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
            raise ExpressionError(f"{node.func.id}() takes plain arguments (no *args or **kwargs)")
        return
    if isinstance(node, ast.keyword):
        return
    if isinstance(node, tuple(_COMPARE)) or isinstance(node, (ast.operator, ast.unaryop)):
        return
    raise ExpressionError(f"{type(node).__name__} ({ast.unparse(node) if isinstance(node, ast.expr) else ''}) "
                          "is not allowed in a math expression")


def evaluate(tree: ast.Expression, names: Mapping[str, Any]) -> Any:
    """Evaluate a tree from :func:`check_expression` with ``names`` bound; ExpressionError on failure."""
    try:
        return _eval(tree.body, names)
    except ExpressionError:
        raise
    except ZeroDivisionError:
        raise ExpressionError("division by zero") from None
    except OverflowError:
        raise ExpressionError("a result is too large for a float") from None
    except (ValueError, TypeError) as exc:
        raise ExpressionError(str(exc)) from None


def _eval(node: ast.expr, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ExpressionError(f"unknown name {node.id!r}")
        return names[node.id]
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, names), _eval(node.right, names)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int) \
                and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise ExpressionError(f"a product is too large (over {MAX_INT_BITS} bits)")
        if isinstance(left, list) or isinstance(right, list):
            raise ExpressionError(f"'{_SYMBOLS[type(node.op)]}' needs numbers, not a list")
        if isinstance(node.op, (ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift)) \
                and (isinstance(left, float) or isinstance(right, float)):
            raise ExpressionError(f"'{_SYMBOLS[type(node.op)]}' needs whole numbers, not {left!r} and "
                                  f"{right!r}; use int(...) first")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
        value = _eval(node.operand, names)
        if not isinstance(value, int):
            raise ExpressionError(f"'~' needs a whole number, not {value!r}; use int(...) first")
        return _invert(value)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, names))
    if isinstance(node, ast.BoolOp):
        value = _eval(node.values[0], names)
        for item in node.values[1:]:
            if isinstance(node.op, ast.And) and not value:
                return value
            if isinstance(node.op, ast.Or) and value:
                return value
            value = _eval(item, names)
        return value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, names)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, names) if _eval(node.test, names) else _eval(node.orelse, names)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(item, names) for item in node.elts]
    if isinstance(node, ast.Subscript):
        container = _eval(node.value, names)
        if isinstance(node.slice, ast.Slice):
            if not isinstance(container, list):
                raise ExpressionError("slicing works on a list, e.g. values[1:]")
            return container[_slice(node.slice, names)]
        index = _eval(node.slice, names)
        if not isinstance(container, list) or type(index) is not int:
            raise ExpressionError("indexing works on a list with a whole number, e.g. values[0]")
        if not -len(container) <= index < len(container):
            raise ExpressionError(f"index {index} is outside the list of {len(container)} item(s)")
        return container[index]
    if isinstance(node, ast.Call):
        args = [_eval(a, names) for a in node.args]
        kwargs = {k.arg: _eval(k.value, names) for k in node.keywords}
        return FUNCTIONS[node.func.id](*args, **kwargs)  # type: ignore[union-attr]
    raise ExpressionError(f"{type(node).__name__} is not allowed in a math expression")


def _slice(node: ast.Slice, names: Mapping[str, Any]) -> slice:
    bounds = []
    for part in (node.lower, node.upper, node.step):
        value = None if part is None else _eval(part, names)
        if value is not None and type(value) is not int:
            raise ExpressionError(f"a slice bound must be a whole number, not {value!r}")
        bounds.append(value)
    if bounds[2] == 0:
        raise ExpressionError("a slice step cannot be zero")
    return slice(*bounds)
