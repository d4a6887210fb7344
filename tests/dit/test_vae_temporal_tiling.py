"""VAEDecodeTiled on video latents (nodegraph_nodes.dit.vae_temporal_tiling): temporal chunks of a tiny Wan 2.1
and Wan 2.2 VAE. Streamed chunks equal VAEDecode's frames (the same causal computation, cut into pieces: 1e-6);
cross-faded chunks equal them before the first overlap (the VAE is causal in time) and stay a valid video after;
the largest video tensor the decode holds is one chunk instead of the whole clip."""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from nodegraph_nodes.dit import vae_temporal_tiling as vt
from tests.helpers.engines import make_engine

FRAMES = 9  # latent frames: 33 pixel frames


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tests.dit.tiny_qwen import wan_vae_layout
    from tests.dit.tiny_wan import wan_vae
    from tests.dit.tiny_wan22 import wan22_vae, wan22_vae_original_layout

    root = tmp_path_factory.mktemp("vae_tiling")
    (root / "models" / "vae").mkdir(parents=True)
    save_file(wan_vae_layout(wan_vae().state_dict()), str(root / "models" / "vae" / "wan21.safetensors"))
    save_file(wan22_vae_original_layout(wan22_vae().state_dict()), str(root / "models" / "vae" / "wan22.safetensors"))
    return root


@pytest.fixture
def engine(models, tmp_path):
    eng = make_engine(models, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def smooth_latent(channels: int, size: int, frames: int = FRAMES) -> torch.Tensor:
    t = torch.linspace(0, 1, frames)[None, None, :, None, None]
    y = torch.linspace(-1, 1, size)[None, None, None, :, None]
    c = torch.linspace(-1, 1, channels)[None, :, None, None, None]
    return torch.sin(3 * c + 2 * t + y).expand(1, channels, frames, size, size).contiguous()


class _Manager:
    @contextmanager
    def use(self, handle, device):
        yield handle


class Ctx:
    """What the decode functions use of a run context: the device, the model manager, interruption."""

    device = "cpu"

    def service(self, name):
        return _Manager()

    def check_interrupted(self):
        pass


def vae_value(models, name: str):
    """The VAE value of ``name`` as VAELoader builds it (the manager's handle replaced by the module)."""
    from safetensors.torch import load_file

    from nodegraph_nodes.diffusion.components import VaeModel
    from nodegraph_nodes.dit import qwen_image, wan22_5b

    sd = load_file(str(models / "models" / "vae" / name))
    if wan22_5b.is_wan22_vae(sd):
        return VaeModel(wan22_5b.build_vae(sd, torch.float32), 16, 48)
    return VaeModel(qwen_image.build_vae(sd, torch.float32), 8, 16)


def decode(models, vae: str, latent: torch.Tensor, **tiled) -> torch.Tensor:
    from nodegraph_nodes.diffusion.latent import vae_decode

    value = vae_value(models, vae)
    if tiled:
        return vt.decode_tiled(Ctx(), value, latent, **tiled)
    return vae_decode(Ctx(), value, latent)


@contextmanager
def largest_cat():
    """The most frames (dim 2) of any 5-D tensor ``torch.cat`` made meanwhile (the decoded video held)."""
    seen = [0]
    real = torch.cat

    def cat(tensors, *args, **kwargs):
        out = real(tensors, *args, **kwargs)
        if out.ndim == 5:
            seen[0] = max(seen[0], out.shape[2])
        return out

    with mock.patch("torch.cat", cat):
        yield seen


def test_chunking_arithmetic():
    assert vt.latent_tiles(64, 8, 4) == (16, 2)  # ComfyUI's defaults
    assert vt.latent_tiles(12, 8, 4) == (3, 1)  # temporal_overlap halved: 12 < 2 * 8
    assert vt.chunk_starts(9, 4, 1) == [0, 3, 5]
    assert vt.chunk_starts(3, 4, 1) == [0]
    w0, w1 = vt._weights(9, 0, 3), vt._weights(9, 3, 0)
    assert torch.allclose(w0[-3:] + w1[:3], torch.ones(3))
    assert (w0 > 0).all() and (w1 > 0).all()


@pytest.mark.parametrize("vae,channels,size", [("wan21.safetensors", 16, 4), ("wan22.safetensors", 48, 2)])
def test_streamed_chunks_equal_untiled(models, vae, channels, size):
    latent = smooth_latent(channels, size)
    with largest_cat() as whole:
        full = decode(models, vae, latent)
    with largest_cat() as chunked:
        tiled = decode(models, vae, latent, tile_size=512, overlap=64, temporal_size=12, temporal_overlap=4)
    assert full.shape == tiled.shape == (1 + 4 * (FRAMES - 1), size * (8 if channels == 16 else 16),
                                         size * (8 if channels == 16 else 16), 3)
    assert torch.allclose(full, tiled, atol=1e-6), (full - tiled).abs().max()
    assert full.std() > 0.01
    assert whole[0] == 1 + 4 * (FRAMES - 1)  # VAEDecode holds the whole clip on the device
    assert chunked[0] == 3 * 4  # VAEDecodeTiled one chunk (3 latent frames)


def test_cross_faded_chunks(models):
    """The ComfyUI-style path (chunks decoded on their own, cross-faded): exact before the first overlap,
    a valid video after."""
    from nodegraph_nodes.dit.qwen_image import ImageVae

    module = vae_value(models, "wan21.safetensors").handle
    latent = smooth_latent(16, 4)
    with torch.no_grad():
        full = (module.decode(latent)[0].float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
        faded = vt._decode_video(Ctx(), module, latent, 4, 1, 4)
    assert isinstance(module, ImageVae)
    assert faded.shape == full.shape
    first_overlap = 4 * vt.chunk_starts(FRAMES, 4, 1)[1]
    assert torch.allclose(faded[:first_overlap], full[:first_overlap], atol=1e-6)
    assert not torch.allclose(faded, full, atol=1e-3)  # later chunks lack the earlier frames' context
    assert faded.min() >= 0 and faded.max() <= 1


def test_spatial_tiles(models):
    """A tile_size smaller than the frame takes the cross-faded path with the VAE's spatial tiling (and leaves
    the VAE's tiling off afterwards)."""
    value = vae_value(models, "wan21.safetensors")
    latent = smooth_latent(16, 6, frames=4)
    out = vt.decode_tiled(Ctx(), value, latent, tile_size=32, overlap=8, temporal_size=8, temporal_overlap=4)
    assert out.shape == (1 + 4 * 3, 48, 48, 3)
    assert torch.isfinite(out).all()
    assert not value.handle.vae.use_tiling


def test_vae_decode_tiled_node_on_video_latents(engine):
    """VAEDecodeTiled in a graph: a Wan video latent decodes to all its frames (ComfyUI's default sizes), equal
    to VAEDecode's; an image latent still goes through the spatial tiles."""
    g = Graph()
    vae = g.node("VAELoader", vae_name="wan21.safetensors").out(0)
    lat = g.node("EmptyHunyuanLatentVideo", width=32, height=32, length=33, batch_size=1)
    g.node("PreviewAny", source=g.node("VAEDecodeTiled", "tiled", samples=lat, vae=vae, tile_size=512, overlap=64,
                                       temporal_size=16, temporal_overlap=8))
    g.node("PreviewAny", source=g.node("VAEDecode", "plain", samples=lat, vae=vae))
    result = engine.run(g).raise_for_status()
    assert result.value("tiled").shape == (33, 32, 32, 3)
    assert torch.allclose(result.value("tiled"), result.value("plain"), atol=1e-6)
