"""Language and vision models: LLM prompt writing, captioning/VQA, CLIP vision and scoring, image-prompt
fusion, the design loop's scoring and state, and the helpers they share (model folders, dtypes, generation).

Registered through the ``nodegraph.nodes`` entry point ``langvision`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import llm, vision, fusion, design, design_loop

    return [llm, vision, fusion, design, design_loop]
