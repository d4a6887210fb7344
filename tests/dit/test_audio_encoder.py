"""AudioEncoderLoader / AudioEncoderEncode: tiny random wav2vec 2.0 models from transformers' Wav2Vec2Model,
saved as the single files users have, equal the transformers model's hidden states on the same resampled
audio; the resampler equals the sinc-interpolation sum it implements."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.registry import default_registry
from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit import audio_encoder as ae


def tiny_config(large: bool):
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
        conv_dim=(8,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=large, feat_extract_norm="layer" if large else "group", do_stable_layer_norm=large,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def tiny_model(large: bool, seed: int = 0):
    from transformers import Wav2Vec2Model

    torch.manual_seed(seed)
    model = Wav2Vec2Model(tiny_config(large)).eval()
    with torch.no_grad():  # random norms and biases, so that every parameter matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def audio(seconds: float, rate: int, batch: int = 1) -> dict:
    torch.manual_seed(1)
    t = torch.arange(int(seconds * rate)) / rate
    left = 0.3 * torch.sin(2 * torch.pi * 300 * t) + 0.05 * torch.randn(t.shape)
    right = 0.2 * torch.sin(2 * torch.pi * 1100 * t)
    wave = torch.stack([torch.stack([left, right]) * (b + 1) for b in range(batch)])
    return {"waveform": wave, "sample_rate": rate}


def direct_resample(x: torch.Tensor, rate: int, new_rate: int, width: int = 6, rolloff: float = 0.99):
    """y[j] = Σ_i x[i] · sinc(π t) · hann(t) · base/orig, t = (i/orig − j/new)·base (float64, no FFT/conv)."""
    g = math.gcd(rate, new_rate)
    orig, new = rate // g, new_rate // g
    base = min(orig, new) * rolloff
    i = torch.arange(x.shape[-1], dtype=torch.float64)
    out = []
    for j in range(math.ceil(new * x.shape[-1] / orig)):
        t = ((i / orig - j / new) * base).clamp(-width, width)
        k = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t))
        k = k * torch.cos(t * math.pi / width / 2) ** 2 * base / orig
        out.append((x.double() * k).sum(-1))
    return torch.stack(out, -1)


@pytest.mark.parametrize("rate,new_rate", [(24000, 16000), (8000, 16000), (44100, 16000)])
def test_resample_is_the_windowed_sinc_sum(rate, new_rate):
    x = audio(0.02, rate)["waveform"][0]
    got = ae.resample(x, rate, new_rate)
    assert got.shape == (2, math.ceil(x.shape[-1] * new_rate / rate))
    assert (got.double() - direct_resample(x, rate, new_rate)).abs().max() < 1e-5
    assert ae.resample(x, 16000, 16000) is x


def write(model, path, *, hf_names: bool = False) -> None:
    sd = {k: v.detach().clone().half() for k, v in model.state_dict().items()}
    if hf_names:  # a Wav2Vec2ForCTC dump with old weight-norm names and a CTC head
        sd = {"wav2vec2." + k.replace("parametrizations.weight.original0", "weight_g")
              .replace("parametrizations.weight.original1", "weight_v"): v for k, v in sd.items()}
        sd["lm_head.weight"] = torch.zeros(32, 128, dtype=torch.float16)
        sd["lm_head.bias"] = torch.zeros(32, dtype=torch.float16)
    save_file(sd, str(path))


@pytest.mark.parametrize("large,hf_names", [(True, False), (False, False), (True, True)])
def test_encode_equals_transformers(make, paths, large, hf_names):
    model = tiny_model(large)
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})  # the fp16 file's values
    folder = paths.models_dir / "audio_encoders"
    folder.mkdir(parents=True)
    write(model, folder / "wav2vec2_tiny.safetensors", hf_names=hf_names)
    assert ae.audio_encoder_choices(paths) == ["wav2vec2_tiny.safetensors"]

    encoder = make(ae.AudioEncoderLoader).execute("wav2vec2_tiny.safetensors")[0]
    clip = audio(0.5, 24000, batch=2)
    out = make(ae.AudioEncoderEncode).execute(encoder, clip)[0]

    x = ae.resample(clip["waveform"], 24000, 16000).mean(dim=1)
    if large:  # ComfyUI normalizes the large variant's input over the whole batch
        x = (x - x.mean()) / torch.sqrt(x.var() + 1e-7)
    with torch.no_grad():
        ref = model(x, output_hidden_states=True)
    assert out["audio_samples"] == 8000
    assert out["encoded_audio"].shape == ref.last_hidden_state.shape == (2, 24, 128)
    assert (out["encoded_audio"] - ref.last_hidden_state).abs().max() < 1e-4
    assert len(out["encoded_audio_all_layers"]) == 3
    # ComfyUI's list: the states entering each layer, then the final state (after the large variant's
    # final norm, where transformers 5 records the last layer's output before it)
    for got, want in zip(out["encoded_audio_all_layers"], ref.hidden_states[:-1] + (ref.last_hidden_state,)):
        assert (got - want).abs().max() < 1e-4
    assert torch.equal(out["encoded_audio_all_layers"][-1], out["encoded_audio"])
    if not large:
        assert (out["encoded_audio"] - ref.hidden_states[-1]).abs().max() < 1e-4


def test_spec_and_errors(make, paths):
    info = default_registry(packs=False).object_info()
    assert info["AudioEncoderLoader"]["output"] == ["AUDIO_ENCODER"]
    assert list(info["AudioEncoderLoader"]["input"]["required"]) == ["audio_encoder_name"]
    assert info["AudioEncoderEncode"]["input"]["required"] == {"audio_encoder": ["AUDIO_ENCODER", {}],
                                                              "audio": ["AUDIO", {}]}
    assert info["AudioEncoderEncode"]["output"] == ["AUDIO_ENCODER_OUTPUT"]
    assert info["AudioEncoderEncode"]["category"] == "conditioning"

    folder = paths.models_dir / "audio_encoders"
    folder.mkdir(parents=True)
    loader = make(ae.AudioEncoderLoader)
    with pytest.raises(ModelFileError, match="AudioEncoderLoader: input 'audio_encoder_name'.*not found"):
        loader.execute("absent.safetensors")
    save_file({"model.encoder.embed_positions.weight": torch.zeros(4, 4)}, str(folder / "whisper.safetensors"))
    with pytest.raises(ModelFileError, match="Whisper encoder, which is not supported yet"):
        loader.execute("whisper.safetensors")
    save_file({"something.else": torch.zeros(2)}, str(folder / "other.safetensors"))
    with pytest.raises(ModelFileError, match="not a wav2vec 2.0 audio encoder"):
        loader.execute("other.safetensors")
    sd = {k: v for k, v in tiny_model(True).state_dict().items() if ".layers.1.feed_forward" not in k}
    save_file(sd, str(folder / "cut.safetensors"))
    with pytest.raises(ModelFileError, match="does not fit a wav2vec 2.0 encoder"):
        loader.execute("cut.safetensors")

    write(tiny_model(False), folder / "ok.safetensors")
    encoder = loader.execute("ok.safetensors")[0]
    with pytest.raises(ValueError, match="AudioEncoderEncode: input 'audio' is 1.0 ms long"):
        make(ae.AudioEncoderEncode).execute(encoder, audio(0.001, 16000))
    with pytest.raises(TypeError, match="input 'audio_encoder' must come from AudioEncoderLoader"):
        make(ae.AudioEncoderEncode).execute(object(), audio(0.1, 16000))
