"""The ComfyUI helper modules packs import (comfy_shims), checked against ComfyUI's documented
behaviour: folder_paths on the engine's folders, comfy.utils' resizing, checkpoint loading under the
pickle policy, tiled scaling and ProgressBar, model_management's interrupt, GraphBuilder."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from nodegraph import Engine
from nodegraph.comfy_compat import CustomNodeSettings, load_custom_nodes
from nodegraph.comfy_compat.host import HOST
from nodegraph.context import Paths
from nodegraph.registry import default_registry

from tests.custom_nodes.packs import write_packs


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("helpers")
    registry = default_registry(packs=False)
    load_custom_nodes(registry, CustomNodeSettings((write_packs(root / "custom_nodes", "ng_single.py"),)),
                      paths=Paths.under(root), device="cpu")
    return registry


@pytest.fixture
def bound(registry, tmp_path):
    """The helper modules bound to folders under ``tmp_path``."""
    previous = HOST.paths
    paths = Paths.under(tmp_path)
    HOST.bind(paths=paths)
    yield paths
    HOST.bind(paths=previous)


def test_folder_paths_lists_the_engines_model_folders(bound):
    import folder_paths

    (bound.models_dir / "loras" / "sub").mkdir(parents=True)
    (bound.models_dir / "loras" / "b.safetensors").write_bytes(b"x")
    (bound.models_dir / "loras" / "sub" / "a.pt").write_bytes(b"x")
    (bound.models_dir / "loras" / "notes.txt").write_text("not a model")
    assert folder_paths.get_filename_list("loras") == ["b.safetensors", "sub/a.pt"]
    assert folder_paths.get_full_path("loras", "sub/a.pt") == str(bound.models_dir.resolve() / "loras" / "sub" / "a.pt")
    assert folder_paths.get_full_path("loras", "../loras/b.safetensors") is None  # no way out of the folder
    with pytest.raises(FileNotFoundError):
        folder_paths.get_full_path_or_raise("loras", "missing.pt")
    assert folder_paths.get_input_directory() == str(bound.input_dir.resolve())
    assert folder_paths.models_dir == str(bound.models_dir.resolve())
    # ComfyUI's legacy names and a pack's own kind
    assert folder_paths.get_folder_paths("unet") == folder_paths.get_folder_paths("diffusion_models")
    extra = bound.models_dir.parent / "ipadapter_extra"
    extra.mkdir()
    (extra / "ip.bin").write_bytes(b"x")
    folder_paths.add_model_folder_path("ipadapter", str(extra))
    assert "ip.bin" in folder_paths.get_filename_list("ipadapter")
    folder_paths.folder_names_and_paths["ng_kind"] = ([str(extra)], {".bin"})
    assert folder_paths.get_filename_list("ng_kind") == ["ip.bin"]


def test_annotated_paths_and_save_image_path(bound):
    import folder_paths

    assert folder_paths.get_annotated_filepath("x.png [output]") == str(bound.output_dir.resolve() / "x.png")
    assert folder_paths.get_annotated_filepath("x.png") == str(bound.input_dir.resolve() / "x.png")
    output = bound.output_dir.resolve()
    (output / "shots").mkdir(parents=True)
    (output / "shots" / "cat_00004_.png").write_bytes(b"x")
    (output / "shots" / "cat_00002_.png").write_bytes(b"x")
    (output / "shots" / "dog_00009_.png").write_bytes(b"x")
    folder, name, counter, subfolder, prefix = folder_paths.get_save_image_path("shots/cat", str(output), 64, 32)
    assert (folder, name, counter, subfolder) == (str(output / "shots"), "cat", 5, "shots")
    assert folder_paths.get_save_image_path("img_%width%x%height%", str(output), 64, 32)[1] == "img_64x32"
    with pytest.raises(ValueError, match="outside the output folder"):
        folder_paths.get_save_image_path("../escape", str(output))


def test_common_upscale_follows_comfyui(bound):
    import comfy.utils

    samples = torch.rand(2, 3, 8, 12)
    for method in ("nearest-exact", "bilinear", "area", "bicubic", "lanczos", "bislerp"):
        assert comfy.utils.common_upscale(samples, 6, 4, method, "disabled").shape == (2, 3, 4, 6)
    # center crop: 12x8 cropped to the 1:1 aspect before resizing (the middle 8 columns)
    cropped = comfy.utils.common_upscale(samples, 8, 8, "nearest-exact", "center")
    assert torch.equal(cropped, samples[:, :, :, 2:10])
    assert comfy.utils.common_upscale(torch.rand(1, 4, 3, 8, 8), 4, 4, "bilinear", "disabled").shape == (1, 4, 3, 4, 4)


def test_load_torch_file_reads_safetensors_and_refuses_pickle_outside_the_policy(bound, tmp_path):
    import comfy.utils
    from safetensors.torch import save_file

    weights = {"w": torch.arange(4.0)}
    save_file(weights, str(tmp_path / "m.safetensors"), metadata={"kind": "test"})
    sd, meta = comfy.utils.load_torch_file(str(tmp_path / "m.safetensors"), return_metadata=True)
    assert torch.equal(sd["w"], weights["w"]) and meta == {"kind": "test"}
    torch.save({"state_dict": weights}, tmp_path / "m.ckpt")
    with pytest.raises(PermissionError, match="--allow-pickle"):
        comfy.utils.load_torch_file(str(tmp_path / "m.ckpt"))


def test_tiled_scale_matches_the_untiled_function(bound):
    import comfy.utils

    image = torch.rand(1, 3, 20, 28)

    def double(tile):
        return torch.nn.functional.interpolate(tile, scale_factor=2, mode="nearest")

    steps = comfy.utils.get_tiled_scale_steps(28, 20, 8, 8, 2)
    tiled = comfy.utils.tiled_scale(image, double, tile_x=8, tile_y=8, overlap=2, upscale_amount=2)
    assert torch.allclose(tiled, double(image), atol=1e-5)
    assert steps > 1


def test_resize_and_repeat_to_batch_size(bound):
    import comfy.utils

    batch = torch.arange(4.0).reshape(4, 1)
    assert comfy.utils.repeat_to_batch_size(batch[:2], 5).flatten().tolist() == [0, 1, 0, 1, 0]
    assert comfy.utils.resize_to_batch_size(batch, 2).flatten().tolist() == [0, 3]
    assert comfy.utils.resize_to_batch_size(batch[:2], 3).flatten().tolist() == [0, 1, 1]


def test_an_interrupt_stops_a_pack_node_at_its_progress_and_checks(registry, bound):
    """A pack node in a long loop is interrupted where ComfyUI's would be (ProgressBar.update,
    throw_exception_if_processing_interrupted); catching InterruptProcessingException catches ours."""
    import comfy.model_management
    import comfy.utils

    started = threading.Event()
    seen: dict = {}

    class Loop:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "run"

        def run(self):
            bar = comfy.utils.ProgressBar(10_000)
            started.set()
            try:
                for _ in range(10_000):
                    time.sleep(0.01)
                    comfy.model_management.throw_exception_if_processing_interrupted()
                    bar.update(1)
            except comfy.model_management.InterruptProcessingException:
                seen["caught"] = True
                raise
            return (1,)

    from nodegraph.comfy_compat.classic import build_node_class

    registry.register(build_node_class("NgLoop", Loop, "test"), name="NgLoop")
    engine = Engine(registry, paths=bound, device="cpu", threads=1)
    try:
        threading.Thread(target=lambda: (started.wait(30), engine.interrupt()), daemon=True).start()
        result = engine.run({"1": {"class_type": "NgLoop", "inputs": {}},
                             "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}})
    finally:
        engine.close()
    assert result.status == "interrupted" and seen == {"caught": True}


def test_graph_builder_builds_api_graphs(registry):
    from comfy_execution.graph import ExecutionBlocker
    from comfy_execution.graph_utils import ExecutionBlocker as SameBlocker
    from comfy_execution.graph_utils import GraphBuilder, is_link

    assert SameBlocker is ExecutionBlocker

    graph = GraphBuilder(prefix="p.")
    first = graph.node("NgAdd", a=1, b=2)
    second = graph.node("NgAdd", a=first.out(0), b=3)
    assert is_link(second.out(0)) and not is_link(["1", True])
    assert graph.finalize() == {"p.1": {"class_type": "NgAdd", "inputs": {"a": 1, "b": 2}},
                                "p.2": {"class_type": "NgAdd", "inputs": {"a": ["p.1", 0], "b": 3}}}
