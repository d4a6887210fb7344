"""Helpers shared by the browser tests (importable by name, unlike conftest)."""

from __future__ import annotations

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def ui_workflow(name: str) -> dict:
    return json.loads((ROOT / "workflows" / name).read_text())
