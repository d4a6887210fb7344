"""How many of ComfyUI's official workflow templates nodegraph converts and validates (issue 18).

Usage::

    pip install comfyui-workflow-templates-json          # the JSON bundle only (MIT); not a nodegraph dependency
    python bench/templates.py [--templates DIR] [--json report.json] [--show-errors NAME]

``--templates`` is a folder of template ``.json`` files (default: the installed
``comfyui_workflow_templates_json`` package's ``templates/``). Each workflow is converted the way
``nodegraph run``/``validate`` converts a UI-format file (``nodegraph.workflow.loader``) and validated by
the engine's validator against empty model and input folders, so every model file a template names is
missing alike. Errors are sorted into:

* ``unknown_node`` — a class type nodegraph does not have (tabled by type and template count);
* ``model_file`` — a file combo (loader) whose value is a model file (.safetensors, .ckpt, .pt, …);
* ``input_file`` — a file combo whose value is another file (an input image, video or audio);
* ``other`` — everything else (kind and message kept in ``--json``).

A template's status is the worst it has: ``valid``, ``model_files_only``, ``files_only`` (model and input
files), ``other_errors`` (no unknown node, some other error), ``unknown_nodes``, ``not_converted``.

SD1.x/SDXL templates are those whose model files all belong to the SD 1.x / SDXL families (by file name,
``SD_FAMILY``; a template naming no model file is listed apart as model-free). For them the report says
whether each validates with at most model-file errors and, if not, what blocks it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from nodegraph.context import Paths
from nodegraph.errors import NodegraphError, ValidationFailed, WorkflowFormatError
from nodegraph.registry import NodeRegistry, default_registry
from nodegraph.validation import validate
from nodegraph.workflow.loader import load_workflow_data
from nodegraph.workflow.ui_format import is_ui_workflow

MODEL_EXT = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft|onnx|pkl)$", re.IGNORECASE)
#: File names of the SD 1.x / SDXL families (checkpoints, their VAEs, ControlNets, LoRAs, CLIP vision).
SD_FAMILY = re.compile(
    r"(^sd_xl_|sdxl|^v1-5|sd15|sd_15|sd1\.5|^sd-v1|vae-ft-mse|^clip_vision_g\.|^control_v11|^control_sd15|"
    r"^t2i-adapter|^lotus-|dreamshaper|juggernaut|realisticvision|epicrealism|lcm-lora-sd|^lcm_lora_sd)",
    re.IGNORECASE)
STATUS_ORDER = ("valid", "model_files_only", "files_only", "other_errors", "unknown_nodes", "not_converted")


@dataclass
class Problem:
    category: str  # unknown_node | model_file | input_file | other
    kind: str
    node_id: str | None
    class_type: str | None
    input_name: str | None
    message: str


@dataclass
class TemplateResult:
    name: str
    status: str
    model_files: list[str]
    problems: list[Problem] = field(default_factory=list)
    index_models: list[str] = field(default_factory=list)

    @property
    def unknown_types(self) -> list[str]:
        return sorted({p.class_type or "" for p in self.problems if p.category == "unknown_node"})

    @property
    def sd_family(self) -> bool:
        return bool(self.model_files) and all(SD_FAMILY.search(f) for f in self.model_files)


def default_templates_dir() -> Path:
    try:
        import comfyui_workflow_templates_json as bundle
    except ImportError:
        raise SystemExit("no --templates folder and comfyui-workflow-templates-json is not installed "
                         "(pip install comfyui-workflow-templates-json)") from None
    return Path(bundle.__file__).parent / "templates"


def template_files(folder: Path) -> list[Path]:
    """Every workflow file of the folder: the canvas-format ones (the bundle's index*.json catalogues,
    fuse_options.json and index_logo.json are not workflows)."""
    return sorted(p for p in folder.glob("*.json") if is_ui_workflow(json.loads(p.read_text())))


def strings(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def model_files(workflow: Any) -> list[str]:
    """The model files a template names anywhere (loader widgets, ``properties.models``, top-level models)."""
    return sorted({s.replace("\\", "/").rsplit("/", 1)[-1] for s in strings(workflow)
                   if len(s) < 300 and MODEL_EXT.search(s) and "://" not in s})


def classify(error, registry: NodeRegistry) -> str:
    if error.kind == "unknown_node_type":
        return "unknown_node"
    if error.kind == "value_not_in_list":
        cls = registry.get(error.class_type or "")
        spec = cls.INPUTS.get(error.input_name or "") if cls is not None else None
        if spec is not None and callable(spec.choices):  # a folder's file list
            value = str(error.extra.get("received_value", ""))
            return "model_file" if MODEL_EXT.search(value) else "input_file"
    if error.kind == "custom_validation_failed":  # a loader's own check that its file exists
        names = re.findall(r"[\w.\-/]+\.\w+", error.message)
        if any(MODEL_EXT.search(n) for n in names) and re.search(r"there is no|not found", error.message):
            return "model_file"
        if re.search(r"Invalid (image|video|audio) file|not found in", error.message):
            return "input_file"
    return "other"


def check_template(path: Path, registry: NodeRegistry, paths: Paths,
                   index_models: dict[str, list[str]] | None = None) -> TemplateResult:
    """Convert and validate one template file; never raises for a bad template."""
    data = json.loads(path.read_text())
    result = TemplateResult(path.stem, "valid", model_files(data), index_models=(index_models or {}).get(path.stem, []))
    try:
        api = load_workflow_data(data, registry, path.name).api
    except (WorkflowFormatError, NodegraphError, ValueError, TypeError, KeyError) as exc:
        result.status = "not_converted"
        result.problems.append(Problem("other", "not_converted", None, None, None, f"{type(exc).__name__}: {exc}"))
        return result
    try:
        validate(api, registry, paths=paths)
        return result
    except ValidationFailed as failed:
        errors = failed.errors
    for e in errors:
        result.problems.append(Problem(classify(e, registry), e.kind, e.node_id,
                                       e.class_type or (api.get(e.node_id or "", {}) or {}).get("class_type"),
                                       e.input_name, e.message))
    categories = {p.category for p in result.problems}
    if "unknown_node" in categories:
        result.status = "unknown_nodes"
    elif "other" in categories:
        result.status = "other_errors"
    elif "input_file" in categories:
        result.status = "files_only"
    else:
        result.status = "model_files_only"
    return result


def load_index(folder: Path) -> dict[str, list[str]]:
    """Template name → the model tags of its index entry (empty when there is no index.json)."""
    index = folder / "index.json"
    if not index.is_file():
        return {}
    return {t["name"]: list(t.get("models", [])) for cat in json.loads(index.read_text())
            for t in cat.get("templates", []) if "name" in t}


def run(folder: Path, registry: NodeRegistry | None = None) -> list[TemplateResult]:
    registry = registry or default_registry(packs=False)
    index = load_index(folder)
    with tempfile.TemporaryDirectory(prefix="nodegraph-templates-") as empty:
        paths = Paths(output_dir=Path(empty) / "out", input_dir=Path(empty) / "in", temp_dir=Path(empty) / "tmp",
                      models_dir=Path(empty) / "models")
        return [check_template(p, registry, paths, index) for p in template_files(folder)]


def blockers(result: TemplateResult) -> str:
    if result.status in ("valid", "model_files_only"):
        return ""
    if result.unknown_types:
        return "unknown: " + ", ".join(result.unknown_types)
    return "; ".join(f"{p.kind} [{p.node_id} {p.class_type}.{p.input_name}]"
                     for p in result.problems if p.category not in ("model_file", "input_file"))[:300]


def report(results: list[TemplateResult], out=None) -> None:
    out = out or sys.stdout
    local = [r for r in results if not r.name.startswith("api_")]
    counts = Counter(r.status for r in results)
    local_counts = Counter(r.status for r in local)
    print(f"templates: {len(results)} ({len(local)} local, {len(results) - len(local)} api_*)", file=out)
    print(f"{'status':18} {'all':>5} {'local':>6}", file=out)
    for status in STATUS_ORDER:
        print(f"{status:18} {counts[status]:5} {local_counts[status]:6}", file=out)
    at_most_models = sum(counts[s] for s in ("valid", "model_files_only"))
    print(f"validate with at most model-file errors: {at_most_models} of {len(results)} "
          f"(local: {sum(local_counts[s] for s in ('valid', 'model_files_only'))} of {len(local)})", file=out)

    missing = Counter(t for r in results for t in r.unknown_types)
    missing_local = Counter(t for r in local for t in r.unknown_types)
    print(f"\nmissing node types: {len(missing)} (by templates using them; top 60)", file=out)
    print(f"{'node type':40} {'all':>5} {'local':>6}", file=out)
    for name, n in missing.most_common(60):
        print(f"{name:40} {n:5} {missing_local[name]:6}", file=out)
    others = Counter(p.kind for r in results for p in r.problems if p.category == "other")
    if others:
        print("\nother error kinds (all templates): " + ", ".join(f"{k} {n}" for k, n in others.most_common()),
              file=out)
        # errors on nodes we have, also in templates that an unknown node already blocks
        on_known = Counter((p.class_type, p.kind, p.input_name) for r in results for p in r.problems
                           if p.category == "other" and p.class_type)
        templates_of = {key: len({r.name for r in results for p in r.problems
                                  if (p.class_type, p.kind, p.input_name) == key}) for key in on_known}
        print(f"\nerrors on known node types (top 30): {'node type':28} {'kind':24} {'input':24} errors templates",
              file=out)
        for (cls, kind, name), n in on_known.most_common(30):
            print(f"  {cls:40} {kind:24} {str(name):24} {n:6} {templates_of[(cls, kind, name)]:9}", file=out)

    sd = [r for r in results if r.sd_family]
    ok = [r for r in sd if r.status in ("valid", "model_files_only")]
    print(f"\nSD1.x/SDXL templates (every model file of the SD 1.x/SDXL families): {len(sd)}; "
          f"at most model-file errors: {len(ok)}", file=out)
    for r in sd:
        print(f"  {r.name:40} {r.status:18} {blockers(r)}", file=out)
    free = [r for r in local if not r.model_files]
    free_ok = [r for r in free if r.status in ("valid", "model_files_only", "files_only")]
    print(f"\nmodel-free local templates: {len(free)}; valid or only input-file errors: {len(free_ok)}", file=out)
    for r in free:
        print(f"  {r.name:40} {r.status:18} {blockers(r)}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=Path, help="folder of template .json files")
    parser.add_argument("--json", type=Path, help="write every template's result here")
    parser.add_argument("--show-errors", metavar="NAME", action="append", default=[],
                        help="print every error of this template (repeatable)")
    args = parser.parse_args(argv)
    folder = args.templates or default_templates_dir()
    results = run(folder)
    report(results)
    for name in args.show_errors:
        for r in results:
            if r.name == name:
                print(f"\n{name}: {r.status}; model files {r.model_files}")
                for p in r.problems:
                    print(f"  {p.category:12} {p.kind:24} {p.message}")
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "unknown_types": r.unknown_types, "sd_family": r.sd_family}
                                         for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
