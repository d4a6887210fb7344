"""HiDream's CLIP value (four text encoders) and ComfyUI's HiDream prompt recipe; loading the four files
(QuadrupleCLIPLoader).

Encoders: CLIP-L and CLIP-G (transformers ``CLIPTextModelWithProjection``; both projected, ComfyUI's
``clip_l_hidream`` / ``clip_g_hidream`` files hold ``text_projection.weight``), T5-XXL and Llama 3.1 8B
Instruct (``model.layers.…`` / ``model.embed_tokens``; transformers ``LlamaModel``, its config from the
shapes with Llama 3.1's fixed facts: RoPE theta 500000 with the ``llama3`` scaling, RMS eps 1e-5, head
width 128, or half the width for tiny test models).

Recipe (ComfyUI's; diffusers' ``HiDreamImagePipeline.encode_prompt`` gives the same for prompts within its
lengths):

* ``pooled_output`` = CLIP-L's projected pooled output ++ CLIP-G's; the released files are "long" CLIPs
  (248 positions) and, as ComfyUI, take one window as long as their positions (the prompt's first 246
  tokens; textual-inversion embeddings are not looked up there); 77-position files use the SD recipe's
  77-token windows (first window); the CLIP states are not used;
* the entry's states = T5's at 128 tokens (the prompt's first 127 tokens, ``</s>``, pad), with the
  attention mask over the real tokens;
* ``conditioning_llama3`` = Llama's hidden states after each of its layers (the last one after the final
  norm: transformers' ``hidden_states[1:]``), ``[1, layers, tokens, width]``, from ``<|begin_of_text|>``,
  the prompt's tokens (not truncated) and pad tokens (``<|eot_id|>``, else the tokenizer's end token) up to
  128 tokens, with the attention mask over the real tokens;
* a missing encoder contributes zeros (ComfyUI: 768 / 1280-wide pooled parts, ``[1, 128, 4096]`` T5
  states, ``[1, 32, 1, 4096]`` Llama states).

LoRAs (LoraLoader) patch the CLIP-L / CLIP-G encoders as for SD3; not T5 or Llama.

Prompt weights ``(word:1.2)`` are applied to neither T5 nor Llama (the text goes in as written, weight
syntax included); CLIP's pooled output follows the SD recipe.

Tokenizers (never downloaded): CLIP's and T5's as for SD3 (:mod:`.loading`); Llama's a folder with
``tokenizer.json`` and ``tokenizer_config.json`` — ``<file>.tokenizer/`` next to the Llama file, else
``models/text_encoders/llama_tokenizer/`` (the tokenizer files of meta-llama/Llama-3.1-8B-Instruct).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.components import TextEncoder, _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError, read_state_dict
from nodegraph_nodes.dit.text import CLIP_G_WIDTH, CLIP_L_WIDTH, T5_WIDTH, T5Encoder, t5_tokens

T5_LENGTH = LLAMA_MIN_LENGTH = 128
LLAMA_WIDTH, LLAMA_LAYERS = 4096, 32
LLAMA_TOKENIZER_FOLDER = "llama_tokenizer"


@dataclass(frozen=True)
class LlamaEncoder:
    """Llama 3.1 (transformers ``LlamaModel``) and its tokenizer."""

    handle: Any
    tokenizer: Any

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        eot = tok.convert_tokens_to_ids("<|eot_id|>")
        if isinstance(eot, int) and eot != tok.unk_token_id and eot is not None:
            return eot
        return int(tok.eos_token_id)


@dataclass(frozen=True, eq=False)
class HiDreamClip(ManagerOwned):
    """CLIP for HiDream: up to four encoders."""

    clip_l: TextEncoder | None = None
    clip_g: TextEncoder | None = None
    t5: T5Encoder | None = None
    llama: LlamaEncoder | None = None
    embeddings_dir: Path | None = None
    family: str = "hidream"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        """The CLIP encoders (LoraLoader patches them by index, as for SD3)."""
        return tuple(e for e in (self.clip_l, self.clip_g) if e is not None)

    def with_patch(self, index: int, patch) -> "HiDreamClip":
        import dataclasses

        return dataclasses.replace(self, patches=self.patches + ((index, patch),))

    def describe(self) -> str:
        have = [n for n, e in (("clip_l", self.clip_l), ("clip_g", self.clip_g), ("t5xxl", self.t5),
                               ("llama", self.llama)) if e is not None]
        return f"HiDream text encoders ({', '.join(have) or 'none'})"

    def encode_text(self, ctx, text: str) -> list:
        return self.encode_parts(ctx, text, text, text, text)

    def encode_parts(self, ctx, clip_l: str, clip_g: str, t5xxl: str, llama: str) -> list:
        """CONDITIONING (CLIPTextEncodeHiDream: a prompt per encoder)."""
        l_pooled = self._pooled(ctx, self.clip_l, clip_l, CLIP_L_WIDTH)
        g_pooled = self._pooled(ctx, self.clip_g, clip_g, CLIP_G_WIDTH)
        t5 = self._t5(ctx, t5xxl) if self.t5 is not None else torch.zeros(1, T5_LENGTH, T5_WIDTH)
        ll = self._llama(ctx, llama) if self.llama is not None else torch.zeros(1, LLAMA_LAYERS, 1, LLAMA_WIDTH)
        return [[t5, {"pooled_output": torch.cat([l_pooled, g_pooled], dim=-1), "conditioning_llama3": ll}]]

    def _pooled(self, ctx, enc: TextEncoder | None, text: str, width: int) -> torch.Tensor:
        if enc is None:
            return torch.zeros(1, width)
        from nodegraph_nodes.diffusion.lora import patched
        from nodegraph_nodes.diffusion.text_encode import encode_with_encoder

        manager = ctx.service("models")
        index = self.encoders.index(enc)
        with manager.use(enc.handle, ctx.device) as module, \
                patched(module, [p for i, p in self.patches if i == index]):
            positions = int(module.config.max_position_embeddings)
            if positions <= 77:
                _, pooled = encode_with_encoder(enc, module, text, -1, ctx.device, self.embeddings_dir,
                                                manager.allow_pickle)
                return pooled.float().cpu()[:1]
            return long_clip_pooled(enc, module, text, positions, ctx.device)

    def _t5(self, ctx, text: str) -> torch.Tensor:
        tok = self.t5.tokenizer
        pairs = t5_tokens(tok, text, 1)
        ids = [t for t, _ in pairs[:-1]][:T5_LENGTH - 1] + [int(tok.eos_token_id)]
        real = len(ids)
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        ids += [pad] * (T5_LENGTH - real)
        mask = torch.tensor([[1] * real + [0] * (T5_LENGTH - real)], device=ctx.device)
        manager = ctx.service("models")
        with manager.use(self.t5.handle, ctx.device) as module, torch.inference_mode():
            out = module(input_ids=torch.tensor([ids], device=ctx.device), attention_mask=mask)[0]
        return out.float().cpu()

    def _llama(self, ctx, text: str) -> torch.Tensor:
        tok = self.llama.tokenizer
        ids = [int(tok.bos_token_id)] + list(tok(text, add_special_tokens=False)["input_ids"])
        real = len(ids)
        ids += [self.llama.pad_id] * max(0, LLAMA_MIN_LENGTH - real)
        mask = torch.tensor([[1] * real + [0] * (len(ids) - real)], device=ctx.device)
        manager = ctx.service("models")
        with manager.use(self.llama.handle, ctx.device) as module, torch.inference_mode():
            out = module(input_ids=torch.tensor([ids], device=ctx.device), attention_mask=mask,
                         output_hidden_states=True)
        return torch.stack([h.float() for h in out.hidden_states[1:]], dim=1).cpu()


def long_clip_pooled(enc: TextEncoder, module, text: str, positions: int, device: str) -> torch.Tensor:
    """The projected pooled output of a long CLIP (HiDream's 248 positions): one window as long as the model's
    positions (ComfyUI sizes the window from the file), i.e. ``<bos>``, the prompt's first ``positions - 2``
    tokens (weight syntax removed, weights do not touch the pooled output) and ``<eos>``; the pooled output
    is read at ``<eos>`` under the causal mask, so the padding after it does not matter and is left out."""
    from nodegraph_nodes.diffusion.prompt_weights import parse_prompt_weights

    tok = enc.tokenizer
    ids: list[int] = []
    for segment, _ in parse_prompt_weights(text):
        if segment.strip():
            ids += [int(t) for t in tok(segment, add_special_tokens=False)["input_ids"]]
    ids = [int(tok.bos_token_id)] + ids[:positions - 2] + [int(tok.eos_token_id)]
    with torch.inference_mode():
        out = module(input_ids=torch.tensor([ids], device=device))
    return out.text_embeds.float().cpu()[:1]


# -- loading ----------------------------------------------------------------------------------------

def is_llama(sd_keys) -> bool:
    keys = set(sd_keys)
    return ("model.embed_tokens.weight" in keys and "model.layers.0.self_attn.q_proj.weight" in keys
            and "model.layers.0.self_attn.q_norm.weight" not in keys
            and not any(k.startswith(("visual.", "model.visual.", "model.language_model.")) for k in keys))


def llama_head_dim(hidden: int) -> int:
    return 128 if hidden >= 1024 and hidden % 128 == 0 else hidden // 2


def llama_config(sd: dict):
    """Llama 3.1's ``LlamaConfig`` from ``model.*`` weights (see the module docstring)."""
    from transformers import LlamaConfig

    emb = sd["model.embed_tokens.weight"]
    hidden = int(emb.shape[1])
    head = llama_head_dim(hidden)
    layers = len({int(m.group(1)) for k in sd if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    return LlamaConfig(vocab_size=int(emb.shape[0]), hidden_size=hidden, head_dim=head,
                       intermediate_size=int(sd["model.layers.0.mlp.gate_proj.weight"].shape[0]),
                       num_hidden_layers=layers,
                       num_attention_heads=int(sd["model.layers.0.self_attn.q_proj.weight"].shape[0]) // head,
                       num_key_value_heads=int(sd["model.layers.0.self_attn.k_proj.weight"].shape[0]) // head,
                       rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                       tie_word_embeddings=False)


def build_llama(sd: dict, dtype: torch.dtype):
    from transformers import LlamaModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    cfg = llama_config(sd)
    inner = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    return _instantiate(LlamaModel, cfg, inner, dtype, "Llama 3.1 text encoder", is_transformers=True)


def find_llama_tokenizer(models_dir: Path, near: Path) -> Path:
    for c in (near.with_name(near.stem + ".tokenizer"), near.parent / LLAMA_TOKENIZER_FOLDER,
              Path(models_dir) / "text_encoders" / LLAMA_TOKENIZER_FOLDER):
        if (c / "tokenizer.json").is_file():
            return c
    raise ModelFileError(
        f"no Llama tokenizer found for {near.name} (tokenizer.json with tokenizer_config.json). Model files hold "
        f"no tokenizer and this engine never downloads: copy the tokenizer files of "
        f"meta-llama/Llama-3.1-8B-Instruct into models/text_encoders/{LLAMA_TOKENIZER_FOLDER}")


def load_clip(paths: list[Path], manager, device: str, models_dir: Path, where: str) -> HiDreamClip:
    """A HiDreamClip from up to four text-encoder files in any order (CLIP-L, CLIP-G, T5-XXL, Llama)."""
    from nodegraph_nodes.diffusion import checkpoint as ck
    from nodegraph_nodes.dit import convert
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import (_classify_clips, _hf_clip, _stored, build_t5, file_keys,
                                             find_t5_tokenizer, find_tokenizer, flow_dtype, load_t5_tokenizer,
                                             load_tokenizer, text_encoder_kind)

    dtype = flow_dtype(device)
    clips, t5, llama = [], None, None
    for path in paths:
        if is_llama(file_keys(path, manager.allow_pickle)):
            if llama is not None:
                raise ModelFileError(f"{where}: two Llama encoders given ({llama.name}, {path.name})")
            llama = path
            continue
        sd = convert.dequantize_scaled_fp8(read_state_dict(path, allow_pickle=manager.allow_pickle))
        kind = text_encoder_kind(sd)
        if kind == "t5" and t5 is None:
            t5 = (path, sd)
        elif kind == "clip":
            clips.append((path, _hf_clip(sd)))
        else:
            raise ModelFileError(f"{where}: {path.name} is not a CLIP-L/G, T5-XXL or Llama 3.1 text encoder "
                                 "(or a second T5)")
    named = _classify_clips(clips)
    if len(named) < len(clips):
        raise ModelFileError(f"{where}: two CLIP encoders of the same kind given")
    encoders: dict[str, Any] = {}
    for key, (path, sd) in named.items():
        if "text_projection.weight" not in sd:
            raise ModelFileError(f"{where}: {path.name} has no text_projection; HiDream uses the projected "
                                 f"pooled outputs of CLIP-L and CLIP-G (clip_l_hidream / clip_g_hidream files)")
        is_g = key == "clip_g"
        tokenizer = load_tokenizer(find_tokenizer(models_dir, path, second=is_g))

        def loader(sd=sd, is_g=is_g, tokenizer=tokenizer):
            template = ck.family_config("sdxl", "text_encoder_2.json") if is_g else ck.family_config("sd1", "text_encoder.json")
            cfg = ck.infer_clip_config(sd, template)
            cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=0 if is_g else tokenizer.eos_token_id)
            return ck.build_clip(sd, cfg, _stored(manager, sd, dtype), projection=True)

        handle = manager.load(_manager_key(path, key + ":projected", dtype), loader, compute_dtype=dtype)
        pad = 0 if is_g else int(tokenizer.eos_token_id)
        encoders[key] = TextEncoder(handle, tokenizer, key, -1, False, pad, True)
    t5_enc = None
    if t5 is not None:
        path, sd = t5
        tok = load_t5_tokenizer(find_t5_tokenizer(models_dir, path))
        t5_enc = T5Encoder(manager.load(_manager_key(path, "t5xxl", dtype),
                                        lambda sd=sd: build_t5(sd, _stored(manager, sd, dtype)), compute_dtype=dtype), tok)
    llama_enc = None
    if llama is not None:
        tok = load_llm_tokenizer(find_llama_tokenizer(models_dir, llama))

        def llama_loader(path=llama):
            sd = convert.dequantize_scaled_fp8(read_state_dict(path, allow_pickle=manager.allow_pickle))
            return build_llama(sd, _stored(manager, sd, dtype))

        llama_enc = LlamaEncoder(manager.load(_manager_key(llama, "llama", dtype), llama_loader, compute_dtype=dtype), tok)
    return HiDreamClip(encoders.get("clip_l"), encoders.get("clip_g"), t5_enc, llama_enc,
                       Path(models_dir) / "embeddings")
