"""Prompt emphasis syntax, as ComfyUI parses it (plus A1111's ``[word]``).

``(word)`` multiplies the weight by 1.1, ``[word]`` divides it by 1.1, ``(word:1.3)`` sets it to 1.3
(absolute, as in ComfyUI), groups nest, ``\\(`` ``\\)`` ``\\[`` ``\\]`` are literal brackets.
:func:`parse_prompt_weights` returns ``[(text, weight), …]`` segments; equal neighbours are merged.
"""

from __future__ import annotations

_ESCAPES = {"\\(": "\0\1", "\\)": "\0\2", "\\[": "\0\3", "\\]": "\0\4"}
_OPEN = {"(": ")", "[": "]"}


def _escape(text: str) -> str:
    for seq, code in _ESCAPES.items():
        text = text.replace(seq, code)
    return text


def _unescape(text: str) -> str:
    for seq, code in _ESCAPES.items():
        text = text.replace(code, seq[1])
    return text


def _split_groups(text: str) -> list[str]:
    """Top-level pieces: plain runs and whole bracket groups (``(...)`` / ``[...]``)."""
    pieces: list[str] = []
    current = ""
    stack: list[str] = []
    for char in text:
        if char in _OPEN:
            if not stack and current:
                pieces.append(current)
                current = ""
            stack.append(_OPEN[char])
            current += char
        elif stack and char == stack[-1]:
            stack.pop()
            current += char
            if not stack:
                pieces.append(current)
                current = ""
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _split_groups(text):
        closed = len(piece) >= 2 and piece[0] in _OPEN and piece[-1] == _OPEN[piece[0]]
        if not closed:
            out.append((piece, weight))
            continue
        inner = piece[1:-1]
        if piece[0] == "[":
            out += _weights(inner, weight / 1.1)
            continue
        new_weight = weight * 1.1
        colon = inner.rfind(":")
        if colon > 0:
            try:
                new_weight = float(inner[colon + 1:])
                inner = inner[:colon]
            except ValueError:
                pass
        out += _weights(inner, new_weight)
    return out


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """``"a (red:1.5) fox"`` → ``[("a ", 1.0), ("red", 1.5), (" fox", 1.0)]``."""
    merged: list[tuple[str, float]] = []
    for piece, weight in _weights(_escape(text), 1.0):
        piece = _unescape(piece)
        if not piece:
            continue
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged
