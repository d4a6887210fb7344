"""Loading custom node packs: which entries of a ``custom_nodes/`` folder are packs, what a failing pack
does to the others, the disable switches, ComfyUI's module names (helpers and placeholders), and the
``nodegraph nodes`` / ``run`` / ``validate`` commands with packs."""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import pytest

from nodegraph.cli import main
from nodegraph.comfy_compat import CustomNodeSettings, NotSupportedByNodegraph, describe_packs, load_custom_nodes
from nodegraph.comfy_compat import finder
from nodegraph.comfy_compat.loader import pack_entries
from nodegraph.context import Paths
from nodegraph.registry import NodeRegistry, default_registry

from tests.custom_nodes.packs import write_packs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_packs(tmp_path_factory.mktemp("packs") / "custom_nodes")


def load(folder, **settings) -> tuple[NodeRegistry, list]:
    registry = default_registry(packs=False)
    packs = load_custom_nodes(registry, CustomNodeSettings((folder,), **settings), paths=Paths(), device="cpu")
    return registry, packs


def test_folders_and_py_files_are_packs_other_entries_are_not(folder):
    names = [name for name, _ in pack_entries(folder)]
    assert names == ["broken_import", "half_broken", "ng_single", "ngroutes", "ngtest_protocol", "ngv3"]


def test_a_failing_pack_is_reported_and_the_others_load(folder):
    registry, packs = load(folder)
    by_name = {pack.name: pack for pack in packs}
    assert "this pack needs a library that is not installed" in by_name["broken_import"].error
    assert by_name["broken_import"].nodes == ()
    assert by_name["half_broken"].nodes == ("NgGood",)  # the class without FUNCTION is left out, named
    assert by_name["half_broken"].offered == 2
    protocol = by_name["ngtest_protocol"]
    assert protocol.shadowed == ("ImageInvert",) and protocol.offered == len(protocol.nodes) + 1
    assert "NgNoFunction" in by_name["half_broken"].error and "no FUNCTION" in by_name["half_broken"].error
    assert "NgV3Add" in by_name["ngv3"].nodes  # a V3 pack: its classes load, the one it cannot is named
    assert "NeedsInternals: NotSupportedByNodegraph" in by_name["ngv3"].error
    assert "comfy_extras.nodes_lt.LTXVAddGuide.GET_SCHEMA" in by_name["ngv3"].error
    assert {"NgHello", "NgPing", "NgAdd", "NgGood"} <= set(registry.names())
    assert registry.source_of("NgHello") == "custom_nodes.ng_single"
    sources = {error.source for error in registry.load_errors}
    assert sources == {"custom_nodes/broken_import", "custom_nodes/half_broken", "custom_nodes/ngv3"}
    lines = describe_packs(packs)
    assert any(line.startswith("custom node pack broken_import: FAILED") for line in lines)
    assert by_name["ngroutes"].web_dir == folder / "ngroutes" / "js"


def test_a_pack_is_imported_once_and_registers_again_for_another_registry(folder):
    first, first_packs = load(folder)
    second, second_packs = load(folder)
    assert first["NgHello"].comfy_class is second["NgHello"].comfy_class
    expected = "import failed: RuntimeError: this pack needs a library that is not installed"
    for packs in (first_packs, second_packs):  # a failed import is not retried, and reads the same
        assert [p.error for p in packs if p.name == "broken_import"] == [expected]


def test_packs_can_be_disabled_one_by_one_or_all(folder):
    registry, packs = load(folder, disabled=frozenset({"ng_single"}))
    assert "NgHello" not in registry and "NgAdd" in registry
    assert [p.name for p in packs if p.disabled] == ["ng_single"]
    nothing, none = load(folder, enabled=False)
    assert not nothing.custom_packs and none == [] and "NgAdd" not in nothing


def test_the_default_folder_is_named_by_the_environment_or_is_custom_nodes(monkeypatch, tmp_path):
    monkeypatch.delenv("NODEGRAPH_CUSTOM_NODES", raising=False)
    assert [str(p) for p in CustomNodeSettings.default().dirs] == ["custom_nodes"]
    monkeypatch.setenv("NODEGRAPH_CUSTOM_NODES", str(tmp_path))
    assert CustomNodeSettings.default().dirs == (tmp_path,)
    assert CustomNodeSettings.default([tmp_path / "x"]).dirs == (tmp_path / "x",)


