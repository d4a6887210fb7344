"""Load a workflow from a file or a parsed object: API or UI format, ``.json`` or ``.png``.

A PNG written by nodegraph or ComfyUI carries the API prompt in the ``prompt`` text chunk and the
canvas workflow in ``workflow``; the API prompt is what runs (it is exactly what ran), the canvas
workflow is kept so that saved outputs embed it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WorkflowFormatError
from ..registry import NodeRegistry
from .ui_format import is_ui_workflow, ui_to_api

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_WORKFLOW_BYTES = 64 * 1024 * 1024


@dataclass
class LoadedWorkflow:
    api: dict[str, Any]
    ui: dict[str, Any] | None
    source: str


def load_workflow_data(data: Any, registry: NodeRegistry, source: str = "<data>") -> LoadedWorkflow:
    """Accept an API-format dict, a UI-format dict, or ``{"prompt": …, "workflow": …}``."""
    if is_ui_workflow(data):
        return LoadedWorkflow(ui_to_api(data, registry), data, source)
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict) and \
            (set(data) <= {"prompt", "workflow", "extra_data", "client_id"}):
        workflow = data.get("workflow") if isinstance(data.get("workflow"), dict) else None
        return LoadedWorkflow(data["prompt"], workflow, source)
    if isinstance(data, dict):  # API format; validation reports malformed nodes one by one
        return LoadedWorkflow(data, None, source)
    raise WorkflowFormatError(f"{source}: a workflow is a JSON object, not {type(data).__name__}")


def load_workflow_file(path: str | Path, registry: NodeRegistry) -> LoadedWorkflow:
    path = Path(path)
    if not path.exists():
        raise WorkflowFormatError(f"workflow file {path} does not exist")
    if not path.is_file():
        raise WorkflowFormatError(f"{path} is not a file")
    if path.stat().st_size > MAX_WORKFLOW_BYTES:
        raise WorkflowFormatError(f"{path} is larger than {MAX_WORKFLOW_BYTES >> 20} MiB; not a workflow")
    raw = path.read_bytes()
    if raw.startswith(PNG_SIGNATURE):
        return _load_png(raw, path, registry)
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise WorkflowFormatError(f"{path} is neither JSON text nor a PNG image") from None
    except ValueError as exc:
        raise WorkflowFormatError(f"{path} is not valid JSON: {exc}") from None
    return load_workflow_data(data, registry, str(path))


def _load_png(raw: bytes, path: Path, registry: NodeRegistry) -> LoadedWorkflow:
    from ..pngmeta import read_png_text

    try:
        texts = read_png_text(raw)
    except ValueError as exc:
        raise WorkflowFormatError(f"{path}: {exc}") from None
    ui = _json_chunk(texts, "workflow", path)
    prompt = _json_chunk(texts, "prompt", path)
    if isinstance(prompt, dict) and prompt:
        return LoadedWorkflow(prompt, ui if isinstance(ui, dict) else None, str(path))
    if isinstance(ui, dict):
        return LoadedWorkflow(ui_to_api(ui, registry), ui, str(path))
    raise WorkflowFormatError(f"{path} is a PNG without an embedded workflow (no 'prompt' or "
                              "'workflow' text chunk)")


def _json_chunk(texts: dict[str, str], key: str, path: Path) -> Any:
    if key not in texts:
        return None
    try:
        return json.loads(texts[key])
    except ValueError as exc:
        raise WorkflowFormatError(f"{path}: the embedded '{key}' is not valid JSON: {exc}") from None
