"""Load the ComfyUI custom node packs of a ``custom_nodes/`` folder and report, per pack, how many of
its node classes register; optionally run API-format workflows that use them.

    python bench/custom_packs.py ~/ComfyUI/custom_nodes
    python bench/custom_packs.py /tmp/packs/custom_nodes --workflow essentials.json --workflow vhs.json
    python bench/custom_packs.py /tmp/packs/custom_nodes --json report.json
    python bench/custom_packs.py /tmp/packs/custom_nodes --make-inputs \
        --workflow bench/custom_packs_workflows/essentials.json --route /vhs/queryvideo?filename=ng_test.mp4&type=input

Point it at any folder: the packs (and their Python dependencies, from each pack's
``requirements.txt``) are installed by you, outside this repository; nothing here fetches anything.
Workflows run on a fresh engine whose input/output/temp folders are under ``--base`` (a temporary
folder by default); put the files a workflow reads (a video for VHS_LoadVideo …) in ``<base>/input``, or
let ``--make-inputs`` write ``ng_test.png`` (128x96, a red square on a gradient) and ``ng_test.mp4`` (12
frames, 64x48) there. A workflow file is an API-format prompt, or ``{"prompt": …, "workflow": …}`` (as ``nodegraph
run`` reads it) for nodes that read the canvas workflow from ``extra_pnginfo`` (KJNodes' WidgetToString). ``--route PATH``
starts a real ``nodegraph serve`` on the same folders (a free loopback port, stopped afterwards) and GETs
each path, for the routes a pack adds (VideoHelperSuite's ``/vhs/…``).
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


def make_inputs(input_dir: Path) -> list[Path]:
    """A test picture and a short video for the workflows to read (no files from outside)."""
    import av
    import numpy as np
    from PIL import Image

    input_dir.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:96, 0:128]
    rgb = np.stack([x * 2, y * 2, np.full_like(x, 64)], axis=-1).astype(np.uint8)
    rgb[30:60, 40:80] = (255, 0, 0)
    picture = input_dir / "ng_test.png"
    Image.fromarray(rgb).save(picture)
    video = input_dir / "ng_test.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            frame = np.zeros((48, 64, 3), np.uint8)
            frame[:, : 5 * (i + 1)] = (40 + 15 * i, 200, 255 - 15 * i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return [picture, video]


def check_routes(folder: Path, base: Path, routes: list[str]) -> list[dict[str, Any]]:
    """GET each path from a real ``nodegraph serve`` that loaded ``folder``'s packs."""
    import os
    import socket
    import subprocess
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "nodegraph.cli", "serve", "--port", str(port), "--custom-nodes-dir", str(folder),
               "--input-dir", str(base / "input"), "--output-dir", str(base / "output"),
               "--data-dir", str(base / "data"), "--models-dir", str(base / "models")]
    log = open(base / "serve.log", "wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=base,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    rows = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info/SaveImage", timeout=5).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {(base / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.5)
        for route in routes:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=60) as reply:
                    body = reply.read()
                    rows.append({"route": route, "status": reply.status, "type": reply.headers.get("Content-Type"),
                                 "bytes": len(body), "head": body[:160].decode("utf-8", "replace")})
            except urllib.error.HTTPError as exc:
                rows.append({"route": route, "status": exc.code, "head": exc.read()[:300].decode("utf-8", "replace")})
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    return rows


def run_workflow(registry: Any, base: Path, path: Path) -> dict[str, Any]:
    from nodegraph import Engine
    from nodegraph.context import Paths
    from nodegraph.errors import ValidationFailed

    api = json.loads(path.read_text())
    extra_data = None
    if "prompt" in api and isinstance(api["prompt"], dict):  # as 'nodegraph run' reads such a file
        workflow = api.get("workflow")
        api, extra_data = api["prompt"], ({"extra_pnginfo": {"workflow": workflow}} if workflow else None)
    engine = Engine(registry, paths=Paths.under(base), device="cpu", threads=2)
    start = time.perf_counter()
    try:
        result = engine.run(api, extra_data=extra_data)
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
    parser.add_argument("--make-inputs", action="store_true", help="write ng_test.png / ng_test.mp4 to <base>/input")
    parser.add_argument("--route", action="append", default=[], help="GET this path from a real server (repeatable)")
    args = parser.parse_args(argv)
    if not args.custom_nodes.is_dir():
        print(f"error: {args.custom_nodes} is not a folder", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        base = args.base or Path(scratch)
        if args.make_inputs:
            make_inputs(base / "input")
        start = time.perf_counter()
        registry, packs = load(args.custom_nodes, base)
        rows = pack_rows(packs)
        print(f"loaded {len(packs)} pack(s) in {time.perf_counter() - start:.2f} s\n")
        print(table(rows))
        runs = [run_workflow(registry, base, path) for path in args.workflow]
        for run in runs:
            detail = run.get("failure") or "; ".join(run.get("errors", [])) or f"{run.get('seconds')} s"
            print(f"\nworkflow {run['workflow']}: {run['status']} — {detail}")
        routes = check_routes(args.custom_nodes, base, args.route) if args.route else []
        for row in routes:
            print(f"\nGET {row['route']}: {row['status']} {row.get('type') or ''} {row.get('bytes', '')} bytes: "
                  f"{row['head'][:120]!r}")
        if args.json is not None:
            args.json.write_text(json.dumps({"packs": rows, "workflows": runs, "routes": routes}, indent=1,
                                            default=str))
    return 0 if all(r["status"] == "success" for r in runs) and all(r["status"] == 200 for r in routes) else 1


if __name__ == "__main__":
    sys.exit(main())
