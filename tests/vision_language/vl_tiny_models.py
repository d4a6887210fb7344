"""Tiny random-weight models built from the real transformers / diffusers classes, saved into a
``models/`` tree the way users lay them out. Nothing is downloaded: tokenizers are built locally with the
``tokenizers`` library and wrapped in ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("a an the of in on at with and photo picture painting image of cat dog fox bird tree forest snow "
         "snowy red blue green yellow white black small large big bright dark light sunset sunrise night "
         "day city street house mountain river lake sea sky cloud clouds sun moon star stars cinematic "
         "photographic detailed sharp focus soft warm cold golden hour lighting wide close-up shot portrait "
         "landscape style art digital oil watercolor render anime pixel line fantasy epic magical quality "
         "best masterpiece highly intricate vivid colors color grain film lens camera depth field "
         "background foreground sitting standing running flying reading robot book library window cozy "
         "vintage roof cozy glowing misty rain ancient castle garden flower flowers field grass road car "
         "boat ship bridge tower people man woman child girl boy face eyes hair smiling yes no two three "
         "one is are what where who how many color does show there missing prompt user assistant system "
         "instruction improved answer question , . : ( ) 1.2").split()


def make_tokenizer(special: dict[str, str], *, template: str | None = None, model_max_length: int = 512,
                   chat_template: str | None = None):
    """A WordLevel tokenizer over :data:`WORDS` plus the given special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(special.values()))
    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in dict.fromkeys(WORDS):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    if template:
        first = template.split()[0]
        last = template.split()[-1]
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, vocab[t]) for t in dict.fromkeys((first, last)) if t in vocab])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **special)
    if chat_template:
        fast.chat_template = chat_template
    return fast


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_gpt2(folder: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = make_tokenizer({"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # keep the tiny model away from eos so outputs have some length
        model.lm_head.weight[tok.eos_token_id].zero_()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def build_llama(folder: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    tok = make_tokenizer({"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                          "additional_special_tokens_0": "<|system|>"} if False else
                         {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
                         template="<s> $A", chat_template=CHAT_TEMPLATE)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)


BERT_SPECIAL = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                "mask_token": "[MASK]", "bos_token": "[DEC]"}


def _blip_config(tok):
    from transformers import BlipConfig

    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id,
                encoder_hidden_size=32)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=32)


def _save_image_processor(folder: Path, size: int, cls_name: str = "BlipImageProcessor") -> None:
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": cls_name, "size": {"height": size, "width": size},
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_resize": True, "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255}))


def build_blip_caption(folder: Path) -> None:
    from transformers import BlipForConditionalGeneration

    torch.manual_seed(2)
    tok = make_tokenizer(BERT_SPECIAL, template="[CLS] $A [SEP]", model_max_length=64)
    model = BlipForConditionalGeneration(_blip_config(tok))
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[tok.sep_token_id] = -20.0  # don't stop at once
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    _save_image_processor(folder, 32)


def build_blip_vqa(folder: Path) -> None:
    from transformers import BlipForQuestionAnswering

    torch.manual_seed(3)
    tok = make_tokenizer(BERT_SPECIAL, template="[CLS] $A [SEP]", model_max_length=64)
    model = BlipForQuestionAnswering(_blip_config(tok))
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[tok.sep_token_id] = -20.0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    _save_image_processor(folder, 32)


def build_vision_encoder_decoder(folder: Path) -> None:
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    torch.manual_seed(4)
    tok = make_tokenizer({"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
    enc = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                    image_size=32, patch_size=8)
    dec = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     add_cross_attention=True, is_decoder=True, bos_token_id=tok.bos_token_id,
                     tie_word_embeddings=False,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = tok.bos_token_id
    cfg.pad_token_id = tok.pad_token_id
    cfg.eos_token_id = tok.eos_token_id
    model = VisionEncoderDecoderModel(cfg)
    model.generation_config.decoder_start_token_id = tok.bos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    with torch.no_grad():  # an untied, spread-out head: random words rather than repeating the start token
        model.decoder.lm_head.weight.normal_(0, 1.0)
        for special in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, tok.unk_token_id):
            model.decoder.lm_head.weight[special].fill_(-1.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    _save_image_processor(folder, 32, "ViTImageProcessor")


def build_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(5)
    tok = make_tokenizer({"unk_token": "<unk>", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                          "pad_token": "<|endoftext|>"}, template="<|startoftext|> $A <|endoftext|>",
                         model_max_length=32)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id),
                     vision_config=dict(hidden_size=64, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=1, image_size=32, patch_size=8),
                     projection_dim=32)
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    _save_image_processor(folder, 32, "CLIPImageProcessor")


def build_clip_vision_file(path: Path, projection_dim: int = 32) -> None:
    """A single-file CLIP vision model with ComfyUI's key layout (transformers' names)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(6)
    cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=37, num_hidden_layers=2, num_attention_heads=1,
                           image_size=32, patch_size=8, projection_dim=projection_dim, hidden_act="quick_gelu")
    model = CLIPVisionModelWithProjection(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def build_classifier(folder: Path, flag: bool) -> None:
    """A ViT image classifier with labels normal/nsfw; ``flag`` biases it hard toward nsfw."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(7)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                    image_size=32, patch_size=8, num_labels=2, id2label={0: "normal", 1: "nsfw"},
                    label2id={"normal": 0, "nsfw": 1})
    model = ViTForImageClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-10.0, 10.0] if flag else [10.0, -10.0]))
    model.save_pretrained(folder)
    _save_image_processor(folder, 32, "ViTImageProcessor")


def build_text_classifier(folder: Path) -> None:
    """A tiny BERT sequence classifier (labels safe/unsafe) that flags everything."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(8)
    tok = make_tokenizer({"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                          "mask_token": "[MASK]"}, template="[CLS] $A [SEP]", model_max_length=64)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=64, num_labels=2,
                     id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1})
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-10.0, 10.0]))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def build_models_tree(root: Path) -> Path:
    """Everything above under ``root/models``; returns ``root``."""
    m = root / "models"
    for kind in ("llm", "captioners", "clip_vision", "safety"):
        (m / kind).mkdir(parents=True, exist_ok=True)
    build_gpt2(m / "llm" / "tiny-gpt2")
    build_llama(m / "llm" / "tiny-llama")
    build_blip_caption(m / "captioners" / "tiny-blip")
    build_blip_vqa(m / "captioners" / "tiny-blip-vqa")
    build_vision_encoder_decoder(m / "captioners" / "tiny-vit-gpt2")
    build_clip(m / "clip_vision" / "tiny-clip")
    build_clip_vision_file(m / "clip_vision" / "tiny_clip_vision.safetensors")
    build_classifier(m / "safety" / "flag-all", flag=True)
    build_classifier(m / "safety" / "pass-all", flag=False)
    build_text_classifier(m / "safety" / "flag-all-text")
    # a folder that is not a causal LM, placed where LLMs belong
    build_blip_caption(m / "llm" / "not-an-llm")
    return root
