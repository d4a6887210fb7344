"""Which of a pack's node classes need a given Python module (e.g. ``torchvision``), read from the
pack's source without importing it.

    python bench/pack_needs.py /tmp/packs/custom_nodes/ComfyUI_essentials torchvision

For each ``.py`` file of the pack it prints whether the file imports the module at module level (then
every class the file defines fails to register when the module is missing, since the pack's import
fails) and which classes reference a name bound from the module — in their own body, through a lazy
import inside a method, or through a module-level function of the same file that does. This is how
``bench/RESULTS.md`` names the nodes that a missing dependency blocks, and which of them would only be
blocked by the import (they never call the module).
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FileNeeds:
    path: Path
    top_level_import: bool
    classes: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)


def _is_module(name: str | None, module: str) -> bool:
    return name is not None and (name == module or name.startswith(module + "."))


def _bound_names(tree: ast.AST, module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_module(alias.name, module):
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_module(node.module, module):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _imports_module(body: list[ast.stmt], module: str) -> bool:
    for stmt in body:
        if isinstance(stmt, ast.Import) and any(_is_module(a.name, module) for a in stmt.names):
            return True
        if isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and _is_module(stmt.module, module):
            return True
        if isinstance(stmt, ast.Try) and _imports_module(stmt.body, module):
            return False  # guarded: the file still imports without it
    return False


def _names_used(node: ast.AST) -> set[str]:
    """Names read in ``node``, less those a function inside it binds itself (``B, C, T, H, W = x.shape``
    reads no ``T`` of the module's)."""
    used: set[str] = set()
    scopes = [n for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    if not scopes:
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    for scope in scopes:
        local = {n.id for n in ast.walk(scope) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        local |= {a.arg for a in ast.walk(scope.args) if isinstance(a, ast.arg)}
        used |= {n.id for n in ast.walk(scope)
                 if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in local}
    return used


def analyse_file(path: Path, module: str) -> FileNeeds:
    tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), filename=str(path))
    bound = _bound_names(tree, module)
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    needing_functions: set[str] = set()
    changed = True
    while changed:  # module-level functions that use the module, directly or through each other
        changed = False
        for name, fn in functions.items():
            if name not in needing_functions and _names_used(fn) & (bound | needing_functions):
                needing_functions.add(name)
                changed = True
    needs = FileNeeds(path, _imports_module(tree.body, module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            needs.classes.append(node.name)
            if _names_used(node) & (bound | needing_functions) or _bound_names(node, module):
                needs.users.append(node.name)
    return needs


def analyse(pack: Path, module: str) -> list[FileNeeds]:
    files = sorted(p for p in pack.rglob("*.py") if "__pycache__" not in p.parts)
    return [n for n in (analyse_file(p, module) for p in files) if n.top_level_import or n.users]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pack", type=Path, help="a pack folder")
    parser.add_argument("module", help="a Python module name, e.g. torchvision")
    args = parser.parse_args(argv)
    for needs in analyse(args.pack, args.module):
        rel = needs.path.relative_to(args.pack)
        where = "imports it at module level" if needs.top_level_import else "imports it lazily"
        print(f"{rel}: {where}; {len(needs.classes)} classes; {len(needs.users)} use it: "
              f"{', '.join(needs.users) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
