"""JSON text in and out on the server's per-prompt path, with orjson when it is installed.

A 400-node prompt is parsed from its request body, encoded into the job store, parsed again when a
runner claims it, and every WebSocket message is encoded: with the standard library that is about two
milliseconds of CPU per such prompt, with orjson (a compiled encoder/decoder, not a dependency of
nodegraph: used only where installed) a fifth of it. Both give the same JSON for every JSON value:

* :func:`dumps`: compact (no spaces), non-ASCII characters as UTF-8, not ``\\u`` escapes (``json``'s
  ``ensure_ascii=False``); what neither can encode goes through ``default`` (as in :func:`json.dumps`).
  Where orjson refuses a value the standard encoder takes (integers beyond 64 bits, dict keys that are
  not strings), the standard encoder is used. One difference: NaN and ±Infinity, which are not JSON,
  are written ``null`` by orjson and ``NaN``/``Infinity`` by the standard encoder.
* :func:`loads`: ``str`` or ``bytes``; what orjson refuses (``NaN`` literals, integers beyond 64 bits,
  non-UTF-8 text) is handed to :func:`json.loads`, so the result and its errors (``ValueError``,
  ``RecursionError``) are the standard decoder's. Some orjson releases (3.8) parse nesting without a
  depth limit, recursively, and crash the process on a value nested some ten thousand levels deep: a
  text holding more than :data:`MAX_FAST_CONTAINERS` opening brackets (so possibly nested that deep;
  a 400-node prompt holds about 1,200) goes to :func:`json.loads`, which stops cleanly.
"""

from __future__ import annotations

import json
from typing import Any, Callable

try:  # optional: much faster, same results (see the module docstring)
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

#: whether orjson is in use
FAST = _orjson is not None

#: texts with more opening brackets than this are parsed by the standard decoder (module docstring)
MAX_FAST_CONTAINERS = 4096

_std_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

if _orjson is not None:
    # datetimes and dataclasses go through ``default``, as with the standard encoder (orjson would
    # write them its own way)
    _OPTIONS = _orjson.OPT_PASSTHROUGH_DATETIME | _orjson.OPT_PASSTHROUGH_DATACLASS
    _orjson_dumps, _orjson_loads, _OrjsonError = _orjson.dumps, _orjson.loads, _orjson.JSONDecodeError


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """Compact JSON text of ``value`` (see the module docstring)."""
    if _orjson is not None:
        try:
            return _orjson_dumps(value, default=default, option=_OPTIONS).decode()
        except TypeError:  # orjson.JSONEncodeError: a value only the standard encoder takes (or none)
            pass
    if default is None:
        return _std_encoder.encode(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=default)


def loads(text: str | bytes | bytearray) -> Any:
    """The value of JSON ``text`` (see the module docstring)."""
    if _orjson is not None:
        if isinstance(text, str):
            containers = text.count("{") + text.count("[")
        else:
            containers = text.count(b"{") + text.count(b"[")
        if containers <= MAX_FAST_CONTAINERS:
            try:
                return _orjson_loads(text)
            except _OrjsonError:
                pass
    return json.loads(text)
