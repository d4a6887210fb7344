"""Bad model files and inputs give clear node errors; the engine keeps working afterwards."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.errors import ValidationFailed
from nodegraph.builder import Graph

from tests.diffusion.diffusion_helpers import txt2img_graph
from tests.helpers.engines import make_engine


def _fail(engine, graph) -> str:
    result = engine.run(graph)
    assert result.failure is not None, "expected a node failure"
    return result.failure.exception_message


def _ckpt_graph(name):
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", "4", ckpt_name=name)
    g.node("PreviewAny", source=ck.out(0))
    return g


@pytest.fixture
def bad_files(model_root, tiny_sd):
    ckpts = model_root / "models" / "checkpoints"
    data = tiny_sd.checkpoint.read_bytes()
    (ckpts / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (ckpts / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(ckpts / "a_vae.safetensors"))
    save_file({"model.layers.0.mlp.weight": torch.zeros(4, 4)}, str(ckpts / "an_llm.safetensors"))
    shutil.copyfile(tiny_sd.checkpoint, ckpts / "pickled.ckpt")
    names = ["truncated.safetensors", "corrupt.safetensors", "a_vae.safetensors", "an_llm.safetensors", "pickled.ckpt"]
    yield names
    for n in names:
        (ckpts / n).unlink()


def test_bad_checkpoints_are_clear_errors(sd_engine, bad_files):
    msg = _fail(sd_engine, _ckpt_graph("truncated.safetensors"))
    assert "truncated.safetensors" in msg and "corrupt or truncated" in msg
    assert "corrupt or truncated" in _fail(sd_engine, _ckpt_graph("corrupt.safetensors"))
    msg = _fail(sd_engine, _ckpt_graph("a_vae.safetensors"))
    assert "not a Stable Diffusion checkpoint" in msg and "VAE" in msg
    assert "language model" in _fail(sd_engine, _ckpt_graph("an_llm.safetensors"))
    msg = _fail(sd_engine, _ckpt_graph("pickled.ckpt"))
    assert "pickle" in msg and "--allow-pickle" in msg
    assert sd_engine.run(txt2img_graph(steps=2)).ok  # still works


def test_pickle_allowed_when_configured(model_root, tiny_sd, tmp_path, diffusion_registry, bad_files):
    engine = make_engine(model_root, tmp_path, diffusion_registry, allow_pickle=True)
    try:
        torch.save({"state_dict": dict(__import__("safetensors.torch").torch.load_file(str(tiny_sd.checkpoint)))},
                   str(model_root / "models" / "checkpoints" / "pickled.ckpt"))
        assert engine.run(_ckpt_graph("pickled.ckpt")).ok
    finally:
        engine.close()


def test_missing_file_is_a_validation_error(sd_engine):
    with pytest.raises(ValidationFailed) as info:
        sd_engine.run(_ckpt_graph("nope.safetensors"))
    assert "nope.safetensors" in str(info.value)


def test_width_not_multiple_of_8(sd_engine):
    msg = _fail(sd_engine, txt2img_graph(width=100, steps=1))
    assert "width 100 is not a multiple of 8" in msg
    assert sd_engine.run(txt2img_graph(steps=1)).ok


def test_every_sampler_schedule_pair_runs(sd_engine):
    """ddim + karras was refused while KSampler drove diffusers' schedulers; the sampling core runs every
    pair, as ComfyUI does."""
    assert sd_engine.run(txt2img_graph(sampler="ddim", scheduler="karras", steps=1)).ok


def test_loader_choices_refresh(sd_engine, model_root, tiny_sd):
    from nodegraph_nodes.diffusion.loaders import CheckpointLoaderSimple

    spec = CheckpointLoaderSimple.INPUTS["ckpt_name"]
    before = spec.current_choices(sd_engine.paths)
    assert "tiny_sd15.safetensors" in before and "tiny_sd15" in before  # file and diffusers folder
    extra = model_root / "models" / "checkpoints" / "sub" / "new.safetensors"
    extra.parent.mkdir(exist_ok=True)
    shutil.copyfile(tiny_sd.checkpoint, extra)
    try:
        assert "sub/new.safetensors" in spec.current_choices(sd_engine.paths)
    finally:
        extra.unlink()


def test_model_manager_free_and_reload(sd_engine):
    sd_engine.run(txt2img_graph(steps=1, seed=3)).raise_for_status()
    manager = sd_engine.services["models"]
    assert manager.total_bytes() > 0
    released = manager.free()
    assert released > 0 and manager.total_bytes() == 0
    sd_engine.run(txt2img_graph(steps=1, seed=4)).raise_for_status()  # cached MODEL reloads its weights
    assert manager.total_bytes() > 0


def test_vae_loader_and_standalone_vae(sd_engine):
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    vae = g.node("VAELoader", vae_name="tiny_vae.safetensors")
    lat = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    a = g.node("VAEDecode", "a", samples=lat, vae=ck.out(2))
    b = g.node("VAEDecode", "b", samples=lat, vae=vae)
    g.node("PreviewAny", source=a)
    g.node("PreviewAny", source=b)
    r = sd_engine.run(g).raise_for_status()
    assert torch.equal(r.value("a"), r.value("b"))
