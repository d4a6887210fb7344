"""Regenerates ``workflows/{txt2img_sd15,img2img,inpaint,hires_fix}{.json,.ui.json}``; from the repository root:

    python -m tests.diffusion.make_workflows

The UI files are written in ComfyUI's canvas format (:mod:`comfy_ui`); the API files are the
library's conversion of them (what ComfyUI's "Save (API)" writes). ``workflows/txt2img.json`` is not
generated: it runs the built-in shapes-world model (see ``tests/shapes``).
"""

from __future__ import annotations

import json
import pathlib

from nodegraph.registry import default_registry
from nodegraph.workflow.ui_format import ui_to_api

from tests.diffusion.comfy_ui import hires_fix_spec, img2img_spec, inpaint_spec, txt2img_spec, ui_workflow

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
WORKFLOWS = {
    "txt2img_sd15": txt2img_spec(CHECKPOINT),
    "img2img": img2img_spec(CHECKPOINT),
    "inpaint": inpaint_spec(CHECKPOINT),
    "hires_fix": hires_fix_spec(CHECKPOINT),
}


def main(out: pathlib.Path) -> None:
    registry = default_registry(packs=False)
    for name, spec in WORKFLOWS.items():
        ui = ui_workflow(spec, registry)
        api = ui_to_api(ui, registry)
        (out / f"{name}.ui.json").write_text(json.dumps(ui, indent=1) + "\n")
        (out / f"{name}.json").write_text(json.dumps(api, indent=1) + "\n")


if __name__ == "__main__":
    main(pathlib.Path(__file__).parents[2] / "workflows")
