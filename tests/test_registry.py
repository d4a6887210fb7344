"""Registry: built-ins from nodes/, third-party packs from the `nodegraph.nodes` entry-point group,
and the ComfyUI /object_info description derived from node declarations."""

from __future__ import annotations

import importlib
import json
import textwrap

from nodegraph.registry import NodeRegistry, default_registry


def make_installed_pack(root, name: str, body: str, entry: str) -> None:
    """Lay out a package + dist-info exactly as pip installs it (so importlib.metadata sees it)."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[nodegraph.nodes]\n{name} = {entry}\n")


def test_entry_point_node_pack_is_discovered_and_runs(tmp_path, monkeypatch):
    make_installed_pack(tmp_path, "ng_demo_pack", """
        from nodegraph.node import Input, Node, NodeResult, Output

        class ShoutText(Node):
            '''Upper-cases text.'''
            category = "demo"
            output_node = True
            text = Input("STRING", default="hi")

            def execute(self, text):
                return NodeResult(ui={"text": [text.upper()]})
        """, "ng_demo_pack")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry = default_registry()
    assert "ShoutText" in registry
    assert "ng_demo_pack" in registry.source_of("ShoutText")
    from nodegraph import Engine
    engine = Engine(registry, device="cpu")
    result = engine.run({"1": {"class_type": "ShoutText", "inputs": {"text": "loud"}}})
    assert result.outputs == {"1": {"text": ["LOUD"]}}
    engine.close()


def test_broken_pack_is_recorded_not_fatal(tmp_path, monkeypatch):
    make_installed_pack(tmp_path, "ng_broken_pack", "raise ImportError('missing dependency xyz')\n",
                        "ng_broken_pack")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry = default_registry()
    assert any("xyz" in e.message for e in registry.load_errors)
    assert "Switch" in registry  # built-ins still there


def test_object_info_has_comfyui_shape(registry):
    info = registry.object_info()
    scale = info["Scale"]
    assert scale["input"]["required"]["factor"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0}]
    assert scale["input"]["required"]["mode"] == [["floor", "round"], {"default": "floor"}]
    assert scale["input"]["required"]["x"] == ["INT", {"forceInput": True}]
    assert scale["input_order"] == {"required": ["x", "factor", "mode"]}
    assert scale["output"] == ["FLOAT"] and scale["output_name"] == ["FLOAT"]
    assert scale["output_is_list"] == [False]
    assert info["Range"]["output_is_list"] == [True]
    assert info["Sink"]["output_node"] is True
    assert info["Text"]["input"]["optional"] == {"flag": ["BOOLEAN", {"default": False}]}
    switch = info["Switch"]["input"]["required"]
    assert switch["on_true"][1]["lazy"] is True
    for entry in info.values():
        assert set(entry) >= {"input", "output", "output_is_list", "output_name", "name", "display_name",
                              "description", "category", "output_node", "python_module"}
    json.dumps(info)  # must be JSON-serialisable
    assert registry.object_info("Nope") == {}


def test_registry_refuses_non_nodes():
    import pytest

    with pytest.raises(TypeError):
        NodeRegistry().register(dict)  # type: ignore[arg-type]