def test_unprovided_comfy_modules_import_and_fail_only_when_called(folder):
    load(folder)  # installs the finder
    attention = importlib.import_module("comfy.ldm.modules.attention")
    function = attention.optimized_attention
    with pytest.raises(NotSupportedByNodegraph, match="comfy.ldm.modules.attention.optimized_attention"):
        function(1, 2, 3)
    from comfy.model_patcher import ModelPatcher  # a class a pack may subclass

    class Patched(ModelPatcher):
        pass

    with pytest.raises(NotSupportedByNodegraph, match="comfy.model_patcher.ModelPatcher"):
        Patched()
    assert not isinstance(object(), ModelPatcher)
    extras = importlib.import_module("comfy_extras.nodes_upscale_model")
    with pytest.raises(NotSupportedByNodegraph):
        extras.ImageUpscaleWithModel()


def test_comfy_names_map_to_the_helper_modules(folder):
    load(folder)
    import comfy.utils
    import folder_paths
    import nodes
    import server

    assert folder_paths.__name__ == "comfy_shims.folder_paths"
    assert comfy.utils.ProgressBar.__module__ == "comfy_shims.comfy.utils"
    assert nodes.MAX_RESOLUTION == 16384 and "NgAdd" in nodes.NODE_CLASS_MAPPINGS
    assert nodes.NODE_CLASS_MAPPINGS["NgAdd"].FUNCTION == "run"  # a pack class as the pack wrote it
    assert nodes.SaveImage.FUNCTION == "save_images"  # ours, as a classic class
    assert server.PromptServer.instance is server.PromptServer.instance
    assert importlib.util.find_spec("nodes_not_comfy") is None  # other names are not ours


def test_helper_modules_have_exactly_comfyuis_names(folder):
    """A name ComfyUI's module has but nodegraph does not implement is a placeholder; any other name is
    an AttributeError, so that ``hasattr`` checks in packs answer as in ComfyUI."""
    load(folder)
    import comfy.model_management
    import nodes
    import server

    assert not hasattr(nodes, "VHSLoadFormats")  # a pack adds it when missing
    nodes.VHSLoadFormats = {}
    assert nodes.VHSLoadFormats == {}
    del nodes.VHSLoadFormats
    with pytest.raises(NotSupportedByNodegraph, match="comfy.model_management.load_models_gpu"):
        comfy.model_management.load_models_gpu([])
    assert not hasattr(comfy.model_management, "no_such_function")
    assert server.web.json_response  # ComfyUI's server module has aiohttp's web
    assert server.PromptServer.instance.app.router.frozen is False
    from comfy.k_diffusion.utils import FolderOfImages

    assert ".png" in FolderOfImages.IMG_EXTENSIONS


def test_the_finder_refuses_to_mix_with_a_real_comfyui(monkeypatch):
    real = types.ModuleType("folder_paths")
    monkeypatch.setitem(sys.modules, "folder_paths", real)
    assert finder.foreign_comfy_modules() == ["folder_paths"]


# -- the command line -----------------------------------------------------------------------------

def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_nodes_lists_pack_nodes_with_their_pack_and_the_packs_that_failed(folder, capsys):
    code, out, err = run_cli(["nodes", "--custom-nodes-dir", folder], capsys)
    assert code == 0
    [line] = [line for line in out.splitlines() if line.startswith("NgAdd ")]
    assert "ngtest/math" in line and "Add (ngtest)" in line and line.endswith("[custom_nodes/ngtest_protocol]")
    assert "node pack custom_nodes/broken_import failed to load" in err
    code, out, _ = run_cli(["nodes", "--custom-nodes-dir", folder, "--disable-custom-nodes"], capsys)
    assert "NgAdd" not in out


