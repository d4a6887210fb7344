"""A workflow saved by ComfyUI's official frontend (1.58) runs here as it runs there.

``workflows/frontend_features.ui.json`` was built in the frontend and saved by it (Ctrl+S): txt2img with
its KSampler and Empty Latent in a subgraph, the KSampler in a subgraph nested inside that, ``steps``
promoted up both levels as a widget of the outer subgraph node (value 4) and ``seed`` promoted by the
frontend itself, ``control_after_generate`` "increment", a PrimitiveNode feeding the positive prompt's
text widget, a legacy Reroute on the VAE link, a bypassed ImageInvert, a muted second SaveImage, a
group, and app mode's saved inputs (``extra.linearData``). The prompt the frontend built from it (its
``graphToPrompt``, recorded when the file was made) is what our library's conversion must produce; the
browser test checks the same against what the page posts."""

from __future__ import annotations

import json
import pathlib
import time

from nodegraph.registry import default_registry
from nodegraph.workflow.ui_format import ui_to_api

FIXTURE = pathlib.Path(__file__).parent / "workflows" / "frontend_features.ui.json"

#: what the frontend posted for the fixture (class types and inputs; ``_meta`` left out)
FRONTEND_PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "shapes-world (built-in)"}},
    "6": {"class_type": "CLIPTextEncode",
          "inputs": {"text": "a small blue square at the bottom on a white background", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["14:15:3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "txt2img", "images": ["8", 0]}},
    "14:5": {"class_type": "EmptyLatentImage",
             "inputs": {"width": 64, "height": 64, "batch_size": 1, "vae": ["4", 2]}},
    "14:15:3": {"class_type": "KSampler",
                "inputs": {"seed": 7, "steps": 4, "cfg": 5, "sampler_name": "euler", "scheduler": "normal",
                           "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                           "latent_image": ["14:5", 0]}},
}


def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def strip_meta(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def test_the_library_converts_it_as_the_frontend_does():
    assert strip_meta(ui_to_api(fixture(), default_registry())) == FRONTEND_PROMPT


def test_promoted_widget_values_reach_the_nested_node():
    """The value lives on the outer subgraph node (widgets_values, widgets_values_named); the inner
    KSampler's own widgets_values still say 20."""
    workflow = fixture()
    outer = next(n for n in workflow["nodes"] if n["id"] == 14)
    outer["widgets_values_named"]["steps"] = 9
    outer["widgets_values"] = [outer["widgets_values_named"][k] for k in ("seed", "steps")]
    assert ui_to_api(workflow, default_registry())["14:15:3"]["inputs"]["steps"] == 9
    del outer["widgets_values_named"]  # older files: by position among the promoted inputs
    assert ui_to_api(workflow, default_registry())["14:15:3"]["inputs"]["steps"] == 9


def test_it_runs_when_posted_as_a_canvas_workflow(server, client):
    """The server converts a UI workflow posted as the prompt with the same library (our canvas and
    `nodegraph run` load files this way)."""
    prompt_id = client.queue(fixture())["prompt_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{prompt_id}").json()
        if job["status"] not in ("pending", "in_progress"):
            break
        time.sleep(0.1)
    assert job["status"] == "completed", job
    assert strip_meta(job["workflow"]["prompt"]) == FRONTEND_PROMPT
    image = job["preview_output"]
    assert image["nodeId"] == "9" and image["filename"].startswith("txt2img_")
    assert (pathlib.Path(server.config.paths.output_dir) / image["filename"]).is_file()
