"""ComfyUI's quantised safetensors files (nodegraph_nodes.diffusion.quantized, through read_state_dict): weights
quantised by comfy-kitchen's own quantisers (tests.helpers.comfy_quant) read back equal to comfy-kitchen's
dequantisation, in every format it defines that ComfyUI's markers name; unknown formats and broken layers are
errors naming file and layer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from nodegraph_nodes.diffusion.files import ModelFileError, read_state_dict
from nodegraph_nodes.dit.convert import dequantize_scaled_fp8
from tests.helpers.comfy_quant import awq_layer, marker, quantize_layer

#: rows over two 128-row tiles, not a multiple of 128 (the swizzled block scales' padding); two 256-column groups
N, K = 160, 512

CASES = [
    ("int8_tensorwise", dict(convrot=True)),  # the *_int8_convrot files
    ("int8_tensorwise", dict(convrot=True, convrot_groupsize=64)),
    ("int8_tensorwise", dict()),  # one scale for the tensor
    ("int8_tensorwise", dict(per_channel=True)),
    ("float8_e4m3fn", dict()),
    ("float8_e5m2", dict()),
    ("mxfp8", dict()),
    ("nvfp4", dict()),
    ("convrot_w4a4", dict()),
    ("asym_w4a8_int8", dict()),  # 4-bit codes through the Lloyd-Max codebook
    ("asym_w4a8_int8", dict(codebook=False)),
    ("asym_w4a8_int8", dict(bits=6, codebook=False)),
]


def _weight(seed: int = 0, n: int = N, k: int = K) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("fmt, opts", CASES, ids=[f"{f}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                                                  for f, o in CASES])
def test_dequantised_weights_equal_comfy_kitchens(tmp_path, fmt, opts):
    weight = _weight()
    layer = quantize_layer("blocks.0.attn.qkv", weight, fmt, **opts)
    bias = torch.randn(N)
    path = tmp_path / "m.safetensors"
    save_file({**layer.tensors, "blocks.0.attn.qkv.bias": bias, "norm.weight": torch.ones(K)}, str(path))
    assert layer.tensors["blocks.0.attn.qkv.weight"].dtype != torch.float32  # really stored quantised

    sd = read_state_dict(path)
    assert sorted(sd) == ["blocks.0.attn.qkv.bias", "blocks.0.attn.qkv.weight", "norm.weight"]  # scales, marker gone
    got = sd["blocks.0.attn.qkv.weight"]
    assert got.dtype == torch.float32 and got.shape == (N, K)  # the dtype of the file's other tensors
    torch.testing.assert_close(got, layer.reference, rtol=0, atol=1e-6)
    assert torch.equal(sd["blocks.0.attn.qkv.bias"], bias)
    assert (got - weight).abs().max() < 0.5 * weight.abs().max()  # and it is the weight, quantised


@pytest.mark.parametrize("fmt, opts", [("int8_tensorwise", dict(convrot=True)), ("float8_e4m3fn", dict()),
                                       ("convrot_w4a4", dict()), ("asym_w4a8_int8", dict())])
def test_big_weights_are_dequantised_in_row_chunks(tmp_path, monkeypatch, fmt, opts):
    """Weights over CHUNK_ELEMENTS are dequantised a few rows at a time into the output (here 7 rows a chunk):
    the same weights."""
    from nodegraph_nodes.diffusion import quantized

    monkeypatch.setattr(quantized, "CHUNK_ELEMENTS", 7 * K)
    layer = quantize_layer("big", _weight(6), fmt, **opts)
    save_file(layer.tensors, str(tmp_path / "big.safetensors"))
    got = read_state_dict(tmp_path / "big.safetensors", dtype=torch.float32)["big.weight"]
    torch.testing.assert_close(got, layer.reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 4 * 128], ids=["whole", "row-chunks"])
def test_awq_w4a16_equals_comfy_kitchens(tmp_path, monkeypatch, chunk):
    from nodegraph_nodes.diffusion import quantized

    if chunk:
        monkeypatch.setattr(quantized, "CHUNK_ELEMENTS", chunk)
    layer = awq_layer("mlp.up", 64, 256)
    save_file({**layer.tensors, "mlp.up.bias": torch.zeros(64, dtype=torch.bfloat16)}, str(tmp_path / "a.safetensors"))
    sd = read_state_dict(tmp_path / "a.safetensors")
    got = sd["mlp.up.weight"]
    assert got.dtype == torch.bfloat16  # the file's unquantised dtype
    torch.testing.assert_close(got, layer.reference.to(torch.bfloat16), rtol=0, atol=0)


def test_markers_in_the_safetensors_metadata(tmp_path):
    """ComfyUI also reads the layers from the header's _quantization_metadata (convert_old_quants), here
    written without the model prefix the keys carry."""
    layer = quantize_layer("model.diffusion_model.x.proj", _weight(1), "int8_tensorwise", convrot=True)
    conf = json.loads(bytes(layer.tensors.pop("model.diffusion_model.x.proj.comfy_quant").tolist()))
    save_file(layer.tensors, str(tmp_path / "m.safetensors"),
              metadata={"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": {"x.proj": conf}})})
    got = read_state_dict(tmp_path / "m.safetensors")
    assert list(got) == ["model.diffusion_model.x.proj.weight"]
    got = got["model.diffusion_model.x.proj.weight"]
    assert got.dtype == torch.bfloat16  # no unquantised tensor to take the dtype from: bf16, as ComfyUI computes
    assert torch.equal(got, layer.reference.to(torch.bfloat16))  # dequantised in float32, rounded once


def test_expert_banks_dequantise_per_expert(tmp_path):
    experts = [quantize_layer("e", _weight(s, 32, 256), "int8_tensorwise", convrot=True) for s in range(3)]
    bank = {"moe.experts.weight": torch.stack([e.tensors["e.weight"] for e in experts]),
            "moe.experts.weight_scale": torch.stack([e.tensors["e.weight_scale"] for e in experts]),
            "moe.experts.comfy_quant": marker({"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 256,
                                               "num_experts": 3}),
            "moe.gate.weight": torch.zeros(3, 256)}
    save_file(bank, str(tmp_path / "moe.safetensors"))
    got = read_state_dict(tmp_path / "moe.safetensors")["moe.experts.weight"]
    torch.testing.assert_close(got, torch.stack([e.reference for e in experts]), rtol=0, atol=1e-6)


def test_in_memory_state_dicts_and_pre_quant_scale():
    """dequantize_scaled_fp8 (the families' call on state dicts read by other means) reads every format too;
    an AWQ-style ``pre_quant_scale`` is folded into the weight's columns."""
    layer = quantize_layer("lin", _weight(2), "nvfp4")
    pre = torch.rand(K) + 0.5
    sd = dequantize_scaled_fp8({**layer.tensors, "lin.pre_quant_scale": pre, "lin.input_scale": torch.tensor(2.0),
                                "other.weight": torch.zeros(2, 2)})
    assert sorted(sd) == ["lin.weight", "other.weight"]
    torch.testing.assert_close(sd["lin.weight"], layer.reference * pre, rtol=0, atol=1e-6)


def test_unknown_format_and_broken_layers_name_file_and_layer(tmp_path):
    save_file({"blocks.3.ff.weight": torch.zeros(16, 16, dtype=torch.int8),
               "blocks.3.ff.comfy_quant": marker({"format": "svdquant_w4a4"})}, str(tmp_path / "svd.safetensors"))
    with pytest.raises(ModelFileError, match=r"svd\.safetensors: layer blocks\.3\.ff is quantised as "
                                             r"'svdquant_w4a4'.*int8_tensorwise"):
        read_state_dict(tmp_path / "svd.safetensors")

    layer = quantize_layer("blocks.1.q", _weight(3), "int8_tensorwise", convrot=True)
    del layer.tensors["blocks.1.q.weight_scale"]
    save_file(layer.tensors, str(tmp_path / "noscale.safetensors"))
    with pytest.raises(ModelFileError, match=r"noscale\.safetensors: layer blocks\.1\.q \(int8_tensorwise\) cannot "
                                             r"be dequantised: it has no weight_scale"):
        read_state_dict(tmp_path / "noscale.safetensors")

    save_file({"x.weight": torch.zeros(4, 12, dtype=torch.int8), "x.weight_scale": torch.ones(4, 1),
               "x.comfy_quant": marker({"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 16})},
              str(tmp_path / "group.safetensors"))
    with pytest.raises(ModelFileError, match=r"group\.safetensors: layer x .*12 input columns are not a multiple "
                                             r"of convrot_groupsize 16"):
        read_state_dict(tmp_path / "group.safetensors")


def test_reading_part_of_a_file_dequantises_it_too(tmp_path):
    """read_safetensors(want=...) (TextGenerate's lm_head, LTX-2's parts of an all-in-one file)."""
    from nodegraph_nodes.diffusion.quantized import read_safetensors

    head = quantize_layer("lm_head", _weight(4, 64, 256), "int8_tensorwise", convrot=True)
    save_file({**head.tensors, "model.norm.weight": torch.ones(256)}, str(tmp_path / "lm.safetensors"))
    got = read_safetensors(tmp_path / "lm.safetensors", want=lambda k: k.startswith("lm_head."))
    assert list(got) == ["lm_head.weight"]
    torch.testing.assert_close(got["lm_head.weight"], head.reference, rtol=0, atol=1e-6)


def test_the_caller_chooses_the_dtype(tmp_path):
    """Default: the dtype of the file's unquantised tensors (bf16 here); a dtype, or a rule given that dtype (the
    DiT loaders pass the model manager's storage rule: float32 on a CPU without a budget)."""
    layer = quantize_layer("a.proj", _weight(5), "int8_tensorwise", convrot=True)
    path = tmp_path / "m.safetensors"
    save_file({**layer.tensors, "a.norm.weight": torch.ones(K, dtype=torch.bfloat16)}, str(path))
    assert read_state_dict(path)["a.proj.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(read_state_dict(path, dtype=torch.float32)["a.proj.weight"], layer.reference,
                               rtol=0, atol=1e-6)
    seen = []
    got = read_state_dict(path, dtype=lambda file: seen.append(file) or torch.float16)["a.proj.weight"]
    assert seen == [torch.bfloat16] and got.dtype == torch.float16
    assert read_state_dict(path, dtype=torch.float32)["a.norm.weight"].dtype == torch.bfloat16  # only dequantised


def test_plain_files_read_as_before(tmp_path):
    sd = {"a.weight": torch.randn(3, 4, dtype=torch.bfloat16), "ids": torch.arange(5)}
    save_file(sd, str(tmp_path / "p.safetensors"))
    got = read_state_dict(tmp_path / "p.safetensors")
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def test_checkpoint_and_vae_loaders_read_int8_convrot_files(tmp_path, diffusion_registry):
    """CheckpointLoaderSimple (UNet, CLIP, VAE) on a ConvRot INT8 checkpoint and VAELoader on a VAE whose
    convolutions are int8 (one scale each; the VAE has no linear layers, which is all ComfyUI quantises) give the
    image of the same graph on float files holding the dequantised weights, bit for bit: every part went through
    the reader."""
    from nodegraph.builder import Graph

    from tests.helpers.comfy_quant import int8_convrot_file, quantize_file
    from tests.helpers.engines import make_engine
    from tests.helpers.tiny_sd import build_sd1

    root = tmp_path / "root"
    tiny = build_sd1(root)
    models = root / "models"
    quantised = {"checkpoints": models / "checkpoints" / "q_int8_convrot.safetensors",
                 "vae": models / "vae" / "q_int8_convrot.safetensors"}
    assert int8_convrot_file(tiny.checkpoint, quantised["checkpoints"]) >= 20
    assert len(quantize_file(models / "vae" / "tiny_vae.safetensors", quantised["vae"], "int8_tensorwise",
                             lambda k, v: {} if v.ndim == 4 else None)) >= 10
    for kind, path in quantised.items():
        save_file(read_state_dict(path), str(models / kind / "q_dequantised.safetensors"))

    def image(name: str) -> torch.Tensor:
        g = Graph()
        ck = g.node("CheckpointLoaderSimple", ckpt_name=name)
        vae = g.node("VAELoader", vae_name=name)
        ks = g.node("KSampler", model=ck.out(0), seed=3, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                    positive=g.node("CLIPTextEncode", text="a red fox", clip=ck.out(1)),
                    negative=g.node("CLIPTextEncode", text="", clip=ck.out(1)),
                    latent_image=g.node("EmptyLatentImage", width=64, height=64, batch_size=1), denoise=1.0)
        dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
        g.node("PreviewAny", source=dec)
        eng = make_engine(root, tmp_path / name, diffusion_registry)
        try:
            return eng.run(g).raise_for_status().value("out")
        finally:
            eng.close()

    quantised = image("q_int8_convrot.safetensors")
    assert torch.equal(quantised, image("q_dequantised.safetensors"))
    assert quantised.std() > 0.01
