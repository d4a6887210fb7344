"""A tiny random HiDream I1 built from the real classes (diffusers ``HiDreamImageTransformer2DModel``,
transformers CLIP-L/G with projection, T5, ``LlamaForCausalLM``) and saved as ComfyUI's repackaged split
files: ``diffusion_models/tiny_hidream_i1.safetensors`` (diffusers' names, as the repackaged files),
``text_encoders/`` CLIP-L / CLIP-G (128 positions: HiDream's "long" CLIPs), T5, Llama (``model.*`` +
``lm_head``) with a locally built Llama-style BPE tokenizer (``<|begin_of_text|>`` added, ``<|eot_id|>`` the
end / pad token) in ``text_encoders/llama_tokenizer``, and ``vae/`` Flux's VAE; and the pipeline's diffusers folder ``diffusers/tiny_hidream``. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import CLIP_G, CLIP_L, _contig, _random_transformer, _vae, _vae_file, build_text_encoders
from tests.helpers.tiny_sd import _randomize

LLAMA_HIDDEN, LLAMA_LAYERS = 32, 3
DOUBLE, SINGLE = 2, 2
CORPUS = ["a photo of a cat", "blue sky", "a red fox in snow", "a dog under a tree", "low quality, blurry"]


@dataclass
class TinyHiDream:
    transformer: object  # with the pipeline's llama_layers (block i <- layer min(i, last))
    vae: object
    clip_l: object
    clip_g: object
    t5: object
    llama: object
    tokenizer: object
    tokenizer_2: object
    tokenizer_3: object
    tokenizer_4: object


def write_llama_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=specials)
    tok.train_from_iterator(CORPUS * 4, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _long_clip(width: int, vocab: int, bos: int, eos: int, act: str):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(width + 1)
    cfg = CLIPTextConfig(hidden_size=width, intermediate_size=width * 2, num_hidden_layers=2, num_attention_heads=1,
                         vocab_size=vocab, max_position_embeddings=128, projection_dim=width, hidden_act=act,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    model = CLIPTextModelWithProjection(cfg).eval()
    _randomize(model)
    return model


def llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(11)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=LLAMA_HIDDEN, head_dim=LLAMA_HIDDEN // 2,
                      intermediate_size=64, num_hidden_layers=LLAMA_LAYERS, num_attention_heads=2,
                      num_key_value_heads=1, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                      tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    _randomize(model)
    return model


def transformer(t5_width: int, pooled_width: int):
    from diffusers import HiDreamImageTransformer2DModel

    torch.manual_seed(7)
    net = HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=16, num_layers=DOUBLE, num_single_layers=SINGLE,
        attention_head_dim=16, num_attention_heads=2, caption_channels=[t5_width, LLAMA_HIDDEN],
        text_emb_dim=pooled_width, num_routed_experts=2, num_activated_experts=2, axes_dims_rope=(8, 4, 4),
        max_resolution=(128, 128),
        llama_layers=[min(i, LLAMA_LAYERS - 1) for i in range(DOUBLE + SINGLE)]).eval()
    return _random_transformer(net, 7)


def build_hidream(root: Path) -> TinyHiDream:
    models = root / "models"
    text = build_text_encoders(root)  # CLIP tokenizers, T5 (tiny_t5xxl.safetensors) and its tokenizer
    te = models / "text_encoders"
    vocab = len(text.tokenizer)
    clip_l = _long_clip(CLIP_L, vocab, text.tokenizer.bos_token_id, text.tokenizer.eos_token_id, "quick_gelu")
    clip_g = _long_clip(CLIP_G, vocab, text.tokenizer.bos_token_id, text.tokenizer.eos_token_id, "gelu")
    tok4 = write_llama_tokenizer(te / "llama_tokenizer")
    lm = llama(tok4)
    net = transformer(int(text.t5.config.d_model), CLIP_L + CLIP_G)
    vae = _vae(0.3611, 0.1159)
    for sub in ("diffusion_models", "vae"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    save_file(_contig(net.state_dict()), str(models / "diffusion_models" / "tiny_hidream_i1.safetensors"))
    save_file(_contig({"model.diffusion_model." + k: v for k, v in net.state_dict().items()}),
              str(models / "diffusion_models" / "tiny_hidream_i1_prefixed.safetensors"))
    save_file(_contig(_vae_file(vae)), str(models / "vae" / "tiny_hidream_ae.safetensors"))
    save_file(_contig(clip_l.state_dict()), str(te / "tiny_clip_l_hidream.safetensors"))
    save_file(_contig(clip_g.state_dict()), str(te / "tiny_clip_g_hidream.safetensors"))
    save_file(_contig(lm.state_dict()), str(te / "tiny_llama_3.1_8b_instruct.safetensors"))
    tiny = TinyHiDream(net, vae, clip_l, clip_g, text.t5, lm, text.tokenizer, text.tokenizer_2, text.tokenizer_t5, tok4)
    save_folder(tiny, models / "diffusers" / "tiny_hidream")
    return tiny


def pipeline(tiny, shift: float = 3.0):
    """diffusers' HiDreamImagePipeline on the tiny parts (64×64: its area rescaling set to 8×8 latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline

    pipe = HiDreamImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=tiny.vae,
                                text_encoder=tiny.clip_l, tokenizer=tiny.tokenizer, text_encoder_2=tiny.clip_g,
                                tokenizer_2=tiny.tokenizer_2, text_encoder_3=tiny.t5, tokenizer_3=tiny.tokenizer_3,
                                text_encoder_4=tiny.llama, tokenizer_4=tiny.tokenizer_4, transformer=tiny.transformer)
    pipe.set_progress_bar_config(disable=True)
    pipe.default_sample_size = 8  # the pipeline rescales to this area (default 1024²): keep 64×64
    return pipe


def save_folder(tiny, folder: Path) -> None:
    """The pipeline's diffusers folder (with the Llama as text_encoder_4 / tokenizer_4)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    pipeline(tiny).save_pretrained(str(folder), safe_serialization=True)
