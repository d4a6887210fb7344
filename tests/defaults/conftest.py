"""Fixtures shared by the tests of the default models that ship in registry packages."""

from __future__ import annotations

import pytest

from nodegraph.models import ModelManager


@pytest.fixture
def offline(monkeypatch):
    """No model hub: loading must work from the packaged files alone."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def manager():
    return ModelManager("cpu")
