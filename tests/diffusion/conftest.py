"""Tiny SD models built once per session, and engines whose models folder holds them."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from nodegraph import Engine, OutputCache, Paths  # noqa: E402
from nodegraph.context import Paths as _Paths  # noqa: E402
from nodegraph.models import ModelManager  # noqa: E402
from nodegraph.registry import default_registry  # noqa: E402

from diffusion_helpers import make_engine  # noqa: E402
from tiny_models import build_sd1, build_sdxl  # noqa: E402

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
