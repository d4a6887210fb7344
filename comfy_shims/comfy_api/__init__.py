"""ComfyUI's ``comfy_api`` for V3 custom node packs: ``comfy_api.latest`` (and the same surface as
``comfy_api.v0_0_2`` / ``comfy_api.v0_0_1``): ``io``, ``ui``, ``ComfyExtension``, ``ComfyAPI``."""
