"""Where the template package is installed, every Wan template of it (not the ``api_`` ones) validates with at
most file errors (model files, input images and videos), apart from a known, shrinking list of node types
nodegraph lacks. The templates that run end to end on tiny models: tests/dit/test_wan*.py."""

from __future__ import annotations

from nodegraph.registry import default_registry

from tests.helpers.package_templates import check_templates, package_templates

#: node types of the package's Wan templates that nodegraph does not have yet
MISSING_NODE_TYPES: set[str] = set()
#: how many of them validate with file errors only
MIN_CLEAN = 32


def test_wan_templates_validate_with_file_errors_only():
    paths = package_templates(lambda name: "wan" in name.lower())
    assert len(paths) >= 30
    check = check_templates(paths, default_registry(packs=False))
    check.assert_missing(MISSING_NODE_TYPES)
    assert len(check.clean) >= MIN_CLEAN, check.clean
