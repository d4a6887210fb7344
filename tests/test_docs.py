"""The README and docs/ tell the truth where a test can check it:

* every relative link (and every `path.md` named in backticks) in README.md and docs/*.md resolves to a
  file inside the repository, and a `#anchor` to a heading of its file;
* the README's "Run out of the box" list is exactly the set of ready workflows that validate with no
  model or input files beyond the built-in ones, and each of them is run by a named test on the
  built-in models;
* every other ready workflow has a row in the README's table naming each model and input file that
  validation asks for.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nodegraph.context import Paths
from nodegraph.errors import ValidationFailed
from nodegraph.registry import default_registry
from nodegraph.validation import validate
from nodegraph.workflow.loader import load_workflow_file

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
WORKFLOWS = sorted(p for p in (ROOT / "workflows").glob("*.json") if not p.name.endswith(".ui.json"))

#: each workflow that runs out of the box → the test that runs it on the built-in models (file, function)
OUT_OF_THE_BOX_TESTS = {
    "design_loop": ("tests/defaults/test_design_loop_main.py",
                    "test_design_loop_runs_on_the_defaults_and_reports_every_round"),
    "image_basics": ("tests/test_cli.py", "test_run_writes_png_with_embedded_workflow_and_report"),
    "txt2img": ("tests/shapes/test_shipped_generator.py", "test_txt2img_workflow_runs_on_the_builtin_model"),
}

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
BACKTICKED_DOC = re.compile(r"`([^`\s]+\.md)`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(path: Path) -> str:
    """The file's text without fenced code blocks."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(prose(path))}


def inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def link_problems(doc: Path, root: Path = ROOT) -> list[str]:
    text = prose(doc)
    problems = []
    for target in INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: …
            continue
        path_part, _, anchor = target.partition("#")
        if path_part:
            file = (root / path_part.lstrip("/")) if path_part.startswith("/") else (doc.parent / path_part)
        else:
            file = doc
        if not inside(file, root):
            problems.append(f"{doc.name}: link {target!r} points outside the repository")
        elif not file.exists():
            problems.append(f"{doc.name}: link {target!r}: {file} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{doc.name}: link {target!r}: no heading #{anchor} in {file.name}")
    for name in BACKTICKED_DOC.findall(text):  # `docs/models.md`-style mentions, from the file or the root
        candidates = [doc.parent / name, root / name]
        if not any(inside(c, root) and c.exists() for c in candidates):
            problems.append(f"{doc.name}: `{name}` is not a file inside the repository")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc):
    assert link_problems(doc) == []


def test_the_link_check_catches_bad_links(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (tmp_path / "outside.md").write_text("# Out\n")
    (root / "docs" / "other.md").write_text("# Other things\n")
    doc = root / "docs" / "probe.md"
    doc.write_text("[a](../../outside.md) [b](missing.png) [c](#nowhere) `../shared/DESIGN.md`\n"
                   "```\n[in code](ignored.md)\n```\n# Real heading\n[d](#real-heading) [e](https://x.org)\n"
                   "[f](other.md#other-things) `docs/other.md`\n")
    problems = link_problems(doc, root)
    assert len(problems) == 4, problems
    assert any("outside the repository" in p for p in problems)
    assert any("missing.png" in p for p in problems) and any("#nowhere" in p for p in problems)
    assert any("shared/DESIGN.md" in p for p in problems)


# -- ready workflows ---------------------------------------------------------------------------------

def readme_out_of_the_box() -> set[str]:
    lines = [line for line in README.read_text().splitlines() if line.startswith("**Run out of the box**")]
    assert len(lines) == 1, "README needs one '**Run out of the box** …' line listing workflows"
    return set(re.findall(r"`([\w-]+)`", lines[0]))


def readme_requirements() -> dict[str, str]:
    """The README's table of the other workflows: name → the rest of its row."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([\w-]+)` \|(.*)$", README.read_text(), re.M)}


@pytest.fixture(scope="module")
def missing_files(tmp_path_factory) -> dict[str, set[str]]:
    """Each ready workflow → the model/input file names validation rejects with empty models and
    input folders (so only the built-in models exist)."""
    tmp = tmp_path_factory.mktemp("nothing")
    paths = Paths(output_dir=tmp / "out", input_dir=tmp / "in", temp_dir=tmp / "temp", models_dir=tmp / "models")
    registry = default_registry(packs=False)
    missing: dict[str, set[str]] = {}
    for path in WORKFLOWS:
        api = load_workflow_file(path, registry).api
        try:
            validate(api, registry, paths=paths)
        except ValidationFailed as exc:
            names = set()
            for error in exc.errors:
                inputs = api.get(error.node_id, {}).get("inputs", {})
                names |= {v for v in inputs.values() if isinstance(v, str) and v and v in error.message}
            assert names, f"{path.name}: invalid for another reason than missing files: {exc}"
            missing[path.stem] = names
        else:
            missing[path.stem] = set()
    return missing


def test_out_of_the_box_list_is_what_runs_on_the_builtin_models(missing_files):
    runs = {name for name, files in missing_files.items() if not files}
    assert readme_out_of_the_box() == runs
    assert set(OUT_OF_THE_BOX_TESTS) == runs


@pytest.mark.parametrize("workflow", sorted(OUT_OF_THE_BOX_TESTS))
def test_each_out_of_the_box_workflow_is_run_by_a_test(workflow):
    file, function = OUT_OF_THE_BOX_TESTS[workflow]
    source = (ROOT / file).read_text()
    assert re.search(rf"^def {function}\(", source, re.M), f"{file} has no test {function}"
    assert f"{workflow}.json" in source, f"{file} does not name workflows/{workflow}.json"


def test_other_workflows_list_the_files_they_need(missing_files):
    table = readme_requirements()
    needing = {name for name, files in missing_files.items() if files}
    assert set(table) == needing
    for name in sorted(needing):
        for file in sorted(missing_files[name]):
            assert file in table[name], f"README: the row of {name} does not name {file}"
