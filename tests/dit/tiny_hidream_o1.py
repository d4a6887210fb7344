"""A tiny random HiDream-O1-Image built from the real transformers Qwen3-VL classes (vision tower with one
DeepStack merger, two text layers) plus the three heads, saved as the all-in-one checkpoint
(``model.…`` names, as the official release and Comfy-Org's repack) under the templates' file names in
``models/checkpoints/``, with the Qwen2 tokenizer in ``models/text_encoders/qwen25_tokenizer/``.

The vocabulary is 151674 entries wide: the model's special ids (tms 151673, image pad 151655, …) are fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.dit.tiny_qwen import write_qwen_tokenizer
from tests.helpers.tiny_sd import _randomize

FILES = ("hidream_o1_image_dev_fp8_scaled.safetensors", "hidream_o1_image_bf16.safetensors")
VOCAB = 151674


@dataclass
class TinyHiDreamO1:
    net: object  # HiDreamO1Net
    tokenizer: object
    models: Path


def tiny_config():
    from nodegraph_nodes.dit.hidream_o1_loading import deepstack_layers
    from nodegraph_nodes.dit.hidream_o1_sequence import IMAGE_PAD, VISION_END, VISION_START
    from nodegraph_nodes.dit.qwen_image21_text import mrope_section
    from transformers import Qwen3VLConfig

    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, head_dim=16,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         max_position_embeddings=262144, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": mrope_section(16), "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=72, num_heads=1, intermediate_size=96, patch_size=16,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=64,
                           num_position_embeddings=16, deepstack_visual_indexes=deepstack_layers(2, 1)),
        image_token_id=IMAGE_PAD, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    cfg.text_config._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    return cfg


def build_hidream_o1(root: Path, files: tuple[str, ...] = FILES) -> TinyHiDreamO1:
    """The tiny model saved into ``root/models``: the checkpoint under each name of ``files``."""
    from nodegraph_nodes.dit.hidream_o1 import HiDreamO1Net

    torch.manual_seed(0)
    net = HiDreamO1Net(tiny_config()).eval()
    _randomize(net, 0.05)
    models = root / "models"
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    for name in files:
        save_file(sd, str(models / "checkpoints" / name))
    tokenizer = write_qwen_tokenizer(models / "text_encoders" / "qwen25_tokenizer")
    return TinyHiDreamO1(net, tokenizer, models)
