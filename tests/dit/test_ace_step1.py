"""ACE-Step 1.0 through ComfyUI's nodes on the tiny all-in-one file (tests/dit/tiny_ace_step1.py):
CheckpointLoaderSimple → TextEncodeAceStepAudio → KSampler (ModelSamplingSD3) → VAEDecodeAudio equals the
official ACE-Step code's transformer, vocoder and lyric tokens on the same weights (recorded in
tests/data/ace_step1_official, see its README), and ComfyUI's ACE-Step 1.0 templates run end to end.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.template_runs import package_template_api, run_template, saved_audio
from tests.dit.tiny_ace_step1 import CHECKPOINT, build_ace_step1, write_lyrics_vocab
from tests.helpers.engines import make_engine

OFFICIAL = Path(__file__).resolve().parents[1] / "data" / "ace_step1_official" / "official_outputs.safetensors"
TAGS = "a red fox in snow"
LYRICS = "[verse]\nDr. Fox & 12 friends\n\nrunning on the beach"
SEED, STEPS, CFG, SHIFT, SECONDS = 7, 3, 5.0, 5.0, 1.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_ace_step1(tmp_path_factory.mktemp("ace_step1_models"))


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def official():
    return load_file(str(OFFICIAL))


def graph(lyrics_strength: float = 1.0, tags: str = TAGS) -> Graph:
    g = Graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    pos = g.node("TextEncodeAceStepAudio", "cond", clip=ckpt.out(1), tags=tags, lyrics=LYRICS,
                 lyrics_strength=lyrics_strength).out(0)
    neg = g.node("ConditioningZeroOut", conditioning=pos).out(0)
    model = g.node("ModelSamplingSD3", model=ckpt.out(0), shift=SHIFT).out(0)
    lat = g.node("EmptyAceStepLatentAudio", seconds=SECONDS, batch_size=1)
    ks = g.node("KSampler", "latent", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                scheduler="simple", positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecodeAudio", "out", samples=ks, vae=ckpt.out(2)))
    return g


def test_transformer_equals_official(tiny, official):
    from nodegraph_nodes.dit.ace_step1 import build_transformer, is_checkpoint
    from nodegraph_nodes.dit.convert import strip_prefix

    sd = load_file(str(tiny.root / "models" / "checkpoints" / CHECKPOINT))
    assert is_checkpoint(sd)
    net = build_transformer(strip_prefix(sd, "model.diffusion_model."), torch.float32)
    with torch.no_grad():
        out = net(official["dit_x"], official["dit_t"], official["dit_text"], official["dit_lyrics"])
    ref = official["dit_out"]
    assert out.shape == ref.shape == (2, 8, 16, 12)
    assert torch.allclose(out, ref, atol=1e-4), float((out - ref).abs().max())
    with torch.no_grad():  # lyrics_strength scales the lyric encoder's states
        weaker = net(official["dit_x"], official["dit_t"], official["dit_text"], official["dit_lyrics"], 0.5)
    assert not torch.allclose(weaker, ref, atol=1e-3)


def test_text_encode_and_sample_equal_official(engine, official):
    result = engine.run(graph()).raise_for_status()
    ((text, extras),) = result.value("cond")
    assert torch.allclose(text, official["sample_text"], atol=1e-5)
    assert extras["conditioning_lyrics"].tolist() == official["sample_lyrics"].tolist()
    assert extras["lyrics_strength"] == 1.0
    latent, ref_latent = result.value("latent")["samples"], official["sample_latent"]
    assert latent.shape == ref_latent.shape == (1, 8, 16, 10)
    assert torch.allclose(latent, ref_latent, atol=1e-4, rtol=1e-5), float((latent - ref_latent).abs().max())
    audio = result.value("out")
    assert audio["sample_rate"] == 44100
    wave, ref = audio["waveform"], official["sample_audio"]
    assert wave.shape == ref.shape == (1, 2, 40960)
    assert torch.allclose(wave, ref, atol=1e-4), float((wave - ref).abs().max())
    assert wave.std() > 0.05 and not torch.allclose(wave[:, 0], wave[:, 1], atol=1e-2)
    other = engine.run(graph(lyrics_strength=0.2)).raise_for_status().value("out")["waveform"]
    assert not torch.allclose(wave, other, atol=1e-4)


def encode_input() -> torch.Tensor:
    """8192 stereo samples at 44.1 kHz (two sines and seeded noise) on the 16-bit grid, so a WAV keeps them."""
    t = torch.arange(8192) / 44100.0
    g = torch.Generator().manual_seed(3)
    left = 0.5 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(8192, generator=g)
    right = 0.4 * torch.sin(2 * math.pi * 330 * t) + 0.05 * torch.randn(8192, generator=g)
    return torch.round(torch.stack([left, right]) * 32768) / 32768


def test_vae_encode_equals_official(engine, official):
    """VAEEncodeAudio: the release's log-mel (torchaudio's Slaney mel filters), the mel scaling and the DCAE
    encoder with the latent shift and scale."""
    from nodegraph_nodes.media.codec import encode_audio

    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    (engine.paths.input_dir / "tone.wav").write_bytes(encode_audio(encode_input(), 44100, "wav", None, None))
    g = Graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    audio = g.node("LoadAudio", "audio", audio="tone.wav")
    g.node("PreviewAny", source=audio)
    g.node("PreviewAny", source=g.node("VAEEncodeAudio", "lat", audio=audio, vae=ckpt.out(2)))
    result = engine.run(g).raise_for_status()
    assert torch.equal(result.value("audio")["waveform"][0], encode_input())
    lat, ref = result.value("lat")["samples"], official["encode_latent"]
    assert lat.shape == ref.shape == (1, 8, 16, 2)
    assert torch.allclose(lat, ref, atol=1e-3, rtol=1e-5), float((lat - ref).abs().max())


def test_umt5_tokenizer_from_the_file_or_the_folder(engine, tiny):
    """The file's sentencepiece model tokenizes the tags (the hand-made model's ``▁word`` pieces); a file without
    one takes the UMT5 tokenizer folder (tiny_wan's word-level stand-in)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from tests.dit.tiny_ace_step1 import spiece_model
    from nodegraph_nodes.dit.spiece_tokenizer import fast_tokenizer

    tok = fast_tokenizer(spiece_model(), "tiny")
    assert tok("a red fox in snow")["input_ids"] == [32, 33, 34, 35, 36, 1]
    assert tok("  a  redx")["input_ids"] == [32, 33, 27, 1]  # whitespace collapsed, a letter for what is left
    sd = load_file(str(tiny.root / "models" / "checkpoints" / CHECKPOINT))
    del sd["text_encoders.spiece_model"]
    save_file(sd, str(tiny.root / "models" / "checkpoints" / "tiny_ace_step_v1_no_spiece.safetensors"))
    states = {}
    for name in (CHECKPOINT, "tiny_ace_step_v1_no_spiece.safetensors"):
        g = Graph()
        ckpt = g.node("CheckpointLoaderSimple", ckpt_name=name)
        g.node("PreviewAny", source=g.node("TextEncodeAceStepAudio", "cond", clip=ckpt.out(1), tags="red fox",
                                            lyrics="", lyrics_strength=1.0))
        states[name] = engine.run(g).raise_for_status().value("cond")[0][0]
    folder = AutoTokenizer.from_pretrained(str(tiny.root / "models" / "text_encoders" / "umt5_tokenizer"))
    with torch.no_grad():
        for name, ids in ((CHECKPOINT, [[33, 34, 1]]), ("tiny_ace_step_v1_no_spiece.safetensors",
                                                       [folder("red fox")["input_ids"]])):
            assert torch.allclose(states[name], tiny.text_encoder(input_ids=torch.tensor(ids))[0], atol=1e-6)
    assert folder("red fox")["input_ids"] != [33, 34, 1]


def test_lyric_tokens_follow_comfyui_lines(tiny):
    from nodegraph_nodes.dit.ace_step1_lyrics import LyricTokenizer, clean, number_words

    tok = LyricTokenizer(tiny.root / "models" / "text_encoders" / "ace_lyrics_tokenizer" / "vocab.json")
    ids = lambda text: tok.tokenizer.encode(text).ids  # noqa: E731
    assert tok("") == [261]  # ComfyUI: no segment, the start token alone
    assert tok("\n") == [261, 2, 2]
    assert tok("ab\n\n[de]cd") == [261, *ids("[en]ab"), 2, 2, *ids("[de]cd"), 2]
    assert tok("[xx]ab") == [261, *ids("[en][xx]ab"), 2]  # not a language code: part of the line
    # ComfyUI's weight syntax splits the lyrics into segments tokenized apart; [...] is plain text
    assert tok("a (b c:1.2) d") == [261, *ids("[en]a"), 2, *ids("[en]b[SPACE]c"), 2, *ids("[en]d"), 2]
    assert tok("[verse] \\(b\\)") == [261, *ids("[en][verse][SPACE](b)"), 2]
    assert tok("A  b") == [261, *ids("[en]a[SPACE]b"), 2]  # lower case, spaces collapsed and written [SPACE]
    assert clean('Say "Hi" Mr. Fox & 1,234 Friends', "en") == "say hi mister fox and one thousand, two hundred and " \
                                                             "thirty-four friends"
    assert clean("Hallo 12 Freunde", "de") == "hallo 12 freunde"
    assert [number_words(n) for n in (0, 15, 40, 105, 2000, 1005)] == [
        "zero", "fifteen", "forty", "one hundred and five", "two thousand", "one thousand and five"]


def test_tag_weights_follow_comfyui(tiny):
    """A weighted tag moves from the empty prompt's state by its weight; unweighted tokens are the plain
    encoding of all segments (tokenized apart)."""
    from transformers import AutoTokenizer

    from nodegraph_nodes.dit.ace_step1 import encode_tags

    tokenizer = AutoTokenizer.from_pretrained(str(tiny.root / "models" / "text_encoders" / "umt5_tokenizer"))
    te = tiny.text_encoder
    with torch.no_grad():
        plain = encode_tags(te, tokenizer, "a red fox", "cpu")
        assert torch.allclose(plain, te(input_ids=tokenizer("a red fox", return_tensors="pt")["input_ids"])[0])
        weighted = encode_tags(te, tokenizer, "a (red:1.5) fox", "cpu")
        empty = te(input_ids=torch.tensor([[1, 0, 0, 0]]), attention_mask=torch.tensor([[1, 0, 0, 0]]))[0]
    assert weighted.shape == plain.shape == (1, 4, 32)
    assert torch.allclose(weighted[0, [0, 2, 3]], plain[0, [0, 2, 3]], atol=1e-6)
    assert torch.allclose(weighted[0, 1], (plain[0, 1] - empty[0, 1]) * 1.5 + empty[0, 1], atol=1e-5)


def test_text_encode_refuses_other_clips(engine, tiny):
    from nodegraph_nodes.dit.ace_step_nodes import TextEncodeAceStepAudio

    with pytest.raises(TypeError, match="ACE-Step 1.0's text encoder"):
        TextEncodeAceStepAudio.execute(None, clip=object(), tags="x", lyrics="y")


@pytest.mark.parametrize("name", ["audio_ace_step_1_t2a_song", "audio_ace_step_1_t2a_instrumentals"])
def test_comfy_ace_step_1_template_runs(engine, tiny, name):
    """ComfyUI's ACE-Step 1.0 text-to-audio templates (the installed package's) on the tiny file saved under the
    templates' file name; only the length (1 s) and the steps (2) are made smaller."""
    from tests.dit.tiny_qwen import copy_as

    copy_as(tiny.root, {f"checkpoints/{CHECKPOINT}": "checkpoints/ace_step_v1_3.5b.safetensors"})
    api = package_template_api(name, engine.registry)
    kinds = {n["class_type"] for n in api.values()}
    assert {"CheckpointLoaderSimple", "TextEncodeAceStepAudio", "EmptyAceStepLatentAudio", "ModelSamplingSD3",
            "LatentApplyOperationCFG", "VAEDecodeAudio"} <= kinds
    run_template(engine, api, {"EmptyAceStepLatentAudio": {"seconds": SECONDS}, "KSampler": {"steps": 2}})
    extension = "flac" if name.endswith("song") else "mp3"
    rate, channels, samples = saved_audio(engine.paths.output_dir, extension)
    assert rate == 44100 and channels == 2
    assert abs(samples - 40960) <= 2048  # mp3 frames pad the end


def test_comfy_ace_step_1_m2m_editing_template_runs(engine, tiny):
    """ComfyUI's ACE-Step 1.0 music-to-music template: LoadAudio → VAEEncodeAudio → KSampler at denoise 0.3 →
    VAEDecodeAudio; the input is a 1 s tone under the template's file name, steps 2."""
    from nodegraph_nodes.media.codec import encode_audio
    from tests.dit.template_runs import template_api_of
    from tests.dit.tiny_qwen import copy_as
    from tests.helpers.package_templates import package_templates

    copy_as(tiny.root, {f"checkpoints/{CHECKPOINT}": "checkpoints/ace_step_v1_3.5b.safetensors"})
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    tone = (0.3 * torch.sin(torch.arange(44100.0) / 10)).repeat(2, 1)
    (engine.paths.input_dir / "audio_ace_step_1_m2m_editing_input_audio.mp3").write_bytes(
        encode_audio(tone, 44100, "mp3", None, None))
    api = template_api_of(package_templates(lambda n: n == "audio_ace_step_1_m2m_editing.json")[0], engine.registry)
    assert {"LoadAudio", "VAEEncodeAudio", "TextEncodeAceStepAudio"} <= {n["class_type"] for n in api.values()}
    run_template(engine, api, {"KSampler": {"steps": 2}})
    rate, channels, samples = saved_audio(engine.paths.output_dir, "flac")
    assert rate == 44100 and channels == 2
    assert samples % 4096 == 0 and samples >= 44100


def test_packaged_lyric_vocabulary_is_the_fallback(tmp_path):
    """Without a vocabulary of the user's, the copy of ACE-Step's vocab.json this package ships is used (the
    model files hold none); a user's file beside the checkpoint wins; with neither, the error names the folder."""
    from nodegraph_nodes.diffusion.files import ModelFileError
    from nodegraph_nodes.dit.ace_step1_lyrics import PACKAGED_VOCAB, LyricTokenizer, find_vocab

    ckpt = tmp_path / "models" / "checkpoints" / "ace_step_v1_3.5b.safetensors"
    ckpt.parent.mkdir(parents=True)
    assert find_vocab(tmp_path / "models", ckpt) == PACKAGED_VOCAB
    ids = LyricTokenizer(PACKAGED_VOCAB).tokens("[verse]\nhello world")
    assert ids[0] == 261 and 1 not in ids  # the release's start token; no unknown tokens for plain English
    own = write_lyrics_vocab(ckpt.parent / "ace_lyrics_tokenizer")
    assert find_vocab(tmp_path / "models", ckpt) == own
    with pytest.raises(ModelFileError, match="ace_lyrics_tokenizer"):
        find_vocab(tmp_path / "other", tmp_path / "other" / "x.safetensors", packaged=None)
