"""nodegraph's built-in node library (import name ``nodegraph_nodes``; the folder is ``nodes/``).

One package per family (``image``, ``io``, ``primitives``, ``flow``, ``diffusion``, ``langvision``,
``safety``, ``upscale``, ``mask``, ``sampling``, ``dit``, ``media``, ``api``), each holding its node modules and their helpers;
``shapes`` holds the built-in shapes-world models (no nodes). Families register through the ``nodegraph.nodes`` entry-point group
that third-party packs use too (``pyproject.toml``); the engine core never imports this package.
The import name is not ``nodes`` so that ComfyUI custom node packs can ``import nodes`` and get the
ComfyUI-compatible module (docs/architecture.md).
"""

#: the built-in families, in registration order (each has a ``node_modules()`` function)
FAMILIES = ("primitives", "image", "io", "flow", "diffusion", "langvision", "safety", "upscale", "mask", "sampling", "dit", "media", "api")
