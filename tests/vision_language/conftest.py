"""Fixtures for the language-and-vision suite: one tiny models tree and one model manager per session."""

from __future__ import annotations

import pytest

from nodegraph import Engine, OutputCache, Paths
from nodegraph.models import ModelManager

from tests.helpers.engines import registry_with
from tests.helpers.tiny_sd import build_sd1
from tests.vision_language.vl_test_nodes import VL_TEST_NODES
from tests.vision_language.vl_tiny_models import build_models_tree


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    return build_models_tree(tmp_path_factory.mktemp("vl"))


@pytest.fixture(scope="session")
def model_manager():
    return ModelManager("cpu")


@pytest.fixture(scope="session")
def vl_registry():
    return registry_with(VL_TEST_NODES)


@pytest.fixture
def vl_paths(models_root, tmp_path):
    paths = Paths(output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
                  models_dir=models_root / "models")
    for p in (paths.output_dir, paths.input_dir, paths.temp_dir):
        p.mkdir(parents=True, exist_ok=True)
    return paths


@pytest.fixture
def vl_engine(vl_registry, vl_paths, model_manager):
    eng = Engine(vl_registry, paths=vl_paths, device="cpu", threads=2, cache=OutputCache(ram_budget=256 << 20),
                 services={"models": model_manager})
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def tiny_sd(models_root):
    """The tiny SD1 checkpoint the diffusion tests use too, built into this suite's models tree (for workflows)."""
    return build_sd1(models_root)

