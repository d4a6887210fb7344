"""A tiny random ACE-Step 1.0 saved as ComfyUI's all-in-one file (``checkpoints/tiny_ace_step_v1.safetensors``): the
transformer (nodegraph's module, :mod:`nodegraph_nodes.dit.ace_step1_net`, in the release's names) under
``model.diffusion_model.``, a tiny UMT5 (transformers) under ``text_encoders.umt5base.transformer.`` with a hand-
made sentencepiece model as ``text_encoders.spiece_model``, diffusers' ``AutoencoderDC`` and nodegraph's vocoder
under ``vae.dcae.`` / ``vae.vocoder.`` (weight norm as ``weight_g`` / ``weight_v``, the release's names). Beside it:
``text_encoders/umt5_tokenizer`` (tiny_wan's word-level stand-in, for files without a sentencepiece model) and
``text_encoders/ace_lyrics_tokenizer`` (a character-level stand-in for ACE-Step's ``vocab.json`` with its ``[en]`` /
``[SPACE]`` tokens). Weights are seeded: the official code's outputs on them are recorded in
``tests/data/ace_step1_official``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.helpers.tiny_sd import _randomize

CHECKPOINT = "tiny_ace_step_v1.safetensors"


def transformer():
    from nodegraph_nodes.dit.ace_step1_net import AceStep1Config, AceStep1Transformer

    torch.manual_seed(3)
    cfg = AceStep1Config(width=256, layers=2, ff_hidden=160, speaker_dim=512, text_dim=32, lyric_vocab=300,
                         lyric_width=32, lyric_heads=2, lyric_ff=48, lyric_layers=2, ssl_dims=(16, 8))
    net = AceStep1Transformer(cfg).eval()
    _randomize(net, 0.05)
    return net


def dcae():
    from diffusers import AutoencoderDC

    torch.manual_seed(4)
    vae = AutoencoderDC(in_channels=2, latent_channels=8, attention_head_dim=8,
                        encoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
                        decoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
                        encoder_block_out_channels=(8, 16, 16, 32), decoder_block_out_channels=(8, 16, 16, 32),
                        encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
                        encoder_qkv_multiscales=((), (), (), (5,)), decoder_qkv_multiscales=((), (), (), (5,)),
                        upsample_block_type="interpolate", downsample_block_type="Conv",
                        decoder_norm_types="rms_norm", decoder_act_fns="silu").eval()
    _randomize(vae, 0.1)
    return vae


def vocoder():
    from nodegraph_nodes.dit.ace_step1_vae import HeadConfig, Vocoder

    torch.manual_seed(6)
    voc = Vocoder(128, [1, 1], [16, 32], HeadConfig(mels=32, channels=64, rates=(8, 8, 8), kernels=(16, 16, 16),
                                                    res_kernels=(3, 5), pre_kernel=7, post_kernel=7)).eval()
    _randomize(voc, 0.5)  # smaller weights give a vocoder output that hardly depends on the mel
    return voc


def release_names(sd: dict) -> dict:
    """Weight norm in the release's names (``weight_g`` / ``weight_v``)."""
    return {k.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v"): v for k, v in sd.items()}


SPIECE_WORDS = "a red fox in snow blue sky cat on the beach piano pop happy".split()


def spiece_model() -> bytes:
    """A hand-made sentencepiece Unigram model (the ``text_encoders.spiece_model`` stand-in): ``<pad>`` 0,
    ``</s>`` 1, ``<unk>`` 2, ``▁``, the letters and some ``▁word`` pieces; identity normaliser (ComfyUI's file holds
    UMT5's own model)."""
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    for piece, kind in (("<pad>", 3), ("</s>", 3), ("<unk>", 2)):
        proto.pieces.add(piece=piece, score=0.0, type=kind)
    pieces = ["\u2581"] + list(string.ascii_lowercase) + [",", "-"] + ["\u2581" + w for w in SPIECE_WORDS]
    for i, piece in enumerate(pieces):
        proto.pieces.add(piece=piece, score=-2.0 - 0.01 * i if len(piece) > 1 else -5.0 - 0.01 * i, type=1)
    proto.trainer_spec.model_type = 1  # unigram
    proto.trainer_spec.unk_id, proto.trainer_spec.pad_id, proto.trainer_spec.eos_id, proto.trainer_spec.bos_id = (
        2, 0, 1, -1)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.escape_whitespaces = True
    return proto.SerializeToString()


def write_lyrics_vocab(folder: Path) -> Path:
    """A character-level BPE (no merges) with ACE-Step's special tokens at its ids' low end; the ids stay below
    the tiny model's 300 lyric embeddings."""
    from tokenizers import Tokenizer, models

    vocab = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2}
    for ch in string.ascii_lowercase + string.digits + ",.'!?-":
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.add_special_tokens(["[SPACE]", "[en]", "[de]", "[zh-cn]", "[ja]"])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "vocab.json"))
    return folder / "vocab.json"


@dataclass
class TinyAceStep1:
    root: Path
    transformer: torch.nn.Module
    text_encoder: torch.nn.Module
    dcae: torch.nn.Module
    vocoder: torch.nn.Module


def build_ace_step1(root: Path) -> TinyAceStep1:
    from tests.dit.tiny_wan import umt5, write_umt5_tokenizer

    models = root / "models"
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_umt5_tokenizer(models / "text_encoders" / "umt5_tokenizer")
    write_lyrics_vocab(models / "text_encoders" / "ace_lyrics_tokenizer")
    net, te, ae, voc = transformer(), umt5(), dcae(), vocoder()
    sd = {f"model.diffusion_model.{k}": v for k, v in net.state_dict().items()}
    sd.update({f"text_encoders.umt5base.transformer.{k}": v for k, v in te.state_dict().items()})
    sd["text_encoders.spiece_model"] = torch.frombuffer(bytearray(spiece_model()), dtype=torch.uint8)
    sd.update({f"vae.dcae.{k}": v for k, v in ae.state_dict().items()})
    sd.update({f"vae.vocoder.{k}": v for k, v in release_names(voc.state_dict()).items()})
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(models / "checkpoints" / CHECKPOINT))
    return TinyAceStep1(root, net, te, ae, voc)
