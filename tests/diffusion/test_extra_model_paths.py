"""Models from an existing ComfyUI install, found through ComfyUI's ``extra_model_paths.yaml``: listed
by ``/models/{folder}`` and the loaders' choices, and loaded, while nodegraph's own models folder is empty."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from nodegraph.cli import _paths, build_parser
from nodegraph.context import Paths
from nodegraph.model_folders import ModelFolder, ModelPathsError, extra_model_folders, load_extra_model_paths
from nodegraph.server import ServerConfig

from tests.diffusion.diffusion_helpers import txt2img_graph
from tests.helpers.live_server import LiveServer

YAML = """\
# an existing ComfyUI install, as ComfyUI's extra_model_paths.yaml.example writes it
comfyui:
    base_path: ../ComfyUI/
    checkpoints: models/checkpoints/
    clip: models/clip/
    unet: |
        models/unet
        models/diffusion_models
    loras: models/loras
a1111:
    base_path: ../webui
    is_default: true
    loras: |
         models/Lora
         models/LyCORIS
    hypernetworks: models/hypernetworks
empty:
"""


@pytest.fixture
def comfy_install(tmp_path, tiny_sd, model_root):
    """A ComfyUI folder beside the working directory holding a checkpoint (with its tokenizer next to
    it) and files in its legacy-named folders; the working directory has the yaml and an empty
    models folder of its own."""
    comfy = tmp_path / "ComfyUI" / "models"
    sd = comfy / "checkpoints" / "sd"
    sd.mkdir(parents=True)
    shutil.copy(tiny_sd.checkpoint, sd / "comfy_tiny.safetensors")
    shutil.copytree(model_root / "models" / "text_encoders" / "tokenizer", sd / "tokenizer")
    for folder, name in (("unet", "flux_unet.safetensors"), ("diffusion_models", "wan.safetensors"),
                         ("clip", "t5xxl.safetensors"), ("loras", "ink.safetensors")):
        (comfy / folder).mkdir(parents=True, exist_ok=True)
        (comfy / folder / name).write_bytes(b"0")
    (tmp_path / "webui" / "models" / "Lora").mkdir(parents=True)
    (tmp_path / "webui" / "models" / "Lora" / "ink.safetensors").write_bytes(b"1")
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "extra_model_paths.yaml").write_text(YAML)
    return work


def test_comfyui_format_is_read_as_comfyui_reads_it(comfy_install):
    folders = load_extra_model_paths(comfy_install / "extra_model_paths.yaml")
    root = comfy_install.parent
    assert folders[0] == ModelFolder("checkpoints", root / "ComfyUI" / "models" / "checkpoints", False,
                                     f"{comfy_install / 'extra_model_paths.yaml'}:comfyui")
    assert [(f.kind, f.path.relative_to(root).as_posix(), f.first) for f in folders[1:]] == [
        ("text_encoders", "ComfyUI/models/clip", False),       # clip is text_encoders
        ("diffusion_models", "ComfyUI/models/unet", False),    # unet is diffusion_models; one per line
        ("diffusion_models", "ComfyUI/models/diffusion_models", False),
        ("loras", "ComfyUI/models/loras", False),
        ("loras", "webui/models/Lora", True), ("loras", "webui/models/LyCORIS", True),  # is_default
        ("hypernetworks", "webui/models/hypernetworks", True)]
    paths = Paths(models_dir=comfy_install / "models", extra_model_dirs=folders)
    assert paths.model_dirs("loras") == (root / "webui/models/Lora", root / "webui/models/LyCORIS",
                                         comfy_install / "models/loras", root / "ComfyUI/models/loras")
    assert paths.model_dirs("unet") == paths.model_dirs("diffusion_models")
    assert paths.model_dirs("diffusion_models")[:2] == (comfy_install / "models/diffusion_models",
                                                        comfy_install / "models/unet")


def test_cli_reads_the_working_directory_file_and_the_flag(comfy_install, tmp_path, monkeypatch):
    monkeypatch.chdir(comfy_install)
    args = build_parser().parse_args(["run", "wf.json"])
    assert len(_paths(args).extra_model_dirs) == 8  # ./extra_model_paths.yaml, found by itself
    other = tmp_path / "other.yaml"
    other.write_text("mine:\n    llm: /models/llm\n")
    args = build_parser().parse_args(["serve", "--extra-model-paths-config", str(other),
                                      "--extra-model-paths-config", str(comfy_install / "extra_model_paths.yaml")])
    kinds = [f.kind for f in _paths(args).extra_model_dirs]
    assert len(kinds) == 9 and kinds[-1] == "llm"  # the working directory's file is not read twice
    with pytest.raises(ModelPathsError, match="does not exist"):
        extra_model_folders([tmp_path / "missing.yaml"], cwd=tmp_path)
    (tmp_path / "bad.yaml").write_text("comfyui:\n    checkpoints: [1, 2]\n")
    with pytest.raises(ModelPathsError, match=r"bad.yaml:comfyui.checkpoints must be a folder path"):
        load_extra_model_paths(tmp_path / "bad.yaml")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_a_comfyui_checkpoint_appears_in_the_lists_and_loads(comfy_install, tmp_path, monkeypatch):
    monkeypatch.chdir(comfy_install)
    paths = _paths(build_parser().parse_args(["serve"]))
    paths = Paths(output_dir=tmp_path / "out", input_dir=tmp_path / "in", temp_dir=tmp_path / "out" / "temp",
                  models_dir=paths.models_dir.resolve(), extra_model_dirs=paths.extra_model_dirs)
    server = LiveServer(ServerConfig(host="127.0.0.1", port=0, paths=paths, data_dir=tmp_path / "data",
                                     device="cpu", threads=1)).start()
    try:
        base = server.url
        assert get_json(f"{base}/models/checkpoints") == ["sd/comfy_tiny.safetensors"]
        assert get_json(f"{base}/api/models/diffusion_models") == ["flux_unet.safetensors", "wan.safetensors"]
        assert get_json(f"{base}/models/text_encoders") == ["t5xxl.safetensors"]
        assert get_json(f"{base}/models/loras") == ["ink.safetensors"]  # the same name in two folders: once
        assert "hypernetworks" in get_json(f"{base}/models")
        info = get_json(f"{base}/object_info")
        assert "sd/comfy_tiny.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
        assert info["UNETLoader"]["input"]["required"]["unet_name"][0] == ["flux_unet.safetensors", "wan.safetensors"]
        assert "t5xxl.safetensors" in info["CLIPLoader"]["input"]["required"]["clip_name"][0]

        graph = txt2img_graph(ckpt="sd/comfy_tiny.safetensors", steps=2, save=True).to_api()
        body = json.dumps({"prompt": graph}).encode()
        prompt_id = get_json_post(f"{base}/prompt", body)["prompt_id"]
        entry = wait_history(base, prompt_id)
        assert entry["status"]["status_str"] == "success", entry["status"]
        [image] = entry["outputs"]["9"]["images"]
        assert (paths.output_dir / image["subfolder"] / image["filename"]).is_file()
    finally:
        server.stop()


def get_json_post(url: str, body: bytes):
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as response:
        return json.loads(response.read())


def wait_history(base: str, prompt_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = get_json(f"{base}/history/{prompt_id}").get(prompt_id)
        if entry and entry["status"].get("completed") is not None and entry.get("outputs") is not None \
                and entry["status"]["status_str"] in ("success", "error"):
            return entry
        time.sleep(0.2)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout}s")


def test_language_and_upscale_model_folders_come_from_the_extra_paths_too(tmp_path):
    from nodegraph_nodes.langvision.common import list_model_folders, resolve_model_path
    from nodegraph_nodes.upscale.torch_upscaler import folder_choices, resolve

    shared = tmp_path / "shared"
    (shared / "llm" / "tiny-chat").mkdir(parents=True)
    (shared / "llm" / "tiny-chat" / "config.json").write_text("{}")
    (shared / "upscale" / "4x.safetensors").parent.mkdir(parents=True)
    (shared / "upscale" / "4x.safetensors").write_bytes(b"0")
    (tmp_path / "paths.yaml").write_text("shared:\n    base_path: shared\n    llm: llm\n    upscale_models: upscale\n")
    paths = Paths(models_dir=tmp_path / "models", extra_model_dirs=load_extra_model_paths(tmp_path / "paths.yaml"))
    assert list_model_folders(paths, "llm") == ["tiny-chat"]
    assert resolve_model_path(paths, "llm", "tiny-chat", "model_name") == shared / "llm" / "tiny-chat"
    assert folder_choices(paths) == ["4x.safetensors"]
    assert resolve(paths, "4x.safetensors").path == shared / "upscale" / "4x.safetensors"
