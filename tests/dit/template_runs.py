"""Graph pieces the DiT suites share: ComfyUI's copied model templates (tests/data/comfy_templates_dit, MIT)
made small enough for a test and run, the image or audio file a template saved, VAEDecodeAudio's loudness
scaling for the audio references, the text-to-image tail of the parity graphs and their ControlNet step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nodegraph.workflow.loader import load_workflow_data

DIT_TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "comfy_templates_dit"


def template_api(name: str, registry) -> dict:
    """Template ``name``'s API prompt."""
    return template_api_of(DIT_TEMPLATES / f"{name}.json", registry)


def package_template_api(name: str, registry) -> dict:
    """The installed templates package's template ``name``: it must check clean (every node type known, no
    errors but missing model files); its API prompt."""
    from tests.helpers.package_templates import check_templates, package_templates

    path = package_templates(lambda n: n == f"{name}.json")[0]
    assert check_templates([path], registry).clean == [path.name]
    return template_api_of(path, registry)


def template_api_of(path: Path, registry) -> dict:
    """The API prompt of the UI workflow file at ``path``."""
    return load_workflow_data(json.loads(path.read_text()), registry).api


def set_inputs(api: dict, inputs: dict[str, dict]) -> None:
    """Sets ``inputs[class_type]`` on each node of ``api`` of that type."""
    for n in api.values():
        n["inputs"].update(inputs.get(n["class_type"], {}))


def set_primitive_ints(api: dict, values: dict[int, int]) -> None:
    """Sets each PrimitiveInt of ``api`` whose value is a key of ``values`` to the value it maps to (the
    templates' size, length and rate primitives)."""
    for n in api.values():
        if n["class_type"] == "PrimitiveInt" and n["inputs"].get("value") in values:
            n["inputs"]["value"] = values[n["inputs"]["value"]]


def run_template(engine, api: dict, inputs: dict[str, dict]):
    """Runs ``api`` with ``inputs[class_type]`` set on each node of that type; every node must run. The result."""
    set_inputs(api, inputs)
    result = engine.run(api).raise_for_status()
    assert all(n in result.executed for n in api)
    return result


def fewer_sampler_steps(api: dict, steps: int, switch: tuple[int, int] = (10, 2)) -> None:
    """Sets the steps of each KSampler / KSamplerAdvanced of ``api`` to ``steps`` and moves the two-expert switch
    (a KSamplerAdvanced's ``start_at_step`` / ``end_at_step`` at ``switch[0]``) to ``switch[1]``."""
    for n in api.values():
        if n["class_type"] in ("KSampler", "KSamplerAdvanced"):
            n["inputs"]["steps"] = steps
            for key in ("start_at_step", "end_at_step"):
                if n["inputs"].get(key) == switch[0]:
                    n["inputs"][key] = switch[1]


def small_template(name: str, registry, steps_node: str, steps: int = 4) -> dict:
    """Template ``name``'s API prompt with its EmptySD3LatentImage made 64×64 and ``steps_node``'s steps
    set to ``steps``."""
    api = template_api(name, registry)
    for n in api.values():
        if n["class_type"] == "EmptySD3LatentImage":
            n["inputs"].update(width=64, height=64)
        if n["class_type"] == steps_node:
            n["inputs"].update(steps=steps)
    return api


def last_saved_image(output_dir: Path) -> torch.Tensor:
    """The last (by name) PNG under ``output_dir`` as an H×W×C float tensor in [0, 1]."""
    outputs = sorted(output_dir.rglob("*.png"))
    assert outputs, "SaveImage wrote no file"
    return torch.from_numpy(np.array(Image.open(outputs[-1]))).float() / 255


def saved_audio(output_dir: Path, extension: str) -> tuple[int, int, int]:
    """The sample rate, channels and decoded sample count of the one ``*.extension`` file under
    ``output_dir``."""
    import av

    saved = list(output_dir.rglob(f"*.{extension}"))
    assert len(saved) == 1
    with av.open(str(saved[0])) as container:
        stream = container.streams.audio[0]
        return stream.rate, stream.channels, sum(f.samples for f in container.decode(audio=0))


def saved_video_frames(output_dir: Path) -> int:
    """The decoded frame count of the one ``*.mp4`` file under ``output_dir``."""
    import av

    saved = list(output_dir.rglob("*.mp4"))
    assert len(saved) == 1
    with av.open(str(saved[0])) as container:
        return sum(1 for _ in container.decode(video=0))


def comfy_audio_scale(audio: torch.Tensor) -> torch.Tensor:
    """``audio`` ``[B, C, T]`` scaled as ComfyUI's VAEDecodeAudio does: divided by 5 × its std where that is
    above 1."""
    std = torch.std(audio, dim=[1, 2], keepdim=True) * 5.0
    std[std < 1.0] = 1.0
    return audio / std


def sample_and_preview(g, model, positive, negative, vae, seed: int, steps: int, cfg: float) -> None:
    """The text-to-image tail of the parity graphs: a 64×64 EmptySD3LatentImage, KSampler (euler, simple,
    denoise 1) and VAEDecode into PreviewAny, whose value the run reports as ``out``."""
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    samples = g.node("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                     scheduler="simple", positive=positive, negative=negative, latent_image=lat, denoise=1.0).out(0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=samples, vae=vae))


def apply_controlnet(g, positive, negative, vae, controlnet: str, node: str, image: str, mask: str,
                     strength: float) -> tuple:
    """ControlNetLoader ``controlnet`` on LoadImage ``image`` through ControlNetInpaintingAliMamaApply (``node``
    ``"inpaint"``, LoadImageMask ``mask``'s red channel as the mask) or ControlNetApplyAdvanced, over the whole
    schedule; the positive and negative outputs."""
    net = g.node("ControlNetLoader", control_net_name=controlnet).out(0)
    img = g.node("LoadImage", image=image).out(0)
    if node == "inpaint":
        m = g.node("LoadImageMask", image=mask, channel="red").out(0)
        apply = g.node("ControlNetInpaintingAliMamaApply", positive=positive, negative=negative, control_net=net,
                       vae=vae, image=img, mask=m, strength=strength, start_percent=0.0, end_percent=1.0)
    else:
        apply = g.node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=net, vae=vae,
                       image=img, strength=strength, start_percent=0.0, end_percent=1.0)
    return apply.out(0), apply.out(1)
