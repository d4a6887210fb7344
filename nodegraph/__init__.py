"""nodegraph: a ComfyUI-compatible node-graph engine for language-and-vision pipelines.

The engine (this package) knows nothing about diffusion: node API, registry, workflow formats,
validation, executor, cache, events, CLI. The node library lives in the ``nodes`` package.
"""

__version__ = "0.1.0"
