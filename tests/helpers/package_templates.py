"""The templates of the ``comfyui_workflow_templates_json`` package (skips the test where it is not
installed), and the check the model-family suites run on them: each template validates against
nodegraph's nodes with file errors only (a model or input file not in the test's folders), apart from
node types nodegraph does not have yet."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from nodegraph.errors import ValidationFailed
from nodegraph.validation import validate
from nodegraph.workflow.loader import load_workflow_data

#: what a file error's message says (a choice not in the folder's list; an input not in the node's)
FILE_ERRORS = ("not one of its choices", "not found in inputs")


def package_templates(match: Callable[[str], bool]) -> list[Path]:
    """The package's UI templates (not the ``api_`` ones) whose file name ``match`` accepts, sorted."""
    package = pytest.importorskip("comfyui_workflow_templates_json")
    folder = Path(package.__file__).parent / "templates"
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("api_") and match(p.name))


@dataclass
class TemplateCheck:
    """What validating a set of templates found."""

    #: templates that validate, or fail on files only
    clean: list[str] = field(default_factory=list)
    #: node types some template uses that nodegraph lacks
    missing_types: set[str] = field(default_factory=set)

    def assert_missing(self, expected: set[str]) -> None:
        """The missing node types are exactly ``expected`` (a new one, or one built now, fails)."""
        assert self.missing_types <= expected, f"new missing node types: {self.missing_types - expected}"
        assert expected <= self.missing_types, f"built now, take them off: {expected - self.missing_types}"


def check_templates(paths: list[Path], registry, file_errors: tuple[str, ...] = FILE_ERRORS) -> TemplateCheck:
    """Validate each template; every error must be an unknown node type or say one of ``file_errors``."""
    check = TemplateCheck()
    for path in paths:
        api = load_workflow_data(json.loads(path.read_text()), registry).api
        try:
            validate(api, registry)
            check.clean.append(path.name)
            continue
        except ValidationFailed as failure:
            errors = failure.errors
        for error in errors:
            if error.kind == "unknown_node_type":
                check.missing_types.add(error.class_type)
            else:
                text = str(error)
                assert any(part in text for part in file_errors), (path.name, text)
        if not any(e.kind == "unknown_node_type" for e in errors):
            check.clean.append(path.name)
    return check
