"""Flow-matching diffusion transformers in ComfyUI's node names: SD3 / SD3.5 (MMDiT) and Flux.1.

Core (no nodes): :mod:`.formats` (latent formats, default sampling), :mod:`.convert` (single-file key
layouts → diffusers transformers), :mod:`.text` (the CLIP value: CLIP-L/G + T5 encoding recipes),
:mod:`.model` (the MODEL value and its runners for the sampling core), :mod:`.loading` (files,
checkpoints, diffusers folders). Nodes: :mod:`.nodes_flow` (DualCLIPLoader, TripleCLIPLoader,
EmptySD3LatentImage, CLIPTextEncodeSD3, CLIPTextEncodeFlux, FluxGuidance), :mod:`.kontext`
(ReferenceLatent, FluxKontextImageScale, FluxKontextMultiReferenceLatentMethod), :mod:`.skip_layers`
(SkipLayerGuidanceDiT, SkipLayerGuidanceDiTSimple). Qwen-Image and Z-Image: :mod:`.qwen_image`,
:mod:`.z_image` (transformers, VAE, runners), :mod:`.llm_text` (their language-model CLIP),
:mod:`.llm_loading` (their files and folders), nodes in :mod:`.qwen_edit` (TextEncodeQwenImageEdit,
TextEncodeQwenImageEditPlus). Wan 2.1 text-to-video: :mod:`.wan` (transformer, UMT5 CLIP, runner,
files and folders), nodes in :mod:`.video_latent` (EmptyHunyuanLatentVideo, TrimVideoLatent), :mod:`.wan_i2v` (WanImageToVideo), :mod:`.wan_vace` (WanVaceToVideo, the VACE transformer), :mod:`.wan22_5b` (Wan 2.2 5B: 48-channel VAE, Wan22ImageToVideoLatent), :mod:`.wan_fun` (WanFunInpaintToVideo), :mod:`.wan_camera` (WanCameraEmbedding, WanCameraImageToVideo), :mod:`.wan_fun_control` (WanFunControlToVideo, Wan22FunControlToVideo; the Fun adapters: :mod:`.wan_fun_adapters`). Flux.2 (dev, Klein):
:mod:`.flux2` (transformer, VAE, Mistral/Qwen3 CLIP, runner), :mod:`.flux2_loading` (files, folders),
:mod:`.flux2_lora`, nodes in :mod:`.flux2_nodes` (EmptyFlux2LatentImage, Flux2Scheduler). FLUX.3: :mod:`.flux3`
(transformer, Qwen3-VL CLIP, runner, files), nodes in :mod:`.flux3_nodes` (Flux3LayoutPrompt, ReferenceMultiLatent). Chroma:
:mod:`.chroma` (transformer, runner, files, folders; T5 CLIP in :mod:`.text`). Lumina 2: :mod:`.lumina2`
(transformer, Gemma 2 CLIP, runner, LoRAs, files, folders, all-in-one files), nodes in :mod:`.lumina2_nodes`
(CLIPTextEncodeLumina2, RenormCFG). :mod:`.t5_options` (T5TokenizerOptions). HiDream I1 / E1: :mod:`.hidream` (transformer, runner), :mod:`.hidream_text`
(four-encoder CLIP, loading), :mod:`.hidream_folder` (diffusers folders), nodes in :mod:`.hidream_nodes` (QuadrupleCLIPLoader, CLIPTextEncodeHiDream). HiDream-O1-Image (pixel-space, on Qwen3-VL): :mod:`.hidream_o1` (network, MODEL, runner), :mod:`.hidream_o1_sequence` (token sequence, positions, reference images), :mod:`.hidream_o1_loading` (all-in-one file, tokenizer CLIP, pixel VAE), nodes in :mod:`.hidream_o1_nodes` (EmptyHiDreamO1LatentImage, ModelNoiseScale, HiDreamO1ReferenceImages, HiDreamO1PatchSeamSmoothing). Flux.1 Redux: :mod:`.redux` (StyleModelLoader, StyleModelApply). Model patches (``models/model_patches``): :mod:`.model_patch` (ModelPatchLoader, the DiffSynth Qwen-Image ControlNet), :mod:`.model_patch_apply` (QwenImageDiffsynthControlnet, ZImageFunControlnet), :mod:`.model_patch_zimage` (the Z-Image Fun ControlNet). :mod:`.uso` (USOStyleReference, USO's SigLIP projector). :mod:`.layered_radiance` (EmptyQwenImageLayeredLatentImage, EmptyChromaRadianceLatentImage, ChromaRadianceOptions). Audio: :mod:`.stable_audio` (Stable Audio Open), :mod:`.ace_step` (ACE-Step 1.5; nodes in :mod:`.ace_step_nodes`), :mod:`.ace_step1` (ACE-Step 1.0's all-in-one file: :mod:`.ace_step1_net` the transformer, :mod:`.ace_step1_vae` the music DCAE and vocoder, :mod:`.ace_step1_lyrics` the lyric tokens), :mod:`.audio_vae` (their Oobleck VAE), :mod:`.audio_loading` (the loaders' hooks). The shared loaders
(UNETLoader, CLIPLoader, CheckpointLoaderSimple, VAELoader) live in the ``diffusion`` family and hand
these files to :mod:`.loading`; sampling is the ``sampling`` family's (KSampler, SamplerCustomAdvanced,
ModelSamplingSD3/Flux).

Registered through the ``nodegraph.nodes`` entry point ``dit`` (``pyproject.toml``), like any pack.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import flux2_nodes, kontext, lumina2_nodes, nodes_flow, qwen_edit, skip_layers, video_latent, wan_i2v
    from . import hidream_nodes, redux, t5_options, text_generate, wan22_5b, wan_fun, wan_vace
    from . import hidream_o1_nodes
    from . import wan_camera, wan_fun_control
    from . import ltx2_guides, ltx2_nodes
    from . import ace_step_nodes
    from . import audio_encoder
    from . import qwen_image21_nodes
    from . import flux2_kv
    from . import flux3_nodes
    from . import wan_ati, wan_move, wan_tracks, wan_tracks_preview
    from . import hunyuan_video15_nodes
    from . import wan_s2v_nodes
    from . import wan_infinitetalk_nodes
    from . import wan_dancer_keyframes, wan_dancer_nodes
    from . import wan_animate2_nodes
    from . import wan_scail_nodes

    from . import layered_radiance, model_patch, model_patch_apply, uso

    return [wan_tracks, wan_tracks_preview, wan_ati, wan_move, model_patch, model_patch_apply, layered_radiance, uso, nodes_flow, kontext, skip_layers, qwen_edit, video_latent, wan_i2v, flux2_nodes, lumina2_nodes,
            t5_options, hidream_nodes, hidream_o1_nodes, redux, wan_vace, wan22_5b, wan_fun, text_generate, ltx2_nodes, ltx2_guides,
            ace_step_nodes, flux2_kv, qwen_image21_nodes, audio_encoder, flux3_nodes,
            wan_camera, wan_fun_control, hunyuan_video15_nodes, wan_s2v_nodes, wan_infinitetalk_nodes, wan_dancer_keyframes, wan_dancer_nodes, wan_scail_nodes, wan_animate2_nodes]
