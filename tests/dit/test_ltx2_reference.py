"""LTX-2's IC-LoRA and ID-LoRA nodes on the tiny LTX-2 files: GetICLoRAParameters (the applied LoRA's safetensors
metadata; LTXVAddGuide takes its output), LTXVReferenceAudio (the reference clip's audio-latent tokens in both
conditionings, put before the audio tokens at time 0 with their RoPE times before the target's start; identity
guidance = one more evaluation without the reference, the difference scaled)."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from nodegraph.builder import Graph

from tests.dit.test_ltx2 import (HEIGHT, LENGTH, RATE, SEED, WIDTH, loaders_and_conditioning,  # noqa: F401
                                 ltx2_engine, tiny_ltx2)
from tests.dit.tiny_ltx2 import CHECKPOINT, save_lora


def _tone(engine, name: str = "voice.wav", rate: int = 8000, seconds: float = 0.5) -> None:
    t = np.arange(int(rate * seconds)) / rate
    pcm = (np.sin(2 * np.pi * 330 * t) * np.sin(2 * np.pi * 3 * t) * 12000).astype(np.int16)
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    with wave.open(str(engine.paths.input_dir / name), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


@pytest.mark.parametrize("metadata, factor", [({"reference_downscale_factor": "2.4"}, 2),
                                              ({"ss_reference_downscale_factor": "3"}, 3),
                                              ({"reference_downscale_factor": "0.2"}, 1),
                                              ({"reference_downscale_factor": "two"}, 1),
                                              (None, 1)])
def test_get_iclora_parameters_reads_the_applied_loras_metadata(ltx2_engine, tiny_ltx2, metadata, factor):
    save_lora(tiny_ltx2.root, "ic.safetensors", metadata)
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    lora = g.node("LoraLoaderModelOnly", model=ck.out(0), lora_name="ic.safetensors", strength_model=1.0)
    g.node("PreviewAny", source=g.node("GetICLoRAParameters", "params", iclora_model=lora))
    g.node("PreviewAny", source=g.node("GetICLoRAParameters", "bare", iclora_model=ck.out(0)))
    result = ltx2_engine.run(g).raise_for_status()
    assert result.value("params") == {"reference_downscale_factor": factor}
    assert result.value("bare") == {"reference_downscale_factor": 1}


def _guide_graph(iclora: bool) -> Graph:
    g = Graph()
    ck, _, cond, video = loaders_and_conditioning(g)
    model = g.node("LoraLoaderModelOnly", model=ck.out(0), lora_name="ic.safetensors", strength_model=1.0)
    extra = {"iclora_parameters": g.node("GetICLoRAParameters", iclora_model=model)} if iclora else {}
    guide = g.node("LTXVAddGuide", "guide", positive=cond.out(0), negative=cond.out(1), vae=ck.out(2), latent=video,
                   image=g.node("EmptyImage", width=WIDTH, height=HEIGHT, batch_size=1, color=0x2060A0),
                   frame_idx=0, strength=1.0, **extra)
    g.node("PreviewAny", source=guide.out(2))
    return g


def test_add_guide_with_factor_1_parameters_is_the_plain_guide(ltx2_engine, tiny_ltx2):
    save_lora(tiny_ltx2.root, "ic.safetensors", {"reference_downscale_factor": "1"})
    plain = ltx2_engine.run(_guide_graph(False)).raise_for_status().value("guide", 2)
    with_params = ltx2_engine.run(_guide_graph(True)).raise_for_status().value("guide", 2)
    assert torch.equal(plain["samples"], with_params["samples"])
    assert torch.equal(plain["noise_mask"], with_params["noise_mask"])


def test_downscaled_iclora_guide_is_dilated_and_its_fillers_left_out(ltx2_engine, tiny_ltx2):
    """reference_downscale_factor 2 on a 128×128 latent (4×4): the 64×64 guide image encoded as it is (= the
    plain guide of a 64×64 latent), spread over every other row and column (zeros between; noise mask = the
    dilation mask (1 / -1) − strength). The runner's call = the transformer on the video tokens plus the 4 guide tokens
    at time 0, placed as diffusers' LTX2ICLoraPipeline places a downscaled reference (its small grid's RoPE
    coordinates times the factor); the fillers' output is 0."""
    from nodegraph_nodes.dit import ltx2_latent as L
    from nodegraph_nodes.dit.ltx2 import Ltx2Runner
    from nodegraph_nodes.sampling.model import CondPart

    save_lora(tiny_ltx2.root, "ic.safetensors", {"reference_downscale_factor": "2"})
    g = Graph()
    ck, _, cond, _ = loaders_and_conditioning(g)
    image = g.node("EmptyImage", width=64, height=64, batch_size=1, color=0x2060A0)
    params = g.node("GetICLoRAParameters", iclora_model=g.node(
        "LoraLoaderModelOnly", model=ck.out(0), lora_name="ic.safetensors", strength_model=1.0))
    big = g.node("EmptyLTXVLatentVideo", width=128, height=128, length=9, batch_size=1)
    small = g.node("EmptyLTXVLatentVideo", width=64, height=64, length=9, batch_size=1)
    guide = g.node("LTXVAddGuide", "guide", positive=cond.out(0), negative=cond.out(1), vae=ck.out(2), latent=big,
                   image=image, frame_idx=0, strength=1.0, iclora_parameters=params)
    plain = g.node("LTXVAddGuide", "plain", positive=cond.out(0), negative=cond.out(1), vae=ck.out(2),
                   latent=small, image=image, frame_idx=0, strength=1.0)
    for node in (guide, plain):
        g.node("PreviewAny", source=node.out(2))
    result = ltx2_engine.run(g).raise_for_status()
    out, ref = result.value("guide", 2), result.value("plain", 2)
    samples, mask = out["samples"], out["noise_mask"]
    assert samples.shape == (1, 128, 3, 4, 4) and mask.shape == (1, 1, 3, 4, 4)
    assert torch.equal(samples[:, :, 2, ::2, ::2], ref["samples"][:, :, 2])
    fillers = torch.ones(4, 4, dtype=torch.bool)
    fillers[::2, ::2] = False
    assert not samples[:, :, 2][..., fillers].any()
    assert (mask[0, 0, 2][fillers] == -2).all() and (mask[0, 0, 2][~fillers] == 0).all()  # dilation mask − 1
    assert (mask[:, :, :2] == 1).all()

    positive = result.value("guide", 0)
    keys = positive[0][1]["keyframe_idxs"]
    assert keys.shape == (1, 3, 16, 2)
    net = tiny_ltx2.transformer
    gen = torch.Generator().manual_seed(2)
    audio = torch.zeros(1, 4, 9, 4)
    x, layout = L.pack(torch.randn(1, 128, 3, 4, 4, generator=gen), audio)
    latent_image, _ = L.pack(samples, audio)
    runner = Ltx2Runner(net, "cpu", layout)
    runner.set_latent(latent_image, L.pack_mask(mask, None, layout, 1))
    ctx = torch.randn(1, 7, 64, generator=gen)
    with torch.no_grad():
        got = runner(x, torch.tensor([0.7]), [CondPart(ctx, {"frame_rate": float(RATE), "keyframe_idxs": keys}, 1)])
        video = L.video_tokens(x[:, :128, 0, :48].reshape(1, 128, 3, 4, 4)[:, :, :2])
        reference = L.video_tokens(ref["samples"][:, :, 2:])
        coords = net.rope.prepare_video_coords(1, 2, 4, 4, "cpu", fps=float(RATE))
        ref_coords = net.rope.prepare_video_coords(1, 1, 2, 2, "cpu", fps=float(RATE))
        ref_coords[:, 1:] *= 2
        t = torch.tensor([700.0])
        v, _ = net(hidden_states=torch.cat([video, reference], 1), audio_hidden_states=L.audio_tokens(audio),
                   encoder_hidden_states=ctx[..., :32], audio_encoder_hidden_states=ctx[..., 32:],
                   timestep=torch.cat([t.expand(1, 32), torch.zeros(1, 4)], 1), audio_timestep=t.expand(1, 9),
                   sigma=t, audio_sigma=t, num_frames=2, height=4, width=4, fps=float(RATE), audio_num_frames=9,
                   video_coords=torch.cat([coords, ref_coords], dim=2), use_cross_timestep=True, return_dict=False)
    got_video = L.unpack(got, layout)[0]
    assert torch.allclose(L.video_tokens(got_video[:, :, :2]), v[:, :32], atol=1e-5)
    assert torch.allclose(got_video[:, :, 2, ::2, ::2].flatten(2).transpose(1, 2), v[:, 32:], atol=1e-5)
    assert not got_video[:, :, 2][..., fillers].any()


