"""FLUX.3 in the two layouts docs/models.md listed as "not yet", on the tiny files of test_flux3.py:

* kohya-flattened BFL names (``lora_unet_single_blocks_0_q_proj.lora_down/up`` + ``.alpha``): diffusers 0.42.1
  does not read them for FLUX.3 (its converter only renames ``diffusion_model.`` keys), so the image with such a
  file through LoraLoaderModelOnly is compared with diffusers' ``load_lora_weights`` of the same numbers in
  diffusers / PEFT names (``up · alpha / rank``, renamed and — for the final modulation — its shift / scale halves
  swapped by diffusers' own FLUX.3 converter), at 1e-4; layers outside the blocks (modulations, embedders, time,
  the final layer) included;
* diffusers folders as the modular pipelines' ``save_pretrained`` writes them (``modular_model_index.json``,
  ``transformer/``, ``text_encoder/``, ``vae/``; the tokenizer in ``tokenizer/``) through CheckpointLoaderSimple
  give the single files' image (UNETLoader + CLIPLoader + VAELoader), base at cfg 3.5 and step-distilled."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph

from tests.dit.test_flux3 import (CFG, NAMES, NEGATIVE, PROMPT, SEED, STEPS, _close, engine, flux3_graph,  # noqa: F401
                                  pipeline, reference, tiny)
from tests.dit.tiny_flux3 import to_bfl

RANK, ALPHA = 4, 2.0
#: BFL layers (block and outer ones); the modules are found through the tiny models' BFL state dicts
LAYERS = ("single_blocks.0.q_proj", "single_blocks.1.mlp_out", "content_mode_blocks.image.0.attn_out",
          "content_mode_blocks.image_cond.0.k_proj", "txt_mode_blocks.0.mlp_in", "early_stream_modulations.image.lin",
          "single_stream_modulations.txt.lin", "final_layer.image.adaLN_modulation.1", "time_in.in_layer", "txt_in",
          "emb_in.image")


def _kohya_and_peft(net) -> tuple[dict, dict]:
    """The same low-rank numbers as a kohya file in BFL names and as its diffusers / PEFT equivalent."""
    from diffusers.loaders.single_file_utils import convert_flux3_transformer_checkpoint_to_diffusers

    shapes = {k[:-len(".weight")]: v.shape for k, v in to_bfl(dict(net.state_dict())).items()}
    gen = torch.Generator().manual_seed(17)
    kohya, peft = {}, {}
    for layer in LAYERS:
        out_f, in_f = shapes[layer]
        up, down = torch.randn(out_f, RANK, generator=gen) * 0.3, torch.randn(RANK, in_f, generator=gen) * 0.3
        flat = "lora_unet_" + layer.replace(".", "_")
        kohya.update({flat + ".lora_up.weight": up, flat + ".lora_down.weight": down,
                      flat + ".alpha": torch.tensor(ALPHA)})
        ((name, up_d),) = convert_flux3_transformer_checkpoint_to_diffusers({layer + ".weight": up}).items()
        module = name[:-len(".weight")]
        peft.update({f"transformer.{module}.lora_B.weight": up_d * (ALPHA / RANK),
                     f"transformer.{module}.lora_A.weight": down})
    return kohya, peft


def test_kohya_bfl_names_match_diffusers_on_the_peft_equivalent(engine, tiny):
    root, t = tiny
    kohya, peft = _kohya_and_peft(t.transformer)
    (root / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(root / "models" / "loras" / "flux3_kohya.safetensors"))
    result = engine.run(flux3_graph(lora="flux3_kohya.safetensors")).raise_for_status()
    ref = reference(t, lora=peft)
    _close(result.value("lat")["samples"], ref["latents"])
    _close(result.value("out"), ref["image"])
    plain = engine.run(flux3_graph()).raise_for_status().value("out")
    assert not torch.allclose(plain, result.value("out"), atol=1e-3)
    # each outer layer takes part: without them the image differs
    blocks = {k: v for k, v in kohya.items() if "_blocks_" in k}
    save_file({k: v.contiguous() for k, v in blocks.items()},
              str(root / "models" / "loras" / "flux3_kohya_blocks.safetensors"))
    only_blocks = engine.run(flux3_graph(lora="flux3_kohya_blocks.safetensors")).raise_for_status().value("out")
    assert not torch.allclose(only_blocks, result.value("out"), atol=1e-3)


def _save_folder(t, folder, distilled: bool) -> None:
    """The pipeline's own ``save_pretrained``; the tokenizer (our stand-in processor cannot be saved) as the
    release's processor folder would hold it."""
    pipe = pipeline(t, distilled)
    pipe.save_pretrained(str(folder))
    t.tokenizer.save_pretrained(str(folder / "tokenizer"))


def _folder_graph(name: str, cfg: float) -> Graph:
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name=name)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=ck.out(1)).out(0)
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=ck.out(1)).out(0)
    lat = g.node("EmptyFlux2LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", "lat", model=ck.out(0), positive=pos, negative=neg, latent_image=lat, seed=SEED,
                steps=STEPS, cfg=cfg, sampler_name="euler", scheduler="simple", denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=ck.out(2)))
    return g


@pytest.mark.parametrize("distilled", [False, True])
def test_diffusers_folder_equals_the_single_files(engine, tiny, distilled):
    import json

    root, t = tiny
    name = "tiny_flux3_distilled_diffusers" if distilled else "tiny_flux3_diffusers"
    folder = root / "models" / "checkpoints" / name
    _save_folder(t, folder, distilled)
    index = json.loads((folder / "modular_model_index.json").read_text())
    assert index["_class_name"] == ("Flux3DistilledModularPipeline" if distilled else "Flux3ModularPipeline")
    assert not (folder / "model_index.json").exists()  # what diffusers writes: the modular index only
    cfg = 1.0 if distilled else CFG
    files = engine.run(flux3_graph(unet=NAMES["distilled"] if distilled else NAMES["unet"], cfg=cfg)).raise_for_status()
    from_folder = engine.run(_folder_graph(name, cfg)).raise_for_status()
    _close(from_folder.value("lat")["samples"], files.value("lat")["samples"], atol=1e-5)
    _close(from_folder.value("out"), files.value("out"), atol=1e-5)
    _close(from_folder.value("out"), reference(t, distilled=distilled)["image"])


def test_kohya_lora_through_lora_loader_on_the_folder_equals_the_single_file(engine, tiny):
    from tests.dit.test_qwen_image21_lora import with_lora_loader

    root, t = tiny
    folder = root / "models" / "checkpoints" / "tiny_flux3_diffusers_lora"
    _save_folder(t, folder, distilled=False)
    kohya, _ = _kohya_and_peft(t.transformer)
    (root / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya.items()},
              str(root / "models" / "loras" / "flux3_kohya2.safetensors"))
    prompt = with_lora_loader(_folder_graph(folder.name, CFG).to_api(), "flux3_kohya2.safetensors", 1.0)
    image = engine.run(prompt).raise_for_status().value("out")
    files = engine.run(flux3_graph(lora="flux3_kohya2.safetensors")).raise_for_status().value("out")
    _close(image, files, atol=1e-5)
