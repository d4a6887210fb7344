"""Socket types: the names nodes use for their inputs and outputs, and the rule for matching them.

Names and matching follow ComfyUI (COMFY_COMPAT §1): equal strings match; otherwise both sides are
split on ``,`` and match when the sets intersect; ``*`` on either side matches everything.
"""

from __future__ import annotations

IMAGE = "IMAGE"
MASK = "MASK"
LATENT = "LATENT"
CONDITIONING = "CONDITIONING"
MODEL = "MODEL"
CLIP = "CLIP"
VAE = "VAE"
LLM = "LLM"
STRING = "STRING"
INT = "INT"
FLOAT = "FLOAT"
BOOLEAN = "BOOLEAN"
COMBO = "COMBO"
ANY = "*"

#: Types whose values may be written as JSON constants in a workflow (widgets on the canvas).
WIDGET_TYPES = frozenset({INT, FLOAT, STRING, BOOLEAN, COMBO})

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1


def types_match(produced: str, wanted: str) -> bool:
    """True when an output of type ``produced`` may feed an input of type ``wanted``."""
    if produced == wanted or produced == ANY or wanted == ANY:
        return True
    if "," not in produced and "," not in wanted:
        return False
    return bool(set(produced.split(",")) & set(wanted.split(",")))
