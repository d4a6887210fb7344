"""PyTorch-format upscalers (.pth / .pt / .safetensors in models/upscale_models), built by spandrel: tiny
ESRGAN (RRDBNet), SwinIR, SPAN and Compact networks made from spandrel's own architecture classes with
random weights, saved in each supported key layout and file format, loaded through UpscaleModelLoader and
run by ImageUpscaleWithModel in a real Engine; the outputs are compared with the networks run directly."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph import Engine, Graph
from nodegraph.errors import ValidationFailed
from nodegraph.models import ModelManager
from nodegraph.registry import default_registry
from nodegraph_nodes.upscale.ncnn_upscaler import BUILTIN_UPSCALERS, UpscaleModelError
from nodegraph_nodes.upscale.spandrel_import import import_spandrel, torchvision_architectures
from nodegraph_nodes.upscale.torch_upscaler import TorchModelFile, TorchUpscaler
from nodegraph_nodes.upscale.upscale import UpscaleModelLoader

pytestmark = pytest.mark.usefixtures("offline")  # tests/defaults/conftest.py; so is `manager`

spandrel = import_spandrel()
from spandrel.architectures.Compact import Compact  # noqa: E402  (spandrel imported through the loader's way)
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.SPAN import SPAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread is fastest (and kind to a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- tiny models and their files ---------------------------------------------------------------------

def esrgan(seed: int = 0) -> ESRGAN:
    """x4 RRDBNet, old ESRGAN keys (``model.0``, ``model.1.sub.N.RDB1…``)."""
    torch.manual_seed(seed)
    net = ESRGAN(num_filters=8, num_blocks=1, scale=4).eval()
    with torch.no_grad():  # outputs around mid-grey with visible structure, so clamping hides little
        net.state_dict()["model.10.weight"].mul_(4.0)
        net.state_dict()["model.10.bias"].add_(0.5)
    return net


def swinir(seed: int = 0) -> SwinIR:
    """x2 SwinIR (pixelshuffle upsampler; window 8, so spandrel reads img_range 1)."""
    torch.manual_seed(seed)
    return SwinIR(img_size=16, window_size=8, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2.0,
                  upscale=2, upsampler="pixelshuffle").eval()


def span(seed: int = 0) -> SPAN:
    """x4 SPAN with 8 feature channels."""
    torch.manual_seed(seed)
    net = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=4).eval()
    with torch.no_grad():
        net.upsampler[0].weight.mul_(0.02)
        net.upsampler[0].bias.add_(0.5)
    return net


def compact(seed: int = 0, scale: int = 2, channels: int = 3) -> Compact:
    torch.manual_seed(seed)
    return Compact(num_in_ch=channels, num_out_ch=channels, num_feat=8, num_conv=2, upscale=scale).eval()


def basicsr_layout(state: dict[str, torch.Tensor], num_blocks: int = 1) -> dict[str, torch.Tensor]:
    """Old ESRGAN keys → basicsr's (RealESRGAN_x4plus.pth): ``conv_first``, ``body.N.rdb1.conv1``…"""
    tops = {"model.0": "conv_first", f"model.1.sub.{num_blocks}": "conv_body", "model.3": "conv_up1",
            "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}
    new = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[:3] == ["model", "1", "sub"] and parts[4].startswith("RDB"):  # model.1.sub.B.RDBr.convC.0.w
            new[f"body.{parts[3]}.rdb{parts[4][3:]}.{parts[5]}.{parts[7]}"] = value
        else:
            new[f"{tops['.'.join(parts[:-1])]}.{parts[-1]}"] = value
    return new


def plain(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


NETS = {"4x-ESRGAN.safetensors": esrgan, "2x-SwinIR.safetensors": swinir, "4x-SPAN.safetensors": span}


def folder(paths) -> "os.PathLike":
    return paths.models_dir / "upscale_models"


def save_all(paths) -> dict[str, int]:
    """Every architecture / layout / format in models/upscale_models → {choice: scale}."""
    base = folder(paths)
    for name, make in NETS.items():
        save_file(plain(make()), str(base / name))
    x4 = plain(esrgan())
    torch.save(x4, base / "4x-ESRGAN-old.pth")  # plain tensors: read with weights_only, no --allow-pickle
    torch.save({"params_ema": basicsr_layout(x4), "params": {k: v * 0 for k, v in basicsr_layout(x4).items()}},
               base / "RealESRGAN_x4plus.pth")
    (base / "sub").mkdir()
    torch.save({"params": {f"module.{k}": v for k, v in plain(compact(1)).items()}}, base / "sub" / "compact_x2.pt")
    return {"4x-ESRGAN.safetensors": 4, "2x-SwinIR.safetensors": 2, "4x-SPAN.safetensors": 4,
            "4x-ESRGAN-old.pth": 4, "RealESRGAN_x4plus.pth": 4, "sub/compact_x2.pt": 2}


def picture(height: int = 24, width: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1)
    return np.clip((smooth * 0.8 + rng.random((height, width, 3)) * 0.2) * 255, 0, 255).astype(np.uint8)


def direct(net: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    """The network itself on the image (what the node's output must equal): ``[H·s,W·s,3]`` in 0..1."""
    with torch.inference_mode():
        out = net(torch.from_numpy(image).float().div(255).permute(2, 0, 1)[None])
    return out[0].clamp(0, 1).permute(1, 2, 0)


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


def load(paths, name: str, allow_pickle: bool = False) -> TorchUpscaler:
    return TorchUpscaler.load(TorchModelFile(name, folder(paths) / name), allow_pickle=allow_pickle)


@pytest.fixture
def pickle_engine(paths):
    """An engine whose model manager allows pickle files (``--allow-pickle``)."""
    eng = Engine(default_registry(packs=False), paths=paths, device="cpu",
                 services={"models": ModelManager("cpu", allow_pickle=True)})
    yield eng
    eng.close()


# -- listing and loading ------------------------------------------------------------------------------

def test_loader_lists_pytorch_files_after_the_builtins(paths):
    scales = save_all(paths)
    (folder(paths) / "mine.param").write_text("7767517\n")
    (folder(paths) / "notes.txt").write_text("not a model")
    choices = UpscaleModelLoader.INPUTS["model_name"].current_choices(paths)
    assert choices == list(BUILTIN_UPSCALERS) + sorted([*scales, "mine.param"])


def test_esrgan_swinir_and_span_upscale_exactly_as_the_networks_themselves(engine, paths):
    save_all(paths)
    image = picture()  # smaller than a tile: one model call, as in `direct`
    for name, make in NETS.items():
        model = load(paths, name)
        assert model.architecture == name.split("-")[1].split(".")[0], name
        out = upscale(engine, paths, name, image)
        want = direct(make(), image)
        assert out.shape == (1, *want.shape) == (1, 24 * model.scale, 20 * model.scale, 3), name
        assert out.dtype == torch.float32 and float(out.std()) > 0.02, name  # not flat, not all clamped
        assert torch.allclose(out[0], want, atol=1e-5), (name, float((out[0] - want).abs().max()))


def test_every_file_upscales_by_its_scale_and_loads_once(engine, paths, manager):
    scales = save_all(paths)
    image = picture()
    for name, scale in scales.items():
        out = upscale(engine, paths, name, image)
        assert out.shape == (1, 24 * scale, 20 * scale, 3) and out.dtype == torch.float32, name
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and float(out.std()) > 0.01, name
    second = Engine(default_registry(packs=False), paths=paths, device="cpu", services={"models": manager})
    try:  # a fresh engine (no output cache) with the same model manager: the file is not read again
        assert upscale(second, paths, "sub/compact_x2.pt", image).shape == (1, 48, 40, 3)
    finally:
        second.close()
    entries = [e for e in manager.loaded() if e["key"][0] == "torch-upscaler" and str(paths.models_dir) in
               e["key"][1][0][0]]
    assert len(entries) == len(scales) and all(e["loads"] == 1 for e in entries)


def test_key_layouts_and_wrappers_give_the_same_output(engine, paths):
    save_all(paths)
    image = picture(17, 19)
    new = upscale(engine, paths, "4x-ESRGAN.safetensors", image)
    assert torch.equal(upscale(engine, paths, "4x-ESRGAN-old.pth", image), new)
    assert torch.equal(upscale(engine, paths, "RealESRGAN_x4plus.pth", image), new)  # params_ema, not params
    assert torch.allclose(upscale(engine, paths, "sub/compact_x2.pt", image)[0], direct(compact(1), image),
                          atol=1e-5)  # `params` wrapper and `module.` prefixes


def test_tiled_output_matches_the_whole_image(engine, paths):
    save_all(paths)
    image = picture(28, 32, seed=1)
    for name in NETS:
        whole = upscale(engine, paths, name, image, tile_size=0)
        assert torch.equal(upscale(engine, paths, name, image), whole), name  # 512 px tiles: one tile here
        tiled = upscale(engine, paths, name, image, tile_size=16, overlap=4)  # 2×2 / 2×3 tiles
        assert tiled.shape == whole.shape, name
        diff = (tiled - whole).abs()
        # SwinIR attends within 8 px windows that fall elsewhere in a tile (spandrel: tiling DISCOURAGED)
        worst = 0.3 if "SwinIR" in name else 0.1
        assert float(diff.max()) < worst and float(diff.mean()) < 5e-3, (name, float(diff.max()), float(diff.mean()))


def test_odd_sizes_rgba_and_grayscale(paths):
    save_all(paths)
    model = load(paths, "2x-SwinIR.safetensors")  # windows of 8 px, at least 16 px: spandrel pads and crops
    assert model.upscale(torch.rand(13, 7, 3)).shape == (26, 14, 3)
    assert model.upscale(torch.rand(11, 9, 4), tile=8, overlap=2).shape == (22, 18, 4)
    assert model.upscale(torch.rand(5, 6, 1)).shape == (10, 12, 1)


# -- pickle files -------------------------------------------------------------------------------------

class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what loading must never do without --allow-pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@dataclass
class TrainingNotes:
    """A harmless pickled object of a class torch's weights-only unpickler does not allow."""

    iterations: int


def test_a_pickled_object_is_refused_without_allow_pickle(engine, paths):
    marker = paths.models_dir / "payload-ran"
    torch.save({"params_ema": plain(span()), "extra": Payload(str(marker))}, folder(paths) / "evil.pth")
    with pytest.raises(UpscaleModelError, match="input 'model_name'.*evil.pth.*pickled objects.*--allow-pickle"):
        load(paths, "evil.pth")
    message = failure(engine, paths, "evil.pth")
    assert "input 'model_name'" in message and "evil.pth" in message and "--allow-pickle" in message, message
    assert not marker.exists()


def test_a_pickled_object_is_read_with_allow_pickle(engine, pickle_engine, paths):
    assert sys.modules[TrainingNotes.__module__]  # the class unpickles from this module
    torch.save({"params_ema": plain(span(3)), "notes": TrainingNotes(5000)}, folder(paths) / "4x-SPAN-notes.pth")
    assert "--allow-pickle" in failure(engine, paths, "4x-SPAN-notes.pth")
    image = picture()
    out = upscale(pickle_engine, paths, "4x-SPAN-notes.pth", image)
    assert torch.allclose(out[0], direct(span(3), image), atol=1e-5)


# -- bad files ----------------------------------------------------------------------------------------

def test_truncated_files_fail_naming_the_input_and_the_file(engine, paths):
    save_all(paths)
    base = folder(paths)
    for good, bad in (("4x-ESRGAN.safetensors", "broken.safetensors"), ("4x-ESRGAN-old.pth", "broken.pth")):
        data = (base / good).read_bytes()
        (base / bad).write_bytes(data[:len(data) // 2])
        message = failure(engine, paths, bad)
        assert "input 'model_name'" in message and bad in message and "cannot be read" in message, message
    # the other models still work in the same engine
    assert upscale(engine, paths, "sub/compact_x2.pt", picture()).shape == (1, 48, 40, 3)


def test_a_lora_is_not_an_upscaler(engine, paths):
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}
    save_file(lora, str(folder(paths) / "my_lora.safetensors"))
    message = failure(engine, paths, "my_lora.safetensors")
    assert "input 'model_name'" in message and "my_lora.safetensors" in message, message
    assert f"no upscale model spandrel {spandrel.__version__} knows" in message and "lora_unet" in message, message


def test_wrong_shapes_say_what_was_recognised(paths):
    state = plain(esrgan())
    state["model.10.weight"] = torch.zeros(3, 5, 3, 3)
    save_file(state, str(folder(paths) / "odd.safetensors"))
    with pytest.raises(UpscaleModelError, match="input 'model_name'.*odd.safetensors.*recognised a ESRGAN model"):
        load(paths, "odd.safetensors")


def test_only_rgb_models_are_taken(paths):
    save_file(plain(compact(channels=1)), str(folder(paths) / "gray.safetensors"))
    with pytest.raises(UpscaleModelError, match="gray.safetensors.*maps 1 to 1 channels; only RGB"):
        load(paths, "gray.safetensors")


def test_spandrel_imports_without_torchvision_and_its_torchvision_models_are_refused(paths):
    assert spandrel.__version__ == "0.4.2" and len(spandrel.MAIN_REGISTRY) >= 40
    placeholders = [n for n, m in list(sys.modules.items())
                    if n.split(".")[0] == "torchvision" and getattr(m, "__file__", None) is None]
    assert placeholders == []  # the import's stand-in modules are gone again
    if importlib.util.find_spec("torchvision") is not None:  # a working torchvision: nothing is refused
        assert torchvision_architectures() == []
        return
    assert torchvision_architectures() == ["LaMa", "RestoreFormer"]
    detect_keys = ("quantize.embedding.weight", "encoder.conv_in.weight", "quant_conv.weight",
                   "encoder.down.0.block.0.norm1.weight", "encoder.conv_out.weight", "decoder.conv_out.weight")
    save_file({k: torch.zeros(1) for k in detect_keys}, str(folder(paths) / "RestoreFormer.safetensors"))
    with pytest.raises(UpscaleModelError, match="RestoreFormer.safetensors.*RestoreFormer model.*torchvision"):
        load(paths, "RestoreFormer.safetensors")


def test_missing_file_fails_validation_and_fingerprint_is_the_files_identity(engine, paths):
    g, _ = upscale_graph(paths, "nowhere.pth", picture())
    with pytest.raises(ValidationFailed) as err:
        engine.run(g)
    assert "input 'model_name'" in str(err.value) and "nowhere.pth" in str(err.value)
    save_all(paths)
    first = UpscaleModelLoader.fingerprint(model_name="sub/compact_x2.pt", paths=paths)
    assert first and "compact_x2.pt" in first[0][0]
    torch.save({"params": plain(compact(4))}, folder(paths) / "sub" / "compact_x2.pt")
    os.utime(folder(paths) / "sub" / "compact_x2.pt", ns=(1, 1))
    assert UpscaleModelLoader.fingerprint(model_name="sub/compact_x2.pt", paths=paths) != first
    assert UpscaleModelLoader.validate_inputs(model_name="../escape.pth", paths=paths) != True  # noqa: E712
