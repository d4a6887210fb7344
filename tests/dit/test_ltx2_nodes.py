"""LTX-2 nodes without models: LTXVScheduler's sigmas (ComfyUI's formula worked by hand), the audio-video latent
packing (round trip with noise masks, batch and shape errors), LTXVConditioning, EmptyLTXVLatentVideo, the
keyframe coordinates of LTXVAddGuide and LTXVCropGuides on a latent without guides; the loaders' refusals."""

from __future__ import annotations

import math

import pytest
import torch

from nodegraph_nodes.dit.ltx2_guides import LTXVCropGuides, keyframe_coords
from nodegraph_nodes.dit.ltx2_nodes import (EmptyLTXVLatentVideo, LTXVConcatAVLatent, LTXVConditioning,
                                           LTXVScheduler, LTXVSeparateAVLatent)


def test_ltxv_scheduler_matches_the_formula(make):
    sigmas = make(LTXVScheduler).execute(steps=4, max_shift=2.05, base_shift=0.95, stretch=False, terminal=0.1)[0]
    shift = 2.05  # 4096 tokens (no latent): the max shift
    expected = [1.0] + [math.exp(shift) / (math.exp(shift) + (1 / t - 1)) for t in (0.75, 0.5, 0.25)] + [0.0]
    assert torch.allclose(sigmas, torch.tensor(expected), atol=1e-6)
    stretched = make(LTXVScheduler).execute(steps=4, max_shift=2.05, base_shift=0.95, stretch=True, terminal=0.1)[0]
    assert abs(float(stretched[-2]) - 0.1) < 1e-6 and abs(float(stretched[0]) - 1.0) < 1e-6
    assert float(stretched[-1]) == 0.0
    # a latent sets the token count: 1024 tokens give the base shift
    latent = {"samples": torch.zeros(1, 128, 4, 16, 16)}
    base = make(LTXVScheduler).execute(steps=2, max_shift=2.05, base_shift=0.95, stretch=False, terminal=0.1,
                                       latent=latent)[0]
    assert abs(float(base[1]) - math.exp(0.95) / (math.exp(0.95) + 1)) < 1e-6


def test_av_latent_round_trip_with_masks(make):
    video = torch.randn(2, 128, 3, 2, 4)
    audio = torch.randn(2, 8, 5, 16)  # 128 features: no padding
    vmask = torch.ones(2, 1, 3, 1, 1)
    vmask[:, :, 0] = 0.25
    av = make(LTXVConcatAVLatent).execute({"samples": video, "noise_mask": vmask}, {"samples": audio})[0]
    assert av["samples"].shape == (2, 128, 1, 3 * 2 * 4 + 5)
    assert av["noise_mask"].shape == (2, 1, 1, 29)
    assert torch.all(av["noise_mask"][:, 0, 0, :8] == 0.25) and torch.all(av["noise_mask"][:, 0, 0, 8:] == 1)
    v, a = make(LTXVSeparateAVLatent).execute(av)
    assert torch.equal(v["samples"], video) and torch.equal(a["samples"], audio)
    assert torch.equal(v["noise_mask"], vmask.expand(-1, -1, -1, 2, 4))
    # audio features narrower than the 128 video channels are zero-padded in the packing
    small = torch.randn(1, 4, 6, 4)
    av = make(LTXVConcatAVLatent).execute({"samples": video[:1]}, {"samples": small})[0]
    assert "noise_mask" not in av
    assert float(av["samples"][0, 16:, 0, 24:].abs().sum()) == 0.0
    assert torch.equal(make(LTXVSeparateAVLatent).execute(av)[1]["samples"], small)


def test_av_latent_errors(make):
    with pytest.raises(ValueError, match="audio_latent"):
        make(LTXVConcatAVLatent).execute({"samples": torch.zeros(1, 128, 2, 2, 2)}, {"samples": torch.zeros(1, 8, 4)})
    with pytest.raises(ValueError, match="batch"):
        make(LTXVConcatAVLatent).execute({"samples": torch.zeros(2, 128, 2, 2, 2)},
                                         {"samples": torch.zeros(3, 8, 4, 16)})
    with pytest.raises(ValueError, match="LTXVConcatAVLatent"):
        make(LTXVSeparateAVLatent).execute({"samples": torch.zeros(1, 128, 2, 2, 2)})


def test_empty_latent_and_conditioning(make):
    latent = make(EmptyLTXVLatentVideo).execute(width=768, height=512, length=97, batch_size=2)[0]["samples"]
    assert latent.shape == (2, 128, 13, 16, 24)
    pos, neg = make(LTXVConditioning).execute([[torch.zeros(1, 4, 8), {}]], [[torch.ones(1, 4, 8), {"x": 1}]], 24.0)
    assert pos[0][1]["frame_rate"] == 24.0 and neg[0][1] == {"x": 1, "frame_rate": 24.0}


