"""Tiny SD3.5 and Flux.1 models built once per session, and engines whose models folder holds them."""

from __future__ import annotations

import pytest
import torch

from nodegraph.registry import default_registry

from tests.dit.tiny_flow import build_flux, build_sd3
from tests.helpers.engines import make_engine

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def flow_root(tmp_path_factory):
    return tmp_path_factory.mktemp("flow_models")


@pytest.fixture(scope="session")
def tiny_sd3(flow_root):
    return build_sd3(flow_root)


@pytest.fixture(scope="session")
def tiny_flux(flow_root, tiny_sd3):
    return build_flux(flow_root)


@pytest.fixture(scope="session")
def flow_registry():
    return default_registry(packs=False)


@pytest.fixture
def flow_engine(flow_root, tiny_sd3, tiny_flux, tmp_path, flow_registry):
    eng = make_engine(flow_root, tmp_path, flow_registry)
    yield eng
    eng.close()