def _reference_graph(scale: float | None, start: float = 0.0) -> Graph:
    """One Euler step from sigma 0.8 to 0 at CFG 1 (the output is the guided prediction), with LTXVReferenceAudio
    at ``scale`` (None: without the node)."""
    g = Graph()
    ck, audio_vae, cond, video = loaders_and_conditioning(g)
    model, pos, neg = ck.out(0), cond.out(0), cond.out(1)
    if scale is not None:
        ref = g.node("LTXVReferenceAudio", "ref", model=model, positive=pos, negative=neg,
                     reference_audio=g.node("LoadAudio", audio="voice.wav"), audio_vae=audio_vae,
                     identity_guidance_scale=scale, start_percent=start, end_percent=1.0)
        model, pos, neg = ref.out(0), ref.out(1), ref.out(2)
    audio = g.node("LTXVEmptyLatentAudio", frames_number=LENGTH, frame_rate=RATE, batch_size=1, audio_vae=audio_vae)
    av = g.node("LTXVConcatAVLatent", video_latent=video, audio_latent=audio)
    guider = g.node("CFGGuider", model=model, positive=pos, negative=neg, cfg=1.0)
    sampled = g.node("SamplerCustomAdvanced", noise=g.node("RandomNoise", noise_seed=SEED), guider=guider,
                     sampler=g.node("KSamplerSelect", sampler_name="euler"),
                     sigmas=g.node("ManualSigmas", sigmas="0.8, 0"), latent_image=av)
    sep = g.node("LTXVSeparateAVLatent", "sep", av_latent=sampled.out(0))
    g.node("PreviewAny", source=sep.out(0))
    if scale is not None:
        g.node("PreviewAny", source=ref.out(1))
    return g


