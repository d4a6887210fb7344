"""Tiny SD models built once per session, and engines whose models folder holds them."""

from __future__ import annotations

import pytest
import torch

from nodegraph.registry import default_registry

from tests.helpers.engines import make_engine
from tests.helpers.tiny_sd import build_sd1, build_sdxl

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    return tmp_path_factory.mktemp("diffusion_models")


@pytest.fixture(scope="session")
def tiny_sd(model_root):
    return build_sd1(model_root)


@pytest.fixture(scope="session")
def tiny_sdxl(model_root, tiny_sd):
    return build_sdxl(model_root)


@pytest.fixture(scope="session")
def diffusion_registry():
    return default_registry(packs=False)


@pytest.fixture
def sd_engine(model_root, tiny_sd, tmp_path, diffusion_registry):
    eng = make_engine(model_root, tmp_path, diffusion_registry)
    (tmp_path / "input").mkdir(exist_ok=True)
    yield eng
    eng.close()
