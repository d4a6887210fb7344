"""Shared fixtures: an engine with the built-in nodes plus the test nodes, on temp folders."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from nodegraph import Engine, OutputCache, Paths  # noqa: E402
from nodegraph.registry import default_registry  # noqa: E402

from engine_nodes import LOG, TEST_NODES  # noqa: E402


@pytest.fixture
def registry():
    reg = default_registry(packs=False)
    for cls in TEST_NODES:
        reg.register(cls)
    return reg


@pytest.fixture
def log():
    LOG.calls.clear()
    LOG.spans.clear()
    return LOG


@pytest.fixture
def engine(registry, tmp_path, log):
    eng = Engine(registry, paths=Paths.under(tmp_path), device="cpu", threads=2,
                 cache=OutputCache(ram_budget=256 << 20))
    yield eng
    eng.close()
