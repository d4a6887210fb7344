"""PyTorch-format upscalers (.pth / .pt / .safetensors in models/upscale_models): tiny RRDBNet and
SRVGGNetCompact models with random weights, saved in each supported key layout and file format, loaded
through UpscaleModelLoader and run by ImageUpscaleWithModel in a real Engine."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph import Engine, Graph
from nodegraph.errors import ValidationFailed
from nodegraph.registry import default_registry
from nodegraph_nodes.upscale.esrgan_arch import RRDBNet, SRVGGNetCompact, detect, normalise
from nodegraph_nodes.upscale.ncnn_upscaler import BUILTIN_UPSCALERS, UpscaleModelError
from nodegraph_nodes.upscale.torch_upscaler import TorchModelFile, TorchUpscaler
from nodegraph_nodes.upscale.upscale import UpscaleModelLoader

pytestmark = pytest.mark.usefixtures("offline")  # tests/defaults/conftest.py; so is `manager`


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread is fastest (and kind to a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- tiny models and their files ---------------------------------------------------------------------

def rrdb(seed: int = 0, **kw) -> RRDBNet:
    torch.manual_seed(seed)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, **kw).eval()
    with torch.no_grad():  # outputs around mid-grey with visible structure, so clamping hides little
        net.conv_last.weight.mul_(4.0)
        net.conv_last.bias.add_(0.5)
    return net


def compact(seed: int = 0, scale: int = 4) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    return SRVGGNetCompact(num_feat=8, num_conv=2, scale=scale).eval()


def old_esrgan_layout(state: dict[str, torch.Tensor], num_block: int = 1) -> dict[str, torch.Tensor]:
    """basicsr keys → the original ESRGAN ``model.N`` keys (x4: two upsampling convs)."""
    tops = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}", "conv_up1": "model.3",
            "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    old = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "body":  # body.B.rdbR.convC.weight → model.1.sub.B.RDBR.convC.0.weight
            old[f"model.1.sub.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.0.{parts[4]}"] = value
        else:
            old[f"{tops[parts[0]]}.{parts[1]}"] = value
    return old


def plain(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def folder(paths) -> "os.PathLike":
    return paths.models_dir / "upscale_models"


def save_all(paths) -> dict[str, int]:
    """Every supported layout/format in models/upscale_models → {choice: scale}."""
    base = folder(paths)
    x4 = plain(rrdb())
    save_file(x4, str(base / "RealESRGAN_x4_new.safetensors"))
    torch.save(old_esrgan_layout(x4), base / "4x-Old_ESRGAN.pth")
    torch.save({"params_ema": x4, "params": {k: v * 0 for k, v in x4.items()}}, base / "x4_params_ema.pth")
    (base / "sub").mkdir()
    torch.save({"params": {f"module.{k}": v for k, v in plain(rrdb(1, unshuffle=2)).items()}},
               base / "sub" / "RealESRGAN_x2plus.pt")
    save_file(plain(compact(2)), str(base / "realesr-animevideov3.safetensors"))
    torch.save({"state_dict": plain(compact(3, scale=2))}, base / "compact_x2.pth")
    return {"RealESRGAN_x4_new.safetensors": 4, "4x-Old_ESRGAN.pth": 4, "x4_params_ema.pth": 4,
            "sub/RealESRGAN_x2plus.pt": 2, "realesr-animevideov3.safetensors": 4, "compact_x2.pth": 2}


def picture(height: int = 24, width: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1)
    return np.clip((smooth * 0.8 + rng.random((height, width, 3)) * 0.2) * 255, 0, 255).astype(np.uint8)


def upscale_graph(paths, model_name: str, image: np.ndarray, **inputs) -> tuple[Graph, str]:
    Image.fromarray(image).save(paths.input_dir / "in.png")
    g = Graph()
    up = g.node("ImageUpscaleWithModel", upscale_model=g.node("UpscaleModelLoader", model_name=model_name),
                image=g.node("LoadImage", image="in.png"), **inputs)
    g.node("PreviewImage", images=up)
    return g, up.id


def upscale(engine, paths, model_name: str, image: np.ndarray, **inputs) -> torch.Tensor:
    g, up = upscale_graph(paths, model_name, image, **inputs)
    result = engine.run(g)
    assert result.ok, result.failure
    return result.value(up)


def failure(engine, paths, model_name: str) -> str:
    g, _ = upscale_graph(paths, model_name, picture())
    result = engine.run(g)
    assert not result.ok
    return result.failure.exception_message


# -- listing and loading ------------------------------------------------------------------------------

def test_loader_lists_pytorch_files_after_the_builtins(paths):
    scales = save_all(paths)
    (folder(paths) / "mine.param").write_text("7767517\n")
    (folder(paths) / "notes.txt").write_text("not a model")
    choices = UpscaleModelLoader.INPUTS["model_name"].current_choices(paths)
    assert choices == list(BUILTIN_UPSCALERS) + sorted([*scales, "mine.param"])


def test_every_layout_upscales_by_its_scale_through_the_engine(engine, paths, manager):
    scales = save_all(paths)
    image = picture()
    for name, scale in scales.items():
        out = upscale(engine, paths, name, image)
        assert out.shape == (1, 24 * scale, 20 * scale, 3) and out.dtype == torch.float32, name
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and float(out.std()) > 0.01, name
    second = Engine(default_registry(packs=False), paths=paths, device="cpu", services={"models": manager})
    try:  # a fresh engine (no output cache) with the same model manager: the file is not read again
        assert upscale(second, paths, "compact_x2.pth", image).shape == (1, 48, 40, 3)
    finally:
        second.close()
    entries = [e for e in manager.loaded() if e["key"][0] == "torch-upscaler" and str(paths.models_dir) in
               e["key"][1][0][0]]
    assert len(entries) == len(scales) and all(e["loads"] == 1 for e in entries)


def test_hyper_parameters_are_read_from_the_tensors():
    spec = detect(normalise(old_esrgan_layout(plain(rrdb()))))
    assert (spec.arch, spec.scale, spec.num_feat, spec.num_block, spec.num_grow_ch) == ("RRDBNet", 4, 8, 1, 4)
    x2 = detect(plain(RRDBNet(num_feat=16, num_block=3, num_grow_ch=8, unshuffle=2)))
    assert (x2.scale, x2.unshuffle, x2.in_channels, x2.num_feat, x2.num_block, x2.num_grow_ch) == (2, 2, 3, 16, 3, 8)
    x1 = detect(plain(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, unshuffle=4)))
    assert (x1.scale, x1.unshuffle) == (1, 4)
    spec = detect(plain(SRVGGNetCompact(num_feat=8, num_conv=3, scale=3)))
    assert (spec.arch, spec.scale, spec.num_feat, spec.num_conv) == ("SRVGGNetCompact", 3, 8, 3)


def test_old_layout_and_wrappers_give_exactly_the_new_layouts_output(engine, paths):
    save_all(paths)
    image = picture(9, 11)
    new = upscale(engine, paths, "RealESRGAN_x4_new.safetensors", image)
    direct = rrdb()(torch.from_numpy(image).float().div(255).permute(2, 0, 1)[None]).clamp(0, 1)
    assert torch.allclose(new[0], direct[0].permute(1, 2, 0), atol=1e-5)
    assert torch.equal(upscale(engine, paths, "4x-Old_ESRGAN.pth", image), new)
    assert torch.equal(upscale(engine, paths, "x4_params_ema.pth", image), new)  # params_ema, not params


def test_tiled_output_matches_the_whole_image(engine, paths):
    save_all(paths)
    image = picture(24, 28, seed=1)
    for name in ("RealESRGAN_x4_new.safetensors", "realesr-animevideov3.safetensors"):
        whole = upscale(engine, paths, name, image, tile_size=0)
        assert torch.equal(upscale(engine, paths, name, image), whole), name  # 512 px tiles: one tile here
        tiled = upscale(engine, paths, name, image, tile_size=12, overlap=4)  # 3×3 tiles
        diff = (tiled - whole).abs()
        assert float(diff.max()) < 0.05 and float(diff.mean()) < 2e-3, (name, float(diff.max()), float(diff.mean()))


def test_odd_sizes_rgba_and_grayscale_with_pixel_unshuffle(paths):
    save_all(paths)
    model = TorchUpscaler.load(TorchModelFile("x2", folder(paths) / "sub" / "RealESRGAN_x2plus.pt"))
    assert model.scale == 2 and model.spec.unshuffle == 2
    assert model.upscale(torch.rand(13, 7, 3)).shape == (26, 14, 3)  # padded to even sides, cropped back
    assert model.upscale(torch.rand(11, 9, 4), tile=8, overlap=2).shape == (22, 18, 4)
    assert model.upscale(torch.rand(5, 6, 1)).shape == (10, 12, 1)


# -- bad files ----------------------------------------------------------------------------------------

def test_truncated_files_fail_naming_the_input_and_the_file(engine, paths):
    save_all(paths)
    base = folder(paths)
    for good, bad in (("RealESRGAN_x4_new.safetensors", "broken.safetensors"), ("4x-Old_ESRGAN.pth", "broken.pth")):
        data = (base / good).read_bytes()
        (base / bad).write_bytes(data[:len(data) // 2])
        message = failure(engine, paths, bad)
        assert "input 'model_name'" in message and bad in message and "cannot be read" in message, message
    # the other models still work in the same engine
    assert upscale(engine, paths, "realesr-animevideov3.safetensors", picture()).shape == (1, 96, 80, 3)


def test_a_lora_is_not_an_upscaler(engine, paths):
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}
    save_file(lora, str(folder(paths) / "my_lora.safetensors"))
    message = failure(engine, paths, "my_lora.safetensors")
    assert "input 'model_name'" in message and "my_lora.safetensors" in message, message
    assert "no known upscaler layout" in message and "RRDBNet" in message and "SRVGGNetCompact" in message


def test_a_layout_with_wrong_shapes_says_what_was_recognised(paths):
    state = plain(rrdb())
    state["conv_last.weight"] = torch.zeros(3, 5, 3, 3)
    save_file(state, str(folder(paths) / "odd.safetensors"))
    with pytest.raises(UpscaleModelError, match="input 'model_name'.*odd.safetensors.*recognised a RRDBNet"):
        TorchUpscaler.load(TorchModelFile("odd.safetensors", folder(paths) / "odd.safetensors"))


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what weights_only loading must never do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_pickled_object_is_refused(paths):
    marker = paths.models_dir / "payload-ran"
    path = folder(paths) / "evil.pth"
    torch.save({"params_ema": plain(compact()), "extra": Payload(str(marker))}, path)
    with pytest.raises(UpscaleModelError, match="input 'model_name'.*evil.pth.*cannot be read"):
        TorchUpscaler.load(TorchModelFile("evil.pth", path))
    assert not marker.exists()


def test_missing_file_fails_validation_and_fingerprint_is_the_files_identity(engine, paths):
    g, _ = upscale_graph(paths, "nowhere.pth", picture())
    with pytest.raises(ValidationFailed) as err:
        engine.run(g)
    assert "input 'model_name'" in str(err.value) and "nowhere.pth" in str(err.value)
    save_all(paths)
    first = UpscaleModelLoader.fingerprint(model_name="compact_x2.pth", paths=paths)
    assert first and "compact_x2.pth" in first[0][0]
    torch.save({"state_dict": plain(compact(4, scale=2))}, folder(paths) / "compact_x2.pth")
    os.utime(folder(paths) / "compact_x2.pth", ns=(1, 1))
    assert UpscaleModelLoader.fingerprint(model_name="compact_x2.pth", paths=paths) != first
    assert UpscaleModelLoader.validate_inputs(model_name="../escape.pth", paths=paths) != True  # noqa: E712
