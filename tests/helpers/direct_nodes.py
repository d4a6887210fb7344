"""Pytest fixtures, served to all of tests/ by tests/conftest.py, for suites that call node classes directly
(no engine): ``paths``, a fresh input/output/temp tree under ``tmp_path``, and ``make``, which builds a node
instance on one run context over those paths. A module or folder that defines its own ``paths`` or ``make``
fixture overrides these."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nodegraph.context import NodeContext, Paths, RunContext
from nodegraph.events import EventBus


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    paths = Paths.under(tmp_path)
    for folder in (paths.input_dir, paths.output_dir, paths.temp_dir):
        folder.mkdir(parents=True)
    return paths


@pytest.fixture
def make(paths: Paths):
    """``make(cls, node_id="1")``: an instance of node class ``cls`` on this test's run context."""
    run = RunContext(prompt_id="t", bus=EventBus(), interrupt=threading.Event(), paths=paths)

    def factory(cls, node_id: str = "1"):
        return cls(NodeContext(run, node_id, cls.__name__))
    return factory
