"""Patterns found in real packs (bench/custom_packs.py on ComfyUI_essentials, ComfyUI-VideoHelperSuite,
ComfyUI-KJNodes), each reproduced by a minimal pack written here: nothing is fetched."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nodegraph import Engine
from nodegraph.comfy_compat import CustomNodeSettings, load_custom_nodes
from nodegraph.context import Paths
from nodegraph.registry import default_registry

# VideoHelperSuite's VHS_VideoCombine: its hidden section is a dict that says it contains every name,
# so the widgets its frontend adds for the chosen format (crf, pix_fmt …) reach **kwargs as constants.
CONTAINS_ALL = '''
class ContainsAll(dict):
    def __contains__(self, other):
        return True
    def __getitem__(self, key):
        return super().get(key, (None, {}))

class Combine:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"fmt": (["gif", "mp4"],)},
                "hidden": ContainsAll({"unique_id": "UNIQUE_ID"})}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "combine"
    OUTPUT_NODE = True
    def combine(self, fmt, unique_id=None, **kwargs):
        text = f"{fmt} node={unique_id} " + ",".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
        return {"ui": {"text": [text]}, "result": (text,)}

NODE_CLASS_MAPPINGS = {"NgContainsAllCombine": Combine}
'''

PACKS = {"ng_contains_all": CONTAINS_ALL}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_patterns")
    folder = root / "custom_nodes"
    for name, source in PACKS.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(textwrap.dedent(source).lstrip())
    paths = Paths.under(root)
    registry = default_registry(packs=False)
    load_custom_nodes(registry, CustomNodeSettings((folder,)), paths=paths, device="cpu")
    assert registry.load_errors == []
    return registry, paths


@pytest.fixture
def engine(loaded):
    registry, paths = loaded
    engine = Engine(registry, paths=paths, device="cpu", threads=2)
    yield engine
    engine.close()


def test_a_hidden_section_that_contains_every_name_takes_undeclared_constants(engine):
    prompt = {"7": {"class_type": "NgContainsAllCombine",
                    "inputs": {"fmt": "mp4", "crf": 19, "pix_fmt": "yuv420p", "save_metadata": True}}}
    result = engine.run(prompt)
    assert result.ok, result.failure
    assert result.outputs["7"]["text"] == ["mp4 node=7 crf=19,pix_fmt='yuv420p',save_metadata=True"]
