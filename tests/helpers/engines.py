"""An engine whose models folder is a tree of tiny models built for a test session (the diffusion and
the sampling tests), and the built-in registry with a suite's test nodes added."""

from __future__ import annotations

from nodegraph import Engine, OutputCache
from nodegraph.context import Paths
from nodegraph.models import ModelManager
from nodegraph.registry import NodeRegistry, default_registry


def registry_with(test_nodes) -> NodeRegistry:
    """The built-in families (no third-party packs) plus ``test_nodes``, a suite's node classes."""
    registry = default_registry(packs=False)
    for cls in test_nodes:
        registry.register(cls)
    return registry


def engine_fixture(env: str = "tiny_env"):
    """A test module's ``engine = engine_fixture()``: the pytest fixture of an engine over the built-in families
    (no packs) whose models folder is that of the module's fixture ``env`` (a tiny tree with ``root``), closed
    after each test."""
    import pytest

    @pytest.fixture
    def engine(request, tmp_path):
        eng = make_engine(request.getfixturevalue(env).root, tmp_path, default_registry(packs=False))
        yield eng
        eng.close()

    return engine


def make_engine(model_root, tmp_path, registry, **manager_kwargs) -> Engine:
    """An engine whose models folder is the session's tiny-model tree."""
    paths = Paths(output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
                  models_dir=model_root / "models")
    manager = ModelManager("cpu", **manager_kwargs)
    return Engine(registry, paths=paths, device="cpu", threads=1, cache=OutputCache(ram_budget=512 << 20),
                  services={"models": manager})
