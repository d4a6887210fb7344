"""Small helpers for the language-and-vision tests."""

from __future__ import annotations

import json

from nodegraph import Engine, OutputCache


def run_ok(engine, graph, **kwargs):
    result = engine.run(graph, **kwargs)
    assert result.failure is None, f"{result.failure.exception_type}: {result.failure.exception_message}"
    assert result.ok, result.status
    return result


def fresh_engine(engine: Engine) -> Engine:
    """Same registry, folders and models, but an empty output cache."""
    return Engine(engine.registry, paths=engine.paths, device="cpu", threads=2,
                  cache=OutputCache(ram_budget=64 << 20), services={"models": engine.services["models"]})


def failure_of(engine, graph):
    result = engine.run(graph)
    assert result.failure is not None, "expected the run to fail"
    return result.failure


TINY = {"v1-5-pruned-emaonly.safetensors": "tiny_sd15.safetensors", "Qwen2.5-0.5B-Instruct": "tiny-llama",
        "blip-image-captioning-base": "tiny-blip", "blip-vqa-base": "tiny-blip-vqa", "clip-vit-base-patch32": "tiny-clip"}


def shrink(nodes: dict, names: dict[str, str] = TINY) -> dict:
    """A ready workflow made small for tiny models: model names mapped, 64 px, 2 steps, 8 tokens."""
    for node in nodes.values():
        inputs = node["inputs"]
        for key, value in list(inputs.items()):
            if isinstance(value, str) and value in names:
                inputs[key] = names[value]
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if node["class_type"] == "KSampler":
            inputs["steps"] = 2
        if "max_tokens" in inputs and not isinstance(inputs["max_tokens"], list):
            inputs["max_tokens"] = 8
        if node["class_type"] == "Repeat":
            inputs["body"] = json.dumps(shrink(json.loads(inputs["body"]), names))
    return nodes
