"""AudioConcat (nodes/media/audio_concat.py): order, mono → stereo, the lower rate resampled to the higher one
(torchaudio's resampler as nodegraph reimplements it), clear errors."""

from __future__ import annotations

import pytest
import torch

from nodegraph_nodes.dit.audio_encoder import resample
from nodegraph_nodes.media.audio_concat import AudioConcat


def audio(values, rate: int) -> dict:
    return {"waveform": torch.as_tensor(values, dtype=torch.float32), "sample_rate": rate}


def test_audio_concat_order_and_mono_to_stereo(make):
    node = make(AudioConcat)
    mono = audio([[[0.1, 0.2, 0.3]]], 8000)
    stereo = audio([[[1.0, 2.0], [-1.0, -2.0]]], 8000)
    after = node.execute(mono, stereo, "after")[0]
    assert after["sample_rate"] == 8000
    assert torch.equal(after["waveform"], torch.tensor([[[0.1, 0.2, 0.3, 1.0, 2.0], [0.1, 0.2, 0.3, -1.0, -2.0]]]))
    before = node.execute(mono, stereo, "before")[0]
    assert torch.equal(before["waveform"], torch.tensor([[[1.0, 2.0, 0.1, 0.2, 0.3], [-1.0, -2.0, 0.1, 0.2, 0.3]]]))


def test_audio_concat_resamples_the_lower_rate(make):
    gen = torch.Generator().manual_seed(0)
    low = audio(torch.randn(1, 2, 800, generator=gen), 8000)
    high = audio(torch.randn(1, 2, 1600, generator=gen), 16000)
    out = make(AudioConcat).execute(low, high, "after")[0]
    assert out["sample_rate"] == 16000 and out["waveform"].shape == (1, 2, 3200)
    assert torch.equal(out["waveform"][..., :1600], resample(low["waveform"], 8000, 16000))
    assert torch.equal(out["waveform"][..., 1600:], high["waveform"])
    flipped = make(AudioConcat).execute(high, low, "before")[0]
    assert torch.equal(flipped["waveform"], out["waveform"])


def test_audio_concat_errors_name_the_inputs(make):
    node = make(AudioConcat)
    good = audio([[[0.0, 1.0]]], 8000)
    with pytest.raises(ValueError, match="AudioConcat: inputs 'audio1'.*'audio2'"):
        node.execute(good, audio(torch.zeros(2, 1, 4), 8000), "after")
    with pytest.raises(TypeError, match="AudioConcat: input 'audio2'"):
        node.execute(good, None, "after")
    with pytest.raises(ValueError, match="input 'direction'"):
        node.execute(good, good, "sideways")

