"""Fixtures shared by the tests of the default models that ship in registry packages."""

from __future__ import annotations

import pytest

from nodegraph import Engine
from nodegraph.context import Paths
from nodegraph.models import ModelManager
from nodegraph.registry import default_registry


@pytest.fixture
def offline(monkeypatch):
    """No model hub: loading must work from the packaged files alone."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def manager():
    return ModelManager("cpu")


@pytest.fixture
def paths(tmp_path):
    """A fresh input/output/temp tree, with an empty ``models/upscale_models``."""
    p = Paths.under(tmp_path)
    for folder in (p.input_dir, p.output_dir, p.temp_dir, p.models_dir / "upscale_models"):
        folder.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture
def engine(paths, manager):
    """A CPU engine on ``paths`` sharing the module's model manager."""
    eng = Engine(default_registry(packs=False), paths=paths, device="cpu", services={"models": manager})
    yield eng
    eng.close()
