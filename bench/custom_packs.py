"""Load the ComfyUI custom node packs of a ``custom_nodes/`` folder and report, per pack, how many of
its node classes register; optionally run API-format workflows that use them.

    python bench/custom_packs.py ~/ComfyUI/custom_nodes
    python bench/custom_packs.py /tmp/packs/custom_nodes --workflow essentials.json --workflow vhs.json
    python bench/custom_packs.py /tmp/packs/custom_nodes --json report.json

Point it at any folder: the packs (and their Python dependencies, from each pack's
``requirements.txt``) are installed by you, outside this repository; nothing here fetches anything.
Workflows run on a fresh engine whose input/output/temp folders are under ``--base`` (a temporary
folder by default); put the files a workflow reads (a video for VHS_LoadVideo …) in ``<base>/input``.
The printed table is what ``bench/RESULTS.md`` records for issue 20.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def load(folder: Path, base: Path) -> tuple[Any, list]:
    from nodegraph.comfy_compat import CustomNodeSettings, load_custom_nodes
    from nodegraph.context import Paths
    from nodegraph.registry import default_registry

    registry = default_registry()
    packs = load_custom_nodes(registry, CustomNodeSettings((folder,)), paths=Paths.under(base), device="cpu")
    return registry, packs


def pack_rows(packs: list) -> list[dict[str, Any]]:
    rows = []
    for pack in packs:
        rows.append({"pack": pack.name, "offered": pack.offered, "registered": len(pack.nodes),
                     "shadowed": len(pack.shadowed), "seconds": round(pack.seconds, 3),
                     "disabled": pack.disabled, "error": pack.error})
    return rows


def run_workflow(registry: Any, base: Path, path: Path) -> dict[str, Any]:
    from nodegraph import Engine
    from nodegraph.context import Paths
    from nodegraph.errors import ValidationFailed

    api = json.loads(path.read_text())
    engine = Engine(registry, paths=Paths.under(base), device="cpu", threads=2)
    start = time.perf_counter()
    try:
        result = engine.run(api)
    except ValidationFailed as exc:
        return {"workflow": path.name, "status": "invalid", "errors": [e.message for e in exc.errors]}
    finally:
        engine.close()
    row: dict[str, Any] = {"workflow": path.name, "status": result.status,
                           "seconds": round(time.perf_counter() - start, 3),
                           "class_types": sorted({n["class_type"] for n in api.values() if isinstance(n, dict)}),
                           "outputs": result.outputs}
    if result.failure is not None:
        f = result.failure
        row["failure"] = f"node {f.node_id} ({f.class_type}): {f.exception_type}: {f.exception_message}"
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| pack | classes offered | registered | built-in names skipped | load s | not loaded |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        error = (row["error"] or "").replace("|", "\\|")
        if len(error) > 300:
            error = error[:299] + "…"
        lines.append(f"| {row['pack']} | {row['offered']} | {row['registered']} | {row['shadowed']} | "
                     f"{row['seconds']} | {'disabled' if row['disabled'] else error} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("custom_nodes", type=Path, help="a custom_nodes/ folder")
    parser.add_argument("--workflow", type=Path, action="append", default=[], help="an API-format workflow to run")
    parser.add_argument("--base", type=Path, default=None, help="folder for input/, output/, temp/ (default: a temp one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if not args.custom_nodes.is_dir():
        print(f"error: {args.custom_nodes} is not a folder", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        base = args.base or Path(scratch)
        start = time.perf_counter()
        registry, packs = load(args.custom_nodes, base)
        rows = pack_rows(packs)
        print(f"loaded {len(packs)} pack(s) in {time.perf_counter() - start:.2f} s\n")
        print(table(rows))
        runs = [run_workflow(registry, base, path) for path in args.workflow]
        for run in runs:
            detail = run.get("failure") or "; ".join(run.get("errors", [])) or f"{run.get('seconds')} s"
            print(f"\nworkflow {run['workflow']}: {run['status']} — {detail}")
        if args.json is not None:
            args.json.write_text(json.dumps({"packs": rows, "workflows": runs}, indent=1, default=str))
    return 0 if all(r["status"] == "success" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
