"""An engine whose models folder is a tree of tiny models built for a test session (the diffusion and
the sampling tests)."""

from __future__ import annotations

from nodegraph import Engine, OutputCache
from nodegraph.context import Paths
from nodegraph.models import ModelManager


def make_engine(model_root, tmp_path, registry, **manager_kwargs) -> Engine:
    """An engine whose models folder is the session's tiny-model tree."""
    paths = Paths(output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
                  models_dir=model_root / "models")
    manager = ModelManager("cpu", **manager_kwargs)
    return Engine(registry, paths=paths, device="cpu", threads=1, cache=OutputCache(ram_budget=512 << 20),
                  services={"models": manager})