def test_run_and_validate_with_packs(folder, tmp_path, capsys):
    workflow = tmp_path / "flow.json"
    workflow.write_text(json.dumps({"1": {"class_type": "NgAdd", "inputs": {"a": 20, "b": 22}},
                                    "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}}))
    common = ["--custom-nodes-dir", folder, "--output-dir", tmp_path / "out", "--quiet"]
    code, out, err = run_cli(["run", workflow, *common], capsys)
    assert code == 0, err
    assert "42" in out
    code, out, err = run_cli(["run", workflow, *common, "--disable-custom-node", "ngtest_protocol"], capsys)
    assert code == 2 and "no node type 'NgAdd'" in err
    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps({"1": {"class_type": "NgRaise", "inputs": {"value": 9}},
                                   "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}}))
    code, out, err = run_cli(["run", failing, *common], capsys)
    assert code == 1 and "ValueError: the pack refuses 9" in err
    code, out, err = run_cli(["validate", workflow, "--custom-nodes-dir", folder], capsys)
    assert code == 0 and out.startswith("ok:")


def test_a_comfyui_pack_installed_as_a_distribution_loads_through_the_entry_point_group(tmp_path, monkeypatch):
    package = tmp_path / "ng_installed_comfy_pack"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import folder_paths\nimport comfy.utils\n\n"
        "class Shout:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {'text': ('STRING', {'default': 'hi'})}}\n"
        "    RETURN_TYPES = ('STRING',)\n"
        "    FUNCTION = 'shout'\n"
        "    OUTPUT_NODE = True\n\n"
        "    def shout(self, text):\n"
        "        return {'ui': {'text': [text.upper()]}, 'result': (text.upper(),)}\n\n"
        "NODE_CLASS_MAPPINGS = {'NgInstalledShout': Shout}\n"
        "NODE_DISPLAY_NAME_MAPPINGS = {'NgInstalledShout': 'Shout (installed)'}\n")
    dist = tmp_path / "ng_installed_comfy_pack-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ng-installed-comfy-pack\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nodegraph.nodes]\nshout = ng_installed_comfy_pack\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    # as in a fresh process: no ComfyUI names yet (the entry point's loading provides them)
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if f is not finder.FINDER])
    for name in [n for n in sys.modules if n in ("folder_paths", "comfy") or n.startswith("comfy.")]:
        monkeypatch.delitem(sys.modules, name)
    registry = default_registry()
    assert registry.load_errors == []
    assert registry.object_info("NgInstalledShout")["NgInstalledShout"]["display_name"] == "Shout (installed)"
    from nodegraph import Engine

    engine = Engine(registry, device="cpu")
    try:
        result = engine.run({"1": {"class_type": "NgInstalledShout", "inputs": {"text": "loud"}}})
    finally:
        engine.close()
    assert result.outputs == {"1": {"text": ["LOUD"]}}


def test_a_missing_dependency_is_named_with_the_fix(tmp_path):
    pack = tmp_path / "custom_nodes" / "needs_more"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text("import ng_not_installed_anywhere.sub\nNODE_CLASS_MAPPINGS = {}\n")
    (pack / "requirements.txt").write_text("ng-not-installed-anywhere\n")
    _, [loaded] = load(tmp_path / "custom_nodes")
    assert loaded.error.startswith("import failed: ModuleNotFoundError: No module named 'ng_not_installed_anywhere'")
    assert "install the Python package that provides 'ng_not_installed_anywhere'" in loaded.error
    assert str(pack / "requirements.txt") in loaded.error


def test_ray_actors_load_the_servers_packs_from_the_same_folders(folder, tmp_path):
    """The Ray runner hands its actors the folders the server's packs came from (no Ray needed to
    build an actor's engine)."""
    from nodegraph.cluster.engine_actor import EngineActor
    from nodegraph.cluster.ray_runner import custom_node_folders
    from nodegraph.cluster.records import ActorSettings

    _, packs = load(folder, disabled=frozenset({"ngroutes"}))
    folders = custom_node_folders(packs)
    assert folders == (str(folder.resolve()),)
    settings = ActorSettings(Paths.under(tmp_path), "cpu", custom_nodes=folders,
                             disabled_custom_nodes=tuple(p.name for p in packs if p.disabled))
    actor = EngineActor("a1", settings)
    try:
        assert "NgHello" in actor.engine.registry and "NgPing" not in actor.engine.registry
    finally:
        actor.engine.close()


def test_serve_flags_become_the_servers_custom_node_settings(tmp_path, monkeypatch):
    from nodegraph.cli import _custom_nodes_config, build_parser

    monkeypatch.delenv("NODEGRAPH_CUSTOM_NODES", raising=False)
    args = build_parser().parse_args(["serve", "--custom-nodes-dir", str(tmp_path), "--disable-custom-node", "b",
                                      "--disable-custom-node", "a"])
    assert _custom_nodes_config(args) == {"custom_nodes_dirs": (tmp_path,), "disabled_custom_nodes": ("a", "b")}
    default = build_parser().parse_args(["serve"])
    assert _custom_nodes_config(default)["custom_nodes_dirs"] == (Path("custom_nodes"),)
    off = build_parser().parse_args(["serve", "--disable-custom-nodes"])
    assert _custom_nodes_config(off)["custom_nodes_dirs"] == ()
