"""The layers of DESIGN.md ("Dependency direction"), enforced on the import graph.

The graph is read from the source of the installed packages ``nodegraph`` and ``nodegraph_nodes`` with
``ast``: every import statement (module level, inside functions, under ``TYPE_CHECKING``) and every
``importlib.import_module("literal")``, relative imports resolved. Lowest layer first:

    engine core (nodegraph/ without queue/, cluster/, server/, cli.py)
      → queue (nodegraph/queue/: store, JobRunner protocol, local runner)
      → Ray runner (nodegraph/cluster/)
      → server (nodegraph/server/: HTTP/WS, no torch)
      → CLI (nodegraph/cli.py: picks the runner, wires the rest)
    node families (nodegraph_nodes) depend on the engine core only; nobody imports them by name.

The rules are the table :data:`RULES` (plus :data:`ACYCLIC`); ``test_checker_reports_*`` feed the
same checker small synthetic package trees so that these tests provably fail on a bad import.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

# -- the rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """Modules named ``packages`` (and below), minus those under ``excluding``."""

    name: str
    packages: tuple[str, ...]
    excluding: tuple[str, ...] = ()

    def __contains__(self, module: str) -> bool:
        return under(module, self.packages) and not under(module, self.excluding)


@dataclass(frozen=True)
class Rule:
    """Modules of ``layer`` may not import any of ``forbidden`` (a name or anything below it)."""

    layer: Layer
    forbidden: tuple[str, ...]
    why: str


ENGINE_CORE = Layer("the engine core", ("nodegraph",),
                    excluding=("nodegraph.queue", "nodegraph.cluster", "nodegraph.server", "nodegraph.cli"))
QUEUE = Layer("the queue", ("nodegraph.queue",))
CLUSTER = Layer("the Ray runner", ("nodegraph.cluster",))
SERVER = Layer("the server", ("nodegraph.server",))
EVERYTHING = Layer("nodegraph and its node library", ("nodegraph", "nodegraph_nodes"))

RULES = (
    Rule(ENGINE_CORE, ("nodegraph_nodes", "nodes", "nodegraph.queue", "nodegraph.cluster", "nodegraph.server",
                       "aiohttp", "ray"),
         "the core knows no node family (the registry finds them through entry points) and nothing above it"),
    Rule(QUEUE, ("nodegraph.cluster", "nodegraph.server", "aiohttp", "ray"),
         "runners report through the EventSink protocol; they never import the server"),
    Rule(CLUSTER, ("nodegraph.server", "aiohttp"),
         "the Ray runner implements the queue's JobRunner protocol; it never imports the server"),
    Rule(SERVER, ("torch", "nodegraph.cluster", "ray"),
         "the server does HTTP/WS only: engine work goes through Engine, and the CLI picks the runner"),
    Rule(EVERYTHING, ("training",), "the shapes world's training code is not shipped; nothing runs it"),
    Rule(EVERYTHING, ("nodes",), "the bare name 'nodes' is ComfyUI's module (custom node packs import it); "
                                 "the node library is nodegraph_nodes"),
)

#: packages whose modules may not import one another in a circle
ACYCLIC = ("nodegraph",)

# -- the graph ------------------------------------------------------------------------------------


def under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str  # absolute dotted name
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path.as_posix()}:{self.line}"


@dataclass
class ImportGraph:
    modules: dict[str, Path]  # module name → source file
    imports: list[Import]

    def target(self, name: str) -> str | None:
        """The module of ours that importing ``name`` loads (longest known prefix), if any."""
        while name:
            if name in self.modules:
                return name
            name = name.rpartition(".")[0]
        return None


def package_modules(package: str, folder: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package, *parts))] = path
    return found


def read_imports(module: str, path: Path, modules: dict[str, Path], shown: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, shown, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(module, sub if sub in modules else base, shown, node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(Import(module, node.args[0].value, shown, node.lineno))
    return list(dict.fromkeys(found))  # `from x import a, b` names module x once


def build_graph(packages: dict[str, Path]) -> ImportGraph:
    """The import graph of ``{package name: its folder}``."""
    modules: dict[str, Path] = {}
    for name, folder in packages.items():
        modules.update(package_modules(name, folder))
    imports = []
    for name, folder in packages.items():
        for module, path in package_modules(name, folder).items():
            shown = Path(name) / path.relative_to(folder)
            imports += read_imports(module, path, modules, shown)
    return ImportGraph(modules, imports)


def installed_graph() -> ImportGraph:
    packages = {}
    for name in ("nodegraph", "nodegraph_nodes"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
        packages[name] = Path(list(spec.submodule_search_locations)[0])
    return build_graph(packages)

# -- the checker ----------------------------------------------------------------------------------


def broken_rules(graph: ImportGraph, rules=RULES) -> list[str]:
    problems = []
    for rule in rules:
        hits = [imp for imp in graph.imports if imp.importer in rule.layer and under(imp.imported, rule.forbidden)]
        if hits:
            problems.append(f"{rule.layer.name} may not import {', '.join(rule.forbidden)} ({rule.why}):")
            problems += [f"  {imp.importer} imports {imp.imported} ({imp.where()})" for imp in hits]
    return problems


def cycles(graph: ImportGraph, packages=ACYCLIC) -> list[str]:
    edges: dict[tuple[str, str], Import] = {}
    for imp in graph.imports:
        target = graph.target(imp.imported)
        if target is not None and target != imp.importer and under(imp.importer, packages) \
                and under(target, packages):
            edges.setdefault((imp.importer, target), imp)
    digraph = nx.DiGraph(list(edges))
    problems = []
    for component in sorted(nx.strongly_connected_components(digraph), key=sorted):
        if len(component) < 2:
            continue
        loop = [a for a, _ in nx.find_cycle(digraph.subgraph(component))]
        problems.append(f"import cycle among {len(component)} modules ({', '.join(sorted(component))}); "
                        f"one circle: {' → '.join(loop + [loop[0]])}")
        for a, b in zip(loop, loop[1:] + loop[:1]):
            problems.append(f"  {a} imports {b} ({edges[(a, b)].where()})")
    return problems


def check(graph: ImportGraph, rules=RULES, acyclic=ACYCLIC) -> list[str]:
    return cycles(graph, acyclic) + broken_rules(graph, rules)

# -- the tests ------------------------------------------------------------------------------------


def test_installed_packages_follow_the_layers():
    graph = installed_graph()
    assert "nodegraph.executor" in graph.modules and "nodegraph_nodes" in graph.modules
    problems = check(graph)
    assert not problems, "layering rules broken (DESIGN.md, 'Dependency direction'):\n" + "\n".join(problems)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_reports_bad_imports_in_a_synthetic_tree(tmp_path):
    write_tree(tmp_path, {
        "nodegraph/__init__.py": "from .executor import Engine\n",
        "nodegraph/executor.py": "import queue\n\nclass Engine:\n    def f(self):\n        import nodegraph_nodes.io\n",
        "nodegraph/queue/__init__.py": "",
        "nodegraph/queue/local.py": "from ..server.ws import encode\n",
        "nodegraph/server/__init__.py": "from .app import create_app\n",
        "nodegraph/server/ws.py": "def encode():\n    from .app import FEATURES\n",
        "nodegraph/server/app.py": ("from . import ws\nfrom ..queue.local import LocalRunner\n"
                                    "def stats():\n    import torch.cuda\n"),
        "nodegraph_nodes/__init__.py": "import importlib\nimportlib.import_module('nodes')\n",
        "nodegraph_nodes/io.py": "from training.shapes import data\n",
    })
    graph = build_graph({"nodegraph": tmp_path / "nodegraph", "nodegraph_nodes": tmp_path / "nodegraph_nodes"})
    report = "\n".join(check(graph))
    assert "nodegraph.executor imports nodegraph_nodes.io (nodegraph/executor.py:5)" in report  # function-level
    assert "nodegraph.queue.local imports nodegraph.server.ws (nodegraph/queue/local.py:1)" in report  # relative
    assert "nodegraph.server.app imports torch.cuda" in report
    assert "nodegraph_nodes imports nodes (nodegraph_nodes/__init__.py:2)" in report
    assert "nodegraph_nodes.io imports training.shapes" in report
    assert ("import cycle among 3 modules (nodegraph.queue.local, nodegraph.server.app, nodegraph.server.ws)"
            in report)
    assert "nodegraph.executor imports queue" not in report  # the standard library's queue is fine


def test_checker_reports_a_longer_cycle_and_passes_a_clean_tree(tmp_path):
    write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import x\n",
        "pkg/b.py": "from pkg import c\n",
        "pkg/c.py": "from . import a\n",
        "pkg/d.py": "from . import a, b, c\n",
    })
    graph = build_graph({"pkg": tmp_path / "pkg"})
    report = cycles(graph, ("pkg",))
    assert report[0].startswith("import cycle among 3 modules (pkg.a, pkg.b, pkg.c)")
    assert len(report) == 4  # the headline and one line per import of the circle
    (tmp_path / "pkg" / "c.py").write_text("import os\n")
    assert check(build_graph({"pkg": tmp_path / "pkg"}), rules=(), acyclic=("pkg",)) == []
