"""Small helpers for the language-and-vision tests."""

from __future__ import annotations

from nodegraph import Engine, OutputCache


def run_ok(engine, graph, **kwargs):
    result = engine.run(graph, **kwargs)
    assert result.failure is None, f"{result.failure.exception_type}: {result.failure.exception_message}"
    assert result.ok, result.status
    return result


def fresh_engine(engine: Engine) -> Engine:
    """Same registry, folders and models, but an empty output cache."""
    return Engine(engine.registry, paths=engine.paths, device="cpu", workers=2,
                  cache=OutputCache(ram_budget=64 << 20), services={"models": engine.services["models"]})


def failure_of(engine, graph):
    result = engine.run(graph)
    assert result.failure is not None, "expected the run to fail"
    return result.failure
