"""Scale-out fixtures: one local Ray cluster for the session (2 CPUs), real servers on 127.0.0.1 whose
jobs run on 2 Ray engine actors (the Ray runner; ``cluster_helpers``), and a folder of tiny models."""

from __future__ import annotations

import logging
import pathlib

import pytest

from nodegraph.context import Paths

from tests.cluster.cluster_helpers import RAY_SERVERS, RayServer
from tests.cluster.cluster_nodes import save_tiny_model
from tests.helpers.live_server import ServerSetup


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with 2 CPUs, quiet (no dashboard, worker logs not copied to the test output)."""
    ray = pytest.importorskip("ray")  # the [ray] extra; scripts/test installs it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True)
    yield ray
    ray.shutdown()


@pytest.fixture
def server_setup(ray_cluster) -> ServerSetup:
    return RAY_SERVERS


@pytest.fixture
def start_ray_server(start_server):
    """``start_ray_server(ray=None, **config_overrides)``: ``ray`` overrides the runner's
    :class:`~nodegraph.cluster.RaySettings` fields."""

    def start(ray: dict | None = None, **overrides) -> RayServer:
        return start_server(runner=ray, **overrides)

    return start


@pytest.fixture
def tiny_models(tmp_path) -> pathlib.Path:
    """``models/tiny``: a.safetensors, b.safetensors (different weights), broken.safetensors (not one)."""
    folder = Paths.under(tmp_path).models_dir / "tiny"
    save_tiny_model(folder / "a.safetensors", seed=1)
    save_tiny_model(folder / "b.safetensors", seed=2)
    (folder / "broken.safetensors").write_bytes(b"this is not a safetensors file" * 4)
    return folder
