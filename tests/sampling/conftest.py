"""The sampling tests' models: the tiny random SD 1.x model of ``tests.helpers.tiny_sd`` (built once per session)
and the tiny flow transformer of :mod:`flow_model`, with an engine that has both."""

from __future__ import annotations

import pytest


from tests.helpers.engines import make_engine, registry_with
from tests.helpers.tiny_sd import build_sd1
from tests.sampling.flow_model import TEST_NODES


@pytest.fixture(scope="session")
def sampling_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling_models")
    return root, build_sd1(root)


@pytest.fixture(scope="session")
def tiny_sd(sampling_models):
    return sampling_models[1]


@pytest.fixture(scope="session")
def sampling_registry():
    return registry_with(TEST_NODES)


@pytest.fixture
def engine(sampling_models, sampling_registry, tmp_path):
    eng = make_engine(sampling_models[0], tmp_path, sampling_registry)
    yield eng
    eng.close()
