"""A tiny random Qwen 3.5 model from transformers' ``Qwen3_5ForConditionalGeneration`` (language model with the
hybrid Gated DeltaNet / gated attention layers, and a vision tower), saved as ComfyUI's
``text_encoders/qwen3.5_*.safetensors`` files hold it (transformers' names: ``model.language_model.…``,
``model.visual.…``, ``lm_head.weight``), with a tiny byte-level BPE tokenizer (:mod:`tests.dit.tiny_qwen`)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.dit.tiny_qwen import write_qwen_tokenizer

TOKENIZER_FOLDER = "qwen35_tokenizer"  # where nodegraph looks for it (nodegraph_nodes.dit.qwen35_text)
#: The releases' RoPE (not in the weights; nodegraph_nodes.dit.qwen35_text.ROPE)
ROPE = {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10], "mrope_interleaved": True}


def qwen35(tokenizer, tied: bool = False, seed: int = 0):
    """The tiny model (eval, fp32): 4 layers (3 DeltaNet, 1 gated attention as every 4th), width 64, head
    width 256 as the releases (query heads 2, key/value 1), DeltaNet key heads 2 and value heads 4 of width 16;
    ``tied``: LM head = the embeddings (as the releases up to 4B). The stop tokens' rows of the LM head are
    zeros so that generation runs to its length (a random model otherwise may stop after a few tokens)."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                num_attention_heads=2, num_key_value_heads=1, head_dim=256, linear_num_key_heads=2,
                linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                linear_conv_kernel_dim=4, rms_norm_eps=1e-6, rope_parameters=dict(ROPE),
                tie_word_embeddings=tied, pad_token_id=tokenizer.pad_token_id)
    vision = dict(depth=1, hidden_size=128, intermediate_size=48, num_heads=2, out_hidden_size=64,  # heads of 64
                  num_position_embeddings=16)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=tied, **ids)
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # norms and DeltaNet gates away from their constant init, so every weight matters
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "A_log", "dt_bias")):
                p.add_(0.2 * torch.randn_like(p))
            elif p.ndim >= 2:
                p.normal_(0.0, 0.2)
        stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        model.lm_head.weight[stops] = 0.0  # stop tokens at logit 0: the random model writes its max_length
    return model


def comfy_layout(model) -> dict[str, torch.Tensor]:
    """The model's tensors in the file's names (the release's; ComfyUI reads these); a tied head is left out."""
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    assert any(k.startswith("model.language_model.layers.0.linear_attn.A_log") for k in sd)
    return sd


def build_qwen35(text_encoders: Path, names: list[str], tied: bool = False, seed: int = 0):
    """Saves the tiny model under each of ``names`` in ``text_encoders`` (with the tokenizer in
    ``qwen35_tokenizer/``); the model and tokenizer."""
    tokenizer = write_qwen_tokenizer(text_encoders / TOKENIZER_FOLDER)
    model = qwen35(tokenizer, tied=tied, seed=seed)
    layout = comfy_layout(model)
    for name in names:
        save_file(layout, str(text_encoders / name))
    return model, tokenizer


def w4a8_file(src: Path, dst: Path) -> int:
    """``src`` saved as ``dst`` with its 2-D linear weights quantised by comfy-kitchen to ComfyUI's
    ``asym_w4a8_int8`` (4-bit groups of 16 with a codebook, ConvRot), as the ``*_w4a8`` upsampler release holds
    them (which of its layers are quantised is not known here; the embeddings are left as they are). Returns
    the layers quantised."""
    from tests.helpers.comfy_quant import convrot_group, quantize_file

    def pick(key: str, value: torch.Tensor) -> dict | None:
        if value.ndim != 2 or "embed_tokens" in key or value.shape[-1] % 16:
            return None
        group = convrot_group(value.shape[-1])
        return None if group is None else dict(group_size=16, convrot_groupsize=group)

    return len(quantize_file(src, dst, "asym_w4a8_int8", pick))
