"""Tiny random FLUX.3 models from the real classes (diffusers ``Flux3Transformer2DModel`` base and flow-map,
transformers ``Qwen3VLForConditionalGeneration`` with 33 text layers so that ``hidden_states[32]`` exists, and
Flux.2's ``AutoencoderKLFlux2`` from :mod:`tests.dit.tiny_flux2`), saved as the single files users download:
the transformers in BFL's / ComfyUI's layout under ``model.diffusion_model.`` (the inverse of diffusers' FLUX.3
converter, checked by the tests), the Qwen3-VL encoder in the older transformers names, the VAE in the LDM layout
with its ``bn`` statistics. ``processor()`` stands in for Qwen3-VL's ``AutoProcessor`` (chat template +
tokenizer) in diffusers' pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _contig
from tests.dit.tiny_qwen import qwen25vl_comfy_layout, vl_token_ids, write_qwen_tokenizer
from tests.helpers.ldm_export import vae_to_ldm
from tests.helpers.tiny_sd import _randomize

TE_WIDTH, TE_LAYERS = 16, 33
JOINT = 8 * TE_WIDTH  # eight stacked hidden states
CHAT_TEMPLATE = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}{%- if m['content'] is string %}"
                 "{{- m['content'] }}{%- else %}{%- for c in m['content'] %}{{- c['text'] }}{%- endfor %}{%- endif %}"
                 "{{- '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
                 "{%- endif %}")
NAMES = {"unet": "tiny_flux3.safetensors", "distilled": "tiny_flux3_distilled.safetensors",
         "clip": "tiny_flux3_qwen3vl.safetensors", "vae": "tiny_flux3_vae.safetensors"}


@dataclass
class TinyFlux3:
    transformer: Any
    distilled: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any


def qwen3vl(tokenizer):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from nodegraph_nodes.dit.qwen_image21_text import mrope_section

    torch.manual_seed(31)
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TE_WIDTH, intermediate_size=24,
                         num_hidden_layers=TE_LAYERS, head_dim=16, num_attention_heads=1, num_key_value_heads=1,
                         rms_norm_eps=1e-6, max_position_embeddings=262144,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": mrope_section(16), "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=72, num_heads=1, intermediate_size=96, patch_size=16,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=TE_WIDTH,
                           num_position_embeddings=16, deepstack_visual_indexes=[1]), **vl_token_ids(tokenizer))
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    _randomize(model)
    return model


def transformer(flow_map: bool = False, seed: int = 0):
    from diffusers import Flux3Transformer2DModel

    torch.manual_seed(seed)
    net = Flux3Transformer2DModel(in_channels=128, cond_in_channels=128, num_layers=1, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=JOINT,
                                  timestep_channels=32, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4),
                                  flow_map=flow_map).eval()
    _randomize(net)
    return net


#: diffusers → BFL names of a block's inner modules (the inverse of diffusers' FLUX.3 converter)
BLOCK_NAMES = {"attn.to_q.weight": "q_proj.weight", "attn.to_k.weight": "k_proj.weight",
               "attn.to_v.weight": "v_proj.weight", "attn.to_out.0.weight": "attn_out.weight",
               "attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale",
               "ff.linear_in.weight": "mlp_in.weight", "ff.linear_out.weight": "mlp_out.weight"}
PREFIX_NAMES = {"x_embedders.": "emb_in.", "context_embedder.": "txt_in.", "mode_blocks.": "content_mode_blocks.",
                "single_transformer_blocks.": "single_blocks."}
EXACT_NAMES = {"timestep_embedder.linear_1.weight": "time_in.in_layer.weight",
               "timestep_embedder.linear_2.weight": "time_in.out_layer.weight",
               "target_timestep_embedder.linear_1.weight": "ref_time_in.in_layer.weight",
               "target_timestep_embedder.linear_2.weight": "ref_time_in.out_layer.weight",
               "proj_out.weight": "final_layer.image.linear.weight",
               "norm_out.linear.weight": "final_layer.image.adaLN_modulation.1.weight"}


def to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers → BFL names; the output norm's [scale, shift] rows become BFL's [shift, scale]."""
    out = {}
    for key, value in sd.items():
        if key in EXACT_NAMES:
            if key == "norm_out.linear.weight":
                scale, shift = value.chunk(2, dim=0)
                value = torch.cat([shift, scale])
            out[EXACT_NAMES[key]] = value
            continue
        new = key
        for old, bfl in PREFIX_NAMES.items():
            if new.startswith(old):
                new = bfl + new[len(old):]
                break
        if "_modulations." in new and new.endswith(".linear.weight"):
            new = new[:-len(".linear.weight")] + ".lin.weight"
        for old, bfl in BLOCK_NAMES.items():
            if new.endswith(old):
                new = new[:-len(old)] + bfl
                break
        out[new] = value
    return out


def flux2_vae():
    from tests.dit.tiny_flux2 import vae

    return vae()


def vae_file(ae) -> dict[str, torch.Tensor]:
    vae_sd = _contig(ae.state_dict())
    ldm = {k[len("first_stage_model."):]: v for k, v in vae_to_ldm(vae_sd, ae.config).items()}
    ldm.update({k: v for k, v in vae_sd.items() if k.startswith("bn.")})
    return _contig(ldm)


def build_flux3(root: Path, names: dict[str, str] | None = None) -> TinyFlux3:
    """Writes the tiny files into ``root/models`` (names overridable: keys of :data:`NAMES`)."""
    names = {**NAMES, **(names or {})}
    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tok = write_qwen_tokenizer(models / "text_encoders" / "qwen3vl_tokenizer", CHAT_TEMPLATE)
    te, net, distilled, ae = qwen3vl(tok), transformer(), transformer(flow_map=True, seed=5), flux2_vae()
    for model, name in ((net, names["unet"]), (distilled, names["distilled"])):
        save_file({"model.diffusion_model." + k: v for k, v in to_bfl(_contig(model.state_dict())).items()},
                  str(models / "diffusion_models" / name))
    save_file(qwen25vl_comfy_layout(te), str(models / "text_encoders" / names["clip"]))
    save_file(vae_file(ae), str(models / "vae" / names["vae"]))
    return TinyFlux3(net, distilled, te, tok, ae)


class Processor:
    """What diffusers' FLUX.3 text step uses of Qwen3-VL's AutoProcessor: ``apply_chat_template`` and
    ``tokenizer`` (the processor's video part needs torchvision, not installed here)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return self.tokenizer.apply_chat_template(messages, tokenize=tokenize,
                                                  add_generation_prompt=add_generation_prompt)
