"""A wheel carries its canvas and the ready workflows: ``pip wheel .`` → a fresh venv → ``nodegraph
serve`` from that venv → a real Chromium draws the canvas with its node list and opens a ready
workflow from the Workflow menu. No npm, no clone on the path.

How the venv gets the wheel's ``nodegraph`` and not the clone's:

* The wheel is built from a clean copy of the working tree (git's file list: tracked files plus
  untracked ones that are not ignored), so a stale ``build/`` folder or ``web/node_modules`` of the
  clone cannot slip a file into it that a fresh clone would not have.
* ``python -m venv --system-site-packages`` keeps torch, diffusers etc. from reinstalling. The
  system site-packages also holds the clone's editable install (a ``.pth`` that appends setuptools'
  editable finder to ``sys.meta_path``). The wheel goes into the venv's own site-packages
  (``pip install --no-deps --no-index --ignore-installed``: ``--ignore-installed`` because the
  editable ``nodegraph 0.1.0`` is visible and would otherwise count as "already satisfied"). The
  venv's site-packages comes before the system one on ``sys.path`` and ``PathFinder`` runs before the
  appended editable finder, so the venv's copy wins; ``importlib.metadata`` likewise takes the first
  ``nodegraph`` distribution on ``sys.path``, so the ``nodegraph.nodes`` entry points are the
  wheel's. The test checks all of that from inside the venv rather than trusting it.
* Every command runs with the venv's interpreter, from a working folder outside the clone, without
  ``PYTHONPATH`` (a ``''``/cwd entry on ``sys.path`` must not be the clone).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = "design_loop.ui.json"  # the README's canvas example
PROBE = """
import json, sys
import nodegraph, nodegraph_nodes
from importlib.metadata import distribution, entry_points
from nodegraph.assets import missing_canvas_files, web_dir, workflows_dir
print(json.dumps({
    "nodegraph": nodegraph.__file__, "nodegraph_nodes": nodegraph_nodes.__file__,
    "web": str(web_dir()), "workflows": str(workflows_dir()),
    "missing": None if missing_canvas_files() is None else missing_canvas_files().message(),
    "dist": str(distribution("nodegraph").locate_file("")),
    "entry_points": sorted({str(e.dist.locate_file("")) for e in entry_points(group="nodegraph.nodes")}),
}))
"""


@dataclass(frozen=True)
class WheelVenv:
    root: Path        # the venv
    workdir: Path     # the working folder of every command (outside the clone)
    wheel: Path
    env: dict

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def nodegraph(self) -> Path:
        return self.root / "bin" / "nodegraph"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=self.workdir, env=self.env, capture_output=True, text=True,
                              timeout=timeout)


def source_copy(dest: Path) -> Path:
    """The working tree as a fresh clone plus uncommitted work would have it (no ignored files)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> WheelVenv:
    base = tmp_path_factory.mktemp("wheel_install")
    src = source_copy(base / "src")
    dist = base / "dist"
    # --no-build-isolation: the build needs setuptools only, already here (no index access in a test)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(dist)], cwd=src, capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("nodegraph-*.whl")
    root = base / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root)
    workdir = base / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(VIRTUAL_ENV=str(root), PATH=f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PYTHONNOUSERSITE="1")
    made = WheelVenv(root, workdir, wheel, env)
    # the system pip, run by the venv's interpreter, installs into the venv
    install = made.run(str(made.python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                       "--disable-pip-version-check", "-q", str(wheel))
    assert install.returncode == 0, install.stdout + install.stderr
    return made


def test_the_wheel_holds_the_canvas_and_the_ready_workflows(wheel_venv):
    import zipfile

    names = set(zipfile.ZipFile(wheel_venv.wheel).namelist())
    web = {"nodegraph/web/index.html", "nodegraph/web/style.css", "nodegraph/web/src/main.js",
           "nodegraph/web/vendor/litegraph/litegraph.core.js", "nodegraph/web/vendor/litegraph/litegraph.css",
           "nodegraph/web/vendor/litegraph/LICENSE"}
    assert web <= names, web - names
    modules = {f"nodegraph/web/src/{p.name}" for p in (ROOT / "web" / "src").glob("*.js")}
    assert modules <= names, modules - names
    flows = {f"nodegraph/workflows/{p.name}" for p in (ROOT / "workflows").glob("*.json")}
    assert flows and flows <= names, flows - names
    assert not [n for n in names if "node_modules" in n or n.endswith("package-lock.json")]


def test_the_venv_imports_the_wheel_not_the_clone(wheel_venv):
    probe = wheel_venv.run(str(wheel_venv.python), "-c", PROBE)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    venv_root = wheel_venv.root.resolve()
    for key in ("nodegraph", "nodegraph_nodes", "web", "workflows", "dist"):
        assert Path(found[key]).resolve().is_relative_to(venv_root), (key, found[key])
    assert [Path(p).resolve().is_relative_to(venv_root) for p in found["entry_points"]] == [True], found
    assert found["missing"] is None, found["missing"]
    # the CLI finds a shipped workflow by name, outside any clone
    checked = wheel_venv.run(str(wheel_venv.nodegraph), "validate", "workflows/design_loop.json")
    assert checked.returncode == 0 and checked.stdout.startswith("ok:"), checked.stdout + checked.stderr


class ServeProcess:
    """``nodegraph serve --port 0`` from the venv; the port is read from its "listening on" line."""

    def __init__(self, made: WheelVenv) -> None:
        self.stderr_path = made.workdir / "serve.stderr"
        self.proc = subprocess.Popen(
            [str(made.nodegraph), "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
             "--data-dir", "data", "--output-dir", "outputs", "--models-dir", "models"],
            cwd=made.workdir, env=made.env, stdout=subprocess.PIPE, stderr=self.stderr_path.open("w"), text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url(timeout=120)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _wait_for_url(self, timeout: float) -> str:
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                pytest.fail(f"nodegraph serve did not start: {''.join(seen)}{self.stderr()}")
            seen.append(line)
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if match:
                return match.group(1)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def served(wheel_venv):
    server = ServeProcess(wheel_venv)
    yield server
    server.stop()


def test_serve_from_the_wheel_draws_the_canvas_and_opens_a_ready_workflow(served, browser):
    vendored = (ROOT / "web" / "vendor" / "litegraph" / "litegraph.core.js").read_bytes()
    with urllib.request.urlopen(f"{served.url}/lib/litegraph.core.js") as response:
        assert response.read() == vendored
    assert "missing" not in served.stderr(), served.stderr()

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.goto(f"{served.url}/")
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=30_000)

        # the node list: the palette holds the built-in families' classes, and its filter finds one
        assert page.evaluate("() => Object.keys(window.app.objectInfo).length") > 50
        assert page.locator("#palette-tree .pal-node").count() > 50
        page.fill("#palette-filter", "KSampler")
        assert page.locator('#palette-tree .pal-node[data-type="KSampler"]').count() == 1

        # a ready workflow from the Workflow menu: every node of the file, each a known class
        nodes = json.loads((ROOT / "workflows" / WORKFLOW).read_text())["nodes"]
        want = sorted(f"{n['id']}:{n['type']}" for n in nodes)
        page.click("#btn-file")
        page.click(f'#workflow-list [data-workflow="{WORKFLOW}"]')
        page.wait_for_function(
            "want => JSON.stringify(window.app.graph._nodes.map(n => `${n.id}:${n.type}`).sort()) === want",
            arg=json.dumps(want, separators=(",", ":")))
        assert page.evaluate("() => window.app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type])"
                             ".map(n => n.type)") == []
        # the canvas drew: its pixels are not one flat colour
        page.wait_for_function("""() => {
            const c = document.getElementById('graph-canvas');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < data.length && seen.size < 16; i += 4 * 997) seen.add(data.slice(i, i + 3).join());
            return c.width > 0 && seen.size >= 3;
        }""", timeout=10_000)
        assert errors == []
    finally:
        context.close()
