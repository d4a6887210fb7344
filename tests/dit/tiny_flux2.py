"""Tiny random Flux.2 models from the real classes (diffusers ``Flux2Transformer2DModel`` and
``AutoencoderKLFlux2``, transformers ``MistralForCausalLM``: the language model of Flux.2's Mistral 3
encoder), saved as ComfyUI's split files (transformer in BFL's layout and in diffusers' layout, Mistral
in ComfyUI's ``model.layers.…`` layout, VAE in the LDM layout with its ``bn`` statistics) and as a
``Flux2Pipeline`` diffusers folder. The tokenizer is built here (``tokenizers`` BPE with Mistral's
control tokens and a chat template rendering ``<s>[SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]…[/INST]``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _contig
from tests.helpers.ldm_export import vae_to_ldm
from tests.helpers.tiny_sd import _randomize

TE_WIDTH, TE_LAYERS = 32, 31  # layers 10/20/30 are read; a 31st keeps hidden_states[30] before the final norm
SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "<pad>"]
CORPUS = ["You are an AI that reasons about image descriptions. You give structured responses focusing on object "
          "relationships, object\nattribution and actions without speculation.", "a red fox in snow", "blue sky",
          "a photo of a cat", "a dog under a tree"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[SYSTEM_PROMPT]"
                 "{{ m['content'][0]['text'] }}[/SYSTEM_PROMPT]{% elif m['role'] == 'user' %}[INST]"
                 "{{ m['content'][0]['text'] }}[/INST]{% endif %}{% endfor %}")


def write_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, show_progress=False, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=SPECIALS[3:7])
    fast.chat_template = CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return load_tokenizer(folder)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def mistral(vocab: int):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(11)
    cfg = MistralConfig(vocab_size=vocab, hidden_size=TE_WIDTH, intermediate_size=64, num_hidden_layers=TE_LAYERS,
                        num_attention_heads=1, num_key_value_heads=1, head_dim=128, rms_norm_eps=1e-5,
                        rope_theta=1_000_000_000.0, max_position_embeddings=131072, sliding_window=None,
                        tie_word_embeddings=False)
    return MistralForCausalLM(cfg).eval()


def transformer(guidance: bool = True):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(12)
    net = Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=1, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * TE_WIDTH,
                                  timestep_guidance_channels=32, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4),
                                  guidance_embeds=guidance).eval()
    _randomize(net)
    return net


def vae():
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(13)
    v = AutoencoderKLFlux2(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=32,
                           norm_num_groups=32, sample_size=64).eval()
    _randomize(v)
    with torch.no_grad():
        v.bn.running_mean.copy_(torch.randn(128) * 0.1)
        v.bn.running_var.copy_(torch.rand(128) + 0.5)
    return v


def to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers → BFL names (the inverse of diffusers' Flux.2 converter, written from BFL's names)."""
    top = {"x_embedder": "img_in", "context_embedder": "txt_in",
           "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
           "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
           "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
           "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
           "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
           "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
           "single_stream_modulation.linear": "single_stream_modulation.lin", "proj_out": "final_layer.linear"}
    double = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
              "attn.to_out.0": "img_attn.proj", "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
              "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
              "attn.to_add_out": "txt_attn.proj", "ff_context.linear_in": "txt_mlp.0",
              "ff_context.linear_out": "txt_mlp.2"}
    single = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2", "attn.norm_q": "norm.query_norm",
              "attn.norm_k": "norm.key_norm"}
    out: dict[str, torch.Tensor] = {}
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")}
    for i in blocks:
        p = f"transformer_blocks.{i}."
        for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            out[f"double_blocks.{i}.{stream}_attn.qkv.weight"] = torch.cat([sd[p + f"attn.{n}.weight"] for n in names])
    for k, v in sd.items():
        name, _, kind = k.rpartition(".")
        if name == "norm_out.linear":
            shift, scale = v.chunk(2)
            out["final_layer.adaLN_modulation.1." + kind] = torch.cat([scale, shift])
            continue
        if name in top:
            out[top[name] + "." + kind] = v
            continue
        parts = name.split(".")
        rest = ".".join(parts[2:])
        if parts[0] == "transformer_blocks":
            if rest.split(".")[-1] in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
                continue
            out[f"double_blocks.{parts[1]}.{double[rest]}.{'scale' if 'norm' in rest else kind}"] = v
        elif parts[0] == "single_transformer_blocks":
            out[f"single_blocks.{parts[1]}.{single[rest]}.{'scale' if 'norm' in rest else kind}"] = v
        else:
            raise KeyError(k)
    return out


