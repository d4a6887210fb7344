"""ComfyUI's regular-expression nodes (``utils/string``): RegexMatch, RegexExtract, RegexReplace.

Patterns are Python ``re`` patterns. Stricter than ComfyUI, which answers ``False``/``""`` for a
broken pattern: an invalid ``regex_pattern`` is a validation error (a run-time error when it comes from
a link), and RegexExtract's group modes refuse a ``group_index`` the pattern does not have.
"""

from __future__ import annotations

import re
from typing import Any

from nodegraph.node import COMBO, INT, Input, Node, Output
from nodegraph.types import BOOLEAN, STRING

CATEGORY = "utils/string"
EXTRACT_MODES = ["First Match", "All Matches", "First Group", "All Groups"]


def regex_flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    flags = 0
    if case_insensitive:
        flags |= re.IGNORECASE
    if multiline:
        flags |= re.MULTILINE
    if dotall:
        flags |= re.DOTALL
    return flags


def compile_pattern(pattern: str, flags: int = 0) -> re.Pattern:
    """The compiled pattern, or a ValueError naming the input ``regex_pattern``."""
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"input 'regex_pattern' is not a valid regular expression: {exc}") from None


def check_pattern(regex_pattern: str | None) -> bool | str:
    """``validate_inputs`` for a constant pattern (a linked one arrives as ``None``)."""
    if regex_pattern is None:
        return True
    try:
        re.compile(regex_pattern)
    except re.error as exc:
        return f"input 'regex_pattern' is not a valid regular expression: {exc}"
    return True


class _RegexNode(Node):
    """A regex node: a constant ``regex_pattern`` is checked at validation."""

    abstract = True
    category = CATEGORY

    @classmethod
    def validate_inputs(cls, regex_pattern: str | None = None, **_: Any) -> bool | str:
        return check_pattern(regex_pattern)


class RegexMatch(_RegexNode):
    """True when regex_pattern matches anywhere in string. An invalid pattern is an error."""

    display_name = "Regex Match"
    string = Input(STRING, multiline=True)
    regex_pattern = Input(STRING, multiline=True)
    case_insensitive = Input(BOOLEAN, default=True)
    multiline = Input(BOOLEAN, default=False)
    dotall = Input(BOOLEAN, default=False)
    outputs = (Output(BOOLEAN, "matches"),)

    def execute(self, string: str, regex_pattern: str, case_insensitive: bool = True,
                multiline: bool = False, dotall: bool = False) -> tuple:
        pattern = compile_pattern(regex_pattern, regex_flags(case_insensitive, multiline, dotall))
        return (pattern.search(string) is not None,)


class RegexExtract(_RegexNode):
    """Text matched by regex_pattern: the first match, all matches (one per line), or capture group
    group_index of the first / every match (0 is the whole match). "All Matches" gives group 1 of each
    match when the pattern has groups, as ComfyUI does. An invalid pattern, or a group_index the pattern
    does not have in a group mode, is an error."""

    display_name = "Regex Extract"
    string = Input(STRING, multiline=True)
    regex_pattern = Input(STRING, multiline=True)
    mode = Input(COMBO, choices=EXTRACT_MODES)
    case_insensitive = Input(BOOLEAN, default=True)
    multiline = Input(BOOLEAN, default=False)
    dotall = Input(BOOLEAN, default=False)
    group_index = Input(INT, default=1, min=0, max=100)
    outputs = (Output(STRING),)

    def execute(self, string: str, regex_pattern: str, mode: str, case_insensitive: bool = True,
                multiline: bool = False, dotall: bool = False, group_index: int = 1) -> tuple:
        pattern = compile_pattern(regex_pattern, regex_flags(case_insensitive, multiline, dotall))
        if mode == "First Match":
            match = pattern.search(string)
            return (match.group(0) if match else "",)
        if mode == "All Matches":
            group = 1 if pattern.groups else 0
            return ("\n".join(m.group(group) or "" for m in pattern.finditer(string)),)
        if mode not in ("First Group", "All Groups"):
            raise ValueError(f"input 'mode' is {mode!r}; use one of {', '.join(EXTRACT_MODES)}")
        if group_index > pattern.groups:
            raise ValueError(f"input 'group_index' is {group_index}, but the pattern has "
                             f"{pattern.groups} capture group(s); use 0..{pattern.groups}")
        if mode == "First Group":
            match = pattern.search(string)
            return ((match.group(group_index) or "") if match else "",)
        return ("\n".join(m.group(group_index) or "" for m in pattern.finditer(string)),)


class RegexReplace(_RegexNode):
    """Replaces matches of regex_pattern with replace (``\\1`` or ``\\g<name>`` insert groups); count
    limits the number of replacements (0: all). An invalid pattern or replacement is an error."""

    display_name = "Regex Replace"
    string = Input(STRING, multiline=True)
    regex_pattern = Input(STRING, multiline=True)
    replace = Input(STRING, multiline=True)
    case_insensitive = Input(BOOLEAN, default=True, optional=True)
    multiline = Input(BOOLEAN, default=False, optional=True)
    dotall = Input(BOOLEAN, default=False, optional=True,
                   tooltip="When enabled, the dot (.) character will match any character including "
                           "newline characters. When disabled, dots won't match newlines.")
    count = Input(INT, default=0, min=0, max=100, optional=True,
                  tooltip="Maximum number of replacements to make. Set to 0 to replace all occurrences "
                          "(default). Set to 1 to replace only the first match, 2 for the first two "
                          "matches, etc.")
    outputs = (Output(STRING),)

    def execute(self, string: str, regex_pattern: str, replace: str, case_insensitive: bool = True,
                multiline: bool = False, dotall: bool = False, count: int = 0) -> tuple:
        pattern = compile_pattern(regex_pattern, regex_flags(case_insensitive, multiline, dotall))
        try:
            return (pattern.sub(replace, string, count=count),)
        except (re.error, IndexError) as exc:
            raise ValueError(f"input 'replace' is not a valid replacement for this pattern: {exc}") from None
