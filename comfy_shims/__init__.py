"""nodegraph's versions of the ComfyUI modules custom node packs import, under ComfyUI's names.

``comfy_shims.folder_paths`` is what a pack gets for ``import folder_paths``, ``comfy_shims.comfy.utils``
for ``import comfy.utils``, and so on: nodegraph's loader answers ComfyUI's names with these modules
through an import finder (``nodegraph.comfy_compat.finder``), only in a process that loads custom
nodes. They are our own code with ComfyUI's names and behaviour, reaching the engine through
``nodegraph.comfy_compat`` (the folders, the running node, the server). Nothing here is importable
under a ComfyUI name otherwise, so a ComfyUI install is never shadowed.
"""