@dataclass
class TinyFlux2:
    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    folder: Path


def build_flux2(root: Path) -> TinyFlux2:
    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "checkpoints"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(models / "text_encoders" / "mistral3_tokenizer")
    te = mistral(len(tok))
    net, ae = transformer(), vae()
    sd = _contig(net.state_dict())
    save_file({"model.diffusion_model." + k: v for k, v in to_bfl(sd).items()},
              str(models / "diffusion_models" / "tiny_flux2_dev.safetensors"))
    save_file(sd, str(models / "diffusion_models" / "tiny_flux2_diffusers.safetensors"))
    save_file(_contig(te.state_dict()), str(models / "text_encoders" / "tiny_mistral_3_small_flux2.safetensors"))
    vae_sd = _contig(ae.state_dict())
    ldm = {k[len("first_stage_model."):]: v for k, v in vae_to_ldm(vae_sd, ae.config).items()}
    ldm.update({k: v for k, v in vae_sd.items() if k.startswith("bn.")})
    save_file(_contig(ldm), str(models / "vae" / "tiny_flux2_vae.safetensors"))
    folder = models / "checkpoints" / "tiny_flux2"
    _save_pipeline(folder, net, ae, te, tok)
    return TinyFlux2(net, ae, te, tok, folder)


def _save_pipeline(folder: Path, net, ae, te, tok, pipeline: str = "Flux2Pipeline") -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    folder.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(str(folder / "transformer"), safe_serialization=True)
    ae.save_pretrained(str(folder / "vae"), safe_serialization=True)
    te.save_pretrained(str(folder / "text_encoder"), safe_serialization=True)
    tok.save_pretrained(str(folder / "tokenizer"))
    scheduler().save_pretrained(str(folder / "scheduler"))
    index = {"_class_name": pipeline, "_diffusers_version": "0.36.0",
             "transformer": ["diffusers", "Flux2Transformer2DModel"], "vae": ["diffusers", "AutoencoderKLFlux2"],
             "text_encoder": ["transformers", type(te).__name__], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    assert FlowMatchEulerDiscreteScheduler


def scheduler():
    """Flux2Pipeline's scheduler settings (FLUX.2-dev's scheduler_config.json)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                           base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                           max_image_seq_len=4096, time_shift_type="exponential")


def small_decoder_vae():
    """A Flux.2 VAE with a narrower decoder than encoder (BFL's full_encoder_small_decoder), diffusers names."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(14)
    v = AutoencoderKLFlux2(block_out_channels=(32, 64, 64, 64), decoder_block_out_channels=(32, 32, 32, 32),
                           layers_per_block=1, latent_channels=32, norm_num_groups=32, sample_size=64).eval()
    _randomize(v)
    return v


# -- Klein ------------------------------------------------------------------------------------------

KLEIN_TE_LAYERS = 28  # layers 9/18/27 are read; hidden_states[27] stays before the final norm


def qwen3_causal(vocab: int, pad: int, eos: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(15)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=TE_WIDTH, intermediate_size=64, num_hidden_layers=KLEIN_TE_LAYERS,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6,
                      rope_theta=1000000.0, max_position_embeddings=40960, tie_word_embeddings=True,
                      bos_token_id=pad, eos_token_id=eos)
    model = Qwen3ForCausalLM(cfg).eval()
    _randomize(model)
    return model


@dataclass
class TinyKlein:
    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object


def build_klein(root: Path, ae) -> TinyKlein:
    """Klein: a guidance-free transformer (BFL layout) and a Qwen3 encoder (ComfyUI's ``model.layers.…``)."""
    from tests.dit.tiny_qwen import QWEN3_CHAT_TEMPLATE, write_qwen_tokenizer

    models = root / "models"
    tok = write_qwen_tokenizer(models / "text_encoders" / "qwen3_tokenizer", QWEN3_CHAT_TEMPLATE)
    te = qwen3_causal(len(tok), tok.pad_token_id, tok.eos_token_id)
    net = transformer(guidance=False)
    save_file({"model.diffusion_model." + k: v for k, v in to_bfl(_contig(net.state_dict())).items()},
              str(models / "diffusion_models" / "tiny_flux2_klein.safetensors"))
    save_file(_contig(te.state_dict()), str(models / "text_encoders" / "tiny_qwen_3_klein.safetensors"))
    _save_pipeline(models / "checkpoints" / "tiny_flux2_klein", net, ae, te, tok, "Flux2KleinPipeline")
    return TinyKlein(net, ae, te, tok)


def flux2_lora(net, rank: int = 4, alpha: float = 2.0):
    """A random LoRA on ``net`` in diffusers' module names (``{module: (down, up, alpha/rank)}``) and the
    same LoRA in BFL's names as ComfyUI saves them (``diffusion_model.<layer>.lora_A/B.weight``, ``.alpha``):
    q/k/v share one ``down`` so that they fuse into ``qkv``; the final modulation's halves are swapped."""
    g = torch.Generator().manual_seed(21)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    def width(name):
        return net.get_submodule(name).weight.shape

    modules, bfl = {}, {}
    for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
        down = rnd(rank, width(f"transformer_blocks.0.attn.{names[0]}")[1])
        ups = [rnd(width(f"transformer_blocks.0.attn.{n}")[0], rank) for n in names]
        for n, up in zip(names, ups):
            modules[f"transformer_blocks.0.attn.{n}"] = (down, up)
        bfl[f"double_blocks.0.{stream}_attn.qkv"] = (down, torch.cat(ups))
    for diff, orig in (("transformer_blocks.0.attn.to_out.0", "double_blocks.0.img_attn.proj"),
                       ("transformer_blocks.0.ff.linear_in", "double_blocks.0.img_mlp.0"),
                       ("single_transformer_blocks.1.attn.to_qkv_mlp_proj", "single_blocks.1.linear1"),
                       ("norm_out.linear", "final_layer.adaLN_modulation.1")):
        out_f, in_f = width(diff)
        down, up = rnd(rank, in_f), rnd(out_f, rank)
        modules[diff] = (down, up)
        if orig.startswith("final_layer"):
            shift, scale = up.chunk(2)
            up = torch.cat([scale, shift])
        bfl[orig] = (down, up)
    file = {}
    for layer, (down, up) in bfl.items():
        file[f"diffusion_model.{layer}.lora_A.weight"] = down.contiguous()
        file[f"diffusion_model.{layer}.lora_B.weight"] = up.contiguous()
        file[f"diffusion_model.{layer}.alpha"] = torch.tensor(alpha)
    return {k: (d, u, alpha / rank) for k, (d, u) in modules.items()}, file


GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tekken_json(tok) -> bytes:
    """The tiny tokenizer in Mistral's ``tekken.json`` format (as ComfyUI's repackaged Mistral file stores
    it under ``tekken_model``): special tokens by rank, then every byte-level token's bytes by rank (id minus
    the special count), the GPT-2 split pattern the tiny tokenizer's ByteLevel pre-tokenizer uses."""
    import base64

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    decode = {v: k for k, v in bytes_to_unicode().items()}
    vocab = tok.backend_tokenizer.get_vocab()
    specials = len(SPECIALS)
    assert all(vocab[s] == i for i, s in enumerate(SPECIALS))
    entries = []
    for text, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        if idx < specials:
            continue
        raw = bytes(decode[c] for c in text)
        entries.append({"rank": idx - specials, "token_bytes": base64.b64encode(raw).decode(), "token_str": None})
    doc = {"config": {"pattern": GPT2_PATTERN, "num_vocab_tokens": len(vocab), "default_vocab_size": len(vocab),
                      "default_num_special_tokens": specials, "version": "v7"},
           "vocab": entries,
           "special_tokens": [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(SPECIALS)]}
    return json.dumps(doc).encode()
