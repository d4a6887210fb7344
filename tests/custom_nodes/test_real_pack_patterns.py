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

# ComfyUI-KJNodes: a few classes of a pack need ComfyUI internals and do not register; the pack's
# routes and web folder are served all the same, as ComfyUI serves those of every pack that imported.
PARTIAL = '''
from aiohttp import web
from server import PromptServer
from comfy_extras.nodes_lt import LTXVAddGuide


@PromptServer.instance.routes.get("/ngpartial/hello")
async def hello(request):
    return web.json_response({"hello": "partial"})


class Good:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    def run(self):
        return (1,)


class NeedsInternals(LTXVAddGuide):
    @classmethod
    def INPUT_TYPES(cls):
        return LTXVAddGuide.INPUT_TYPES()
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"


WEB_DIRECTORY = "./js"
NODE_CLASS_MAPPINGS = {"NgPartialGood": Good, "NgPartialNeedsInternals": NeedsInternals}
'''

PACKS = {"ng_contains_all": CONTAINS_ALL, "ng_partial": PARTIAL}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_patterns")
    folder = root / "custom_nodes"
    for name, source in PACKS.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(textwrap.dedent(source).lstrip())
    (folder / "ng_partial" / "js").mkdir()
    (folder / "ng_partial" / "js" / "ext.js").write_text("// a pack's frontend extension\n")
    paths = Paths.under(root)
    registry = default_registry(packs=False)
    load_custom_nodes(registry, CustomNodeSettings((folder,)), paths=paths, device="cpu")
    assert [e.source for e in registry.load_errors] == ["custom_nodes/ng_partial"]
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


def test_a_pack_with_classes_that_did_not_register_still_serves_its_routes_and_web_folder(loaded, start_server):
    registry, _ = loaded
    [partial] = [p for p in registry.custom_packs if p.name == "ng_partial"]
    assert partial.nodes == ("NgPartialGood",) and "NgPartialNeedsInternals" in partial.error
    assert partial.ok
    server = start_server(custom_nodes_dirs=(partial.path.parent,))
    client = server.client()
    assert client.get("/ngpartial/hello").json() == {"hello": "partial"}
    assert "/extensions/ng_partial/ext.js" in client.get("/extensions").json()
    assert client.get("/extensions/ng_partial/ext.js").body.decode() == "// a pack's frontend extension\n"
    assert "NgPartialGood" in client.get("/object_info").json()
