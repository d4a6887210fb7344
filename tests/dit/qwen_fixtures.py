"""Session fixtures for the Qwen-Image and Z-Image tests (import the names into a test module): the tiny
models of :mod:`tests.dit.tiny_qwen` in one models folder, and an engine on it."""

from __future__ import annotations

import pytest

from nodegraph.registry import default_registry

from tests.dit.tiny_qwen import build_qwen_image, build_z_image
from tests.helpers.engines import make_engine


@pytest.fixture(scope="session")
def qwen_root(tmp_path_factory):
    return tmp_path_factory.mktemp("qwen_models")


@pytest.fixture(scope="session")
def tiny_qwen_image(qwen_root):
    return build_qwen_image(qwen_root)


@pytest.fixture(scope="session")
def tiny_z_image(qwen_root):
    return build_z_image(qwen_root)


@pytest.fixture(scope="session")
def qwen_registry():
    return default_registry(packs=False)


@pytest.fixture
def qwen_engine(qwen_root, tiny_qwen_image, tiny_z_image, tmp_path, qwen_registry):
    eng = make_engine(qwen_root, tmp_path, qwen_registry)
    yield eng
    eng.close()
