"""Open our canvas on a server that loaded a ``custom_nodes/`` folder, in headless Chromium, and report
which of the packs' frontend extensions registered, which scripts were skipped and why, and whether the
page still loads, draws and runs a workflow (issue 20 point 5; the figures in ``bench/RESULTS.md``).

    python bench/custom_packs_canvas.py /tmp/packs/custom_nodes [--workflow essentials_canvas.json] [--screenshot canvas.png]

The workflow (API format, default: EmptyImage → SaveImage) is loaded into the page and queued from its
button. Needs /usr/bin/chromium and Playwright (as tests/web do). The server runs on a free loopback port
with its folders in a temporary directory and is stopped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 255}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "canvas"}}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("custom_nodes", type=Path)
    parser.add_argument("--workflow", type=Path, default=None)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright
    from tests.helpers.chromium import CHROMIUM, CHROMIUM_ARGS

    workflow = json.loads(args.workflow.read_text()) if args.workflow else DEFAULT
    with tempfile.TemporaryDirectory() as base, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        log = open(Path(base) / "serve.log", "wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "nodegraph.cli", "serve", "--port", str(port), "--custom-nodes-dir",
             str(args.custom_nodes), "--input-dir", f"{base}/input", "--output-dir", f"{base}/output",
             "--data-dir", f"{base}/data"], stdout=log, stderr=subprocess.STDOUT, cwd=base,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{url}/extensions", timeout=5).read()
                    break
                except OSError:
                    if server.poll() is not None:
                        print((Path(base) / "serve.log").read_text()[-2000:], file=sys.stderr)
                        return 2
                    time.sleep(0.5)
            scripts = json.load(urllib.request.urlopen(f"{url}/extensions"))
            print(f"/extensions lists {len(scripts)} script(s)")
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(f"{exc}"))
                page.goto(f"{url}/")
                page.wait_for_function("['1', 'error'].includes(document.body.dataset.ready)", timeout=120_000)
                ready = page.evaluate("document.body.dataset.ready") == "1"
                registered = page.evaluate("window.app.extensions.list.map(e => e.name)")
                failed = page.evaluate("window.app.extensions.failed")
                print(f"canvas started: {ready}; {len(registered)} extension(s) registered: {', '.join(registered)}")
                print(f"{len(failed)} script(s) skipped:")
                for item in failed:
                    print(f"  {item['url']}: {item['error'][:160]}")
                page.evaluate("(d) => window.app.load(d, 'bench')", workflow)
                page.wait_for_timeout(1000)
                page.click("#btn-queue")
                page.wait_for_function("document.getElementById('overall-text').textContent === 'done'",
                                       timeout=300_000)
                drawn = page.evaluate("window.app.graph._nodes.every(n => !n.widgets || n.widgets.every(w => w.last_y !== undefined))")
                outputs = sorted(p.name for p in (Path(base) / "output").glob("*.png"))
                print(f"workflow ran: {outputs}; nodes drawn: {drawn}; page errors: {errors or 'none'}")
                if args.screenshot:
                    page.screenshot(path=str(args.screenshot))
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    return 0 if ready and not errors and outputs and drawn else 1


if __name__ == "__main__":
    sys.exit(main())