def test_reference_audio_conditioning_holds_the_encoded_clip(ltx2_engine, tiny_ltx2):
    """``ref_audio`` tokens = LTXVAudioVAEEncode's latent of the clip, ``[B, T, C·M]`` channel-major."""
    _tone(ltx2_engine)
    g = _reference_graph(3.0)
    lat = g.node("LTXVAudioVAEEncode", "lat", audio=g.node("LoadAudio", audio="voice.wav"),
                 audio_vae=g.node("LTXVAudioVAELoader", ckpt_name=CHECKPOINT).out(0))
    g.node("PreviewAny", source=lat)
    result = ltx2_engine.run(g).raise_for_status()
    latent = result.value("lat")["samples"]
    for entries in (result.value("ref", 1), result.value("ref", 2)):
        tokens = entries[0][1]["ref_audio"]["tokens"]
        assert tokens.shape == (1, latent.shape[2], latent.shape[1] * latent.shape[3])
        assert torch.equal(tokens, latent.permute(0, 2, 1, 3).flatten(2))


def test_reference_audio_tokens_lead_the_audio_stream(tiny_ltx2):
    """The runner's call with ``ref_audio`` = the transformer on [reference | audio] tokens, the reference at time
    0 with RoPE times ending one latent frame (4 · 160 / 16000 s) before 0, its outputs dropped."""
    from nodegraph_nodes.dit import ltx2_latent as L
    from nodegraph_nodes.dit.ltx2 import Ltx2Runner
    from nodegraph_nodes.sampling.model import CondPart

    net = tiny_ltx2.transformer
    g = torch.Generator().manual_seed(9)
    video, audio = torch.randn(1, 128, 2, 2, 2, generator=g), torch.randn(1, 4, 9, 4, generator=g)
    packed, layout = L.pack(video, audio)
    ref = torch.randn(1, 5, 16, generator=g)
    ctx = torch.randn(1, 7, 2 * 32, generator=g)  # the connectors' video | audio contexts
    runner = Ltx2Runner(net, "cpu", layout)
    sigma = torch.tensor([0.6])
    parts = [CondPart(ctx, {"frame_rate": float(RATE), "ref_audio": {"tokens": ref}}, 1)]
    with torch.no_grad():
        out = runner(packed, sigma, parts)
        plain = runner(packed, sigma, [CondPart(ctx, {"frame_rate": float(RATE)}, 1)])
        target = net.audio_rope.prepare_audio_coords(1, 9, "cpu")
        ref_coords = net.audio_rope.prepare_audio_coords(1, 5, "cpu")
        ref_coords = ref_coords - (ref_coords[0, 0, -1, 1] + 4 * 160 / 16000)
        t = torch.full((1,), 600.0)
        v, a = net(hidden_states=L.video_tokens(video), audio_hidden_states=torch.cat([ref, L.audio_tokens(audio)], 1),
                   encoder_hidden_states=ctx[..., :32], audio_encoder_hidden_states=ctx[..., 32:],
                   timestep=t[:, None].expand(1, 8), audio_timestep=torch.cat([torch.zeros(1, 5), t[:, None].expand(1, 9)], 1),
                   sigma=t, audio_sigma=t, num_frames=2, height=2, width=2, fps=float(RATE), audio_num_frames=9,
                   audio_coords=torch.cat([ref_coords, target], dim=2), use_cross_timestep=True, return_dict=False)
    assert float(ref_coords[0, 0, -1, 1]) == pytest.approx(-0.04)
    want = L.pack_tokens(v, a[:, 5:], layout)
    assert out.shape == packed.shape
    assert torch.allclose(out, want, atol=1e-5), (out - want).abs().max()
    assert not torch.allclose(out, plain, atol=1e-3)


def test_identity_guidance_adds_the_scaled_reference_difference(ltx2_engine, tiny_ltx2):
    """At CFG 1 one Euler step to 0 gives the guided prediction: with scale s it is
    ``cond + s · (cond − cond without the reference)``; outside the percent range the guidance is off."""
    _tone(ltx2_engine)

    def run(scale, start=0.0):
        return ltx2_engine.run(_reference_graph(scale, start)).raise_for_status().value("sep", 0)["samples"]

    with_ref, without, guided = run(0.0), run(None), run(2.0)
    assert not torch.allclose(with_ref, without, atol=1e-4)
    expected = with_ref + 2.0 * (with_ref - without)
    assert torch.allclose(guided, expected, atol=1e-4), (guided - expected).abs().max()
    assert torch.allclose(run(2.0, start=0.9), with_ref, atol=1e-6)