def test_keyframe_coords_and_crop_without_guides(make):
    guide = torch.zeros(1, 128, 1, 2, 3)
    first = keyframe_coords(guide, 0, 1)
    assert first.shape == (1, 3, 6, 2)
    assert torch.equal(first[0, 0, 0], torch.tensor([0.0, 1.0]))  # causal first frame: [0, 1)
    later = keyframe_coords(guide, 16, 1)
    assert torch.equal(later[0, 0, 0], torch.tensor([16.0, 17.0]))  # one pixel frame at 16
    assert torch.equal(later[0, 2, :3], torch.tensor([[0.0, 32.0], [32.0, 64.0], [64.0, 96.0]]))
    clip = keyframe_coords(torch.zeros(1, 128, 2, 1, 1), 9, 9)
    assert torch.equal(clip[0, 0, :, 0], torch.tensor([9.0, 17.0]))  # 9 pixel frames: 8 per latent frame
    latent = {"samples": torch.zeros(1, 128, 3, 2, 2)}
    pos, neg, out = make(LTXVCropGuides).execute([[torch.zeros(1, 2, 4), {}]], [[torch.zeros(1, 2, 4), {}]], latent)
    assert out["samples"].shape == (1, 128, 3, 2, 2) and out["noise_mask"].shape == (1, 1, 3, 1, 1)
    cond = [[torch.zeros(1, 2, 4), {"keyframe_idxs": first}]]
    pos, neg, out = make(LTXVCropGuides).execute(cond, cond, latent)
    assert out["samples"].shape == (1, 128, 2, 2, 2) and pos[0][1]["keyframe_idxs"] is None


def test_ltx2_loaders_refuse_other_files(tmp_path):
    from safetensors.torch import save_file

    from nodegraph_nodes.diffusion.files import ModelFileError
    from nodegraph_nodes.dit import ltx2

    other = tmp_path / "other.safetensors"
    save_file({"model.diffusion_model.x.weight": torch.zeros(2)}, str(other))

    class Manager:
        allow_pickle = False

    with pytest.raises(ModelFileError, match="Gemma 3"):
        ltx2.load_text_encoder(other, other, Manager(), "cpu", tmp_path)
    with pytest.raises(ModelFileError, match="audio VAE"):
        ltx2.load_audio_vae(other, Manager(), "cpu")
    assert not ltx2.is_checkpoint(["model.diffusion_model.x.weight"])
    with pytest.raises(ModelFileError, match="LTX-2.3"):
        ltx2.transformer_config({"proj_in.weight": torch.zeros(4, 4), "prompt_adaln.linear.weight": torch.zeros(1)})


def test_log_mel_front_end():
    """Slaney mel filters (the 1 kHz knee, unit area per filter), and a 1 kHz tone peaking in the filter centred
    nearest 1 kHz; shape ``[B, C, frames, mels]`` with one frame per hop (centred STFT)."""
    from nodegraph_nodes.dit.ltx2 import _hz_to_mel, _mel_to_hz, log_mel, mel_filters

    assert abs(float(_hz_to_mel(torch.tensor(1000.0))) - 15.0) < 1e-6
    f = torch.tensor([200.0, 1000.0, 4321.0], dtype=torch.float64)
    assert torch.allclose(_mel_to_hz(_hz_to_mel(f)), f)
    fb = mel_filters(1024, 64, 16000)
    assert fb.shape == (513, 64) and float(fb.min()) >= 0.0
    hz_per_bin = 16000 / 1024
    areas = fb.sum(0) * hz_per_bin  # Slaney normalization: each triangle's area ≈ 1
    assert torch.allclose(areas[5:60], torch.ones(55), atol=0.1)
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * math.pi * 1000 * t)[None, None].expand(1, 2, -1)
    mel = log_mel(tone, 16000, 64, 160)
    assert mel.shape == (1, 2, 101, 64)
    centres = _mel_to_hz(torch.linspace(float(_hz_to_mel(torch.tensor(0.0))), float(_hz_to_mel(torch.tensor(8000.0))),
                                        66, dtype=torch.float64))[1:-1]
    assert int(mel[0, 0, 50].argmax()) == int((centres - 1000).abs().argmin())



def test_ltx2_latent_preview_of_packed_latents():
    """The sampling preview of an audio-video latent shows the first video frame (size h × w, 0..1)."""
    from nodegraph_nodes.dit import ltx2_latent as L
    from nodegraph_nodes.dit.ltx2 import Ltx2Model

    video, audio = torch.randn(1, 128, 2, 3, 5), torch.randn(1, 4, 7, 4)
    packed, lay = L.pack(video, audio)
    model = Ltx2Model(handle=None, family="ltx2", layout=lay)
    preview = model.latent_preview(packed)
    assert preview.shape == (3, 5, 3) and float(preview.min()) >= 0 and float(preview.max()) <= 1
    assert torch.equal(model.latent_preview(packed), Ltx2Model(handle=None, family="ltx2").latent_preview(video))
