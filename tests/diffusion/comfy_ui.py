"""Writes workflows in ComfyUI's canvas (UI, schema 0.4) format, as the ComfyUI frontend saves them.

A workflow is described as ``[(id, type, widgets_values, {input: (src_id, slot)})]``; node input slots
(sockets first, then linked widgets with ``widget: {name}``), outputs with their link ids, the link
table and PrimitiveNodes are produced like the frontend does. Used to write ``workflows/*.ui.json``
and the UI fixtures of the tests.
"""

from __future__ import annotations

from typing import Any

from nodegraph.registry import default_registry

PRIMITIVE = "PrimitiveNode"


def ui_workflow(spec: list[tuple[int, str, list, dict]], registry=None, titles: dict[int, str] | None = None) -> dict:
    registry = registry or default_registry(packs=False)
    links: list[list] = []
    nodes: dict[int, dict] = {}
    types = {nid: t for nid, t, _, _ in spec}
    out_links: dict[tuple[int, int], list[int]] = {}
    in_slots: dict[int, list[dict]] = {}
    prim_targets: dict[int, tuple[str, str]] = {}
    for nid, type_, widgets, conns in spec:
        if type_ == PRIMITIVE:
            continue
        cls = registry[type_]
        slots = []
        for name, inp in cls.INPUTS.items():
            if not inp.is_widget:
                slots.append({"name": name, "type": inp.type, "link": None})
        for name, inp in cls.INPUTS.items():
            if inp.is_widget and name in conns:
                t = "COMBO" if inp.type == "COMBO" else inp.type
                slots.append({"name": name, "type": t, "widget": {"name": name}, "link": None})
        for name, (src, slot) in conns.items():
            link_id = len(links) + 1
            src_type = types[src]
            if src_type == PRIMITIVE:
                t = cls.INPUTS[name].type
                prim_targets[src] = (name, t)
            else:
                t = registry[src_type].outputs[slot].type
            target_slot = next(i for i, s in enumerate(slots) if s["name"] == name)
            slots[target_slot]["link"] = link_id
            links.append([link_id, src, slot, nid, target_slot, t])
            out_links.setdefault((src, slot), []).append(link_id)
        in_slots[nid] = slots
    for order, (nid, type_, widgets, conns) in enumerate(spec):
        node: dict[str, Any] = {"id": nid, "type": type_, "pos": [100 + 300 * (order % 5), 100 + 250 * (order // 5)],
                                "size": [300, 120], "flags": {}, "order": order, "mode": 0}
        if type_ == PRIMITIVE:
            name, t = prim_targets[nid]
            node["outputs"] = [{"name": t, "type": t, "links": out_links.get((nid, 0), []),
                                "widget": {"name": name}, "slot_index": 0}]
            node["title"] = name
            node["properties"] = {"Run widget replace on values": False}
        else:
            cls = registry[type_]
            node["inputs"] = in_slots[nid]
            node["outputs"] = [{"name": o.display_name, "type": o.type, "links": out_links.get((nid, i)) or None,
                                "slot_index": i} for i, o in enumerate(cls.outputs)]
            node["properties"] = {"Node name for S&R": type_}
        node["widgets_values"] = widgets
        if titles and nid in titles:
            node["title"] = titles[nid]
        nodes[nid] = node
    return {"last_node_id": max(nodes), "last_link_id": len(links), "nodes": list(nodes.values()), "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}


def ksampler(seed=156680208700286, steps=20, cfg=8.0, sampler="euler", scheduler="normal", denoise=1.0):
    return [seed, "randomize", steps, cfg, sampler, scheduler, denoise]


def txt2img_spec(ckpt: str, steps=20, width=512, height=512, positive="beautiful scenery nature glass bottle landscape, purple galaxy bottle,",
                 negative="text, watermark") -> list:
    return [
        (4, "CheckpointLoaderSimple", [ckpt], {}),
        (5, "EmptyLatentImage", [width, height, 1], {}),
        (6, "CLIPTextEncode", [positive], {"clip": (4, 1)}),
        (7, "CLIPTextEncode", [negative], {"clip": (4, 1)}),
        (3, "KSampler", ksampler(steps=steps), {"model": (4, 0), "positive": (6, 0), "negative": (7, 0),
                                                "latent_image": (5, 0)}),
        (8, "VAEDecode", [], {"samples": (3, 0), "vae": (4, 2)}),
        (9, "SaveImage", ["ComfyUI"], {"images": (8, 0)}),
    ]


def img2img_spec(ckpt: str, image="example.png", steps=20) -> list:
    return [
        (14, "CheckpointLoaderSimple", [ckpt], {}),
        (10, "LoadImage", [image, "image"], {}),
        (12, "VAEEncode", [], {"pixels": (10, 0), "vae": (14, 2)}),
        (6, "CLIPTextEncode", ["photograph of victorian woman with wings, sky clouds, meadow grass"], {"clip": (14, 1)}),
        (7, "CLIPTextEncode", ["watermark, text"], {"clip": (14, 1)}),
        (3, "KSampler", ksampler(steps=steps, denoise=0.87, sampler="dpmpp_2m"),
         {"model": (14, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (12, 0)}),
        (8, "VAEDecode", [], {"samples": (3, 0), "vae": (14, 2)}),
        (9, "SaveImage", ["ComfyUI"], {"images": (8, 0)}),
    ]


def inpaint_spec(ckpt: str, image="yosemite_inpaint_example.png", steps=20) -> list:
    return [
        (29, "CheckpointLoaderSimple", [ckpt], {}),
        (20, "LoadImage", [image, "image"], {}),
        (26, "VAEEncodeForInpaint", [6], {"pixels": (20, 0), "vae": (29, 2), "mask": (20, 1)}),
        (6, "CLIPTextEncode", ["closeup photograph of maine coon (cat:1.2) in the yosemite national park mountains nature"],
         {"clip": (29, 1)}),
        (7, "CLIPTextEncode", ["watermark, text"], {"clip": (29, 1)}),
        (3, "KSampler", ksampler(steps=steps, cfg=8.0, sampler="uni_pc_bh2"),
         {"model": (29, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (26, 0)}),
        (8, "VAEDecode", [], {"samples": (3, 0), "vae": (29, 2)}),
        (9, "SaveImage", ["ComfyUI"], {"images": (8, 0)}),
    ]


def hires_fix_spec(ckpt: str, steps=12, width=512, height=512) -> list:
    return [
        (16, "CheckpointLoaderSimple", [ckpt], {}),
        (5, "EmptyLatentImage", [width, height, 1], {}),
        (6, "CLIPTextEncode", ["masterpiece HDR victorian portrait painting of woman, blonde hair, mountain nature, blue sky"],
         {"clip": (16, 1)}),
        (7, "CLIPTextEncode", ["bad hands, text, watermark"], {"clip": (16, 1)}),
        (3, "KSampler", ksampler(steps=steps, cfg=8.0, sampler="dpmpp_sde" if False else "dpmpp_2m", scheduler="normal"),
         {"model": (16, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (5, 0)}),
        (10, "LatentUpscale", ["nearest-exact", width * 3 // 2, height * 3 // 2, "disabled"], {"samples": (3, 0)}),
        (11, "KSampler", ksampler(seed=469771404043268, steps=steps, cfg=8.0, sampler="dpmpp_2m", scheduler="simple",
                                  denoise=0.5),
         {"model": (16, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (10, 0)}),
        (13, "VAEDecode", [], {"samples": (11, 0), "vae": (16, 2)}),
        (9, "SaveImage", ["ComfyUI"], {"images": (13, 0)}),
    ]


def lora_spec(ckpt: str, loras: list[tuple[str, float, float]], steps=20) -> list:
    spec = [(4, "CheckpointLoaderSimple", [ckpt], {})]
    model, clip = (4, 0), (4, 1)
    for i, (name, sm, sc) in enumerate(loras):
        nid = 10 + i
        spec.append((nid, "LoraLoader", [name, sm, sc], {"model": model, "clip": clip}))
        model, clip = (nid, 0), (nid, 1)
    spec += [
        (5, "EmptyLatentImage", [512, 512, 1], {}),
        (6, "CLIPTextEncode", ["masterpiece best quality girl, lora style"], {"clip": clip}),
        (7, "CLIPTextEncode", ["bad hands"], {"clip": clip}),
        (3, "KSampler", ksampler(steps=steps), {"model": model, "positive": (6, 0), "negative": (7, 0),
                                                "latent_image": (5, 0)}),
        (8, "VAEDecode", [], {"samples": (3, 0), "vae": (4, 2)}),
        (9, "SaveImage", ["ComfyUI"], {"images": (8, 0)}),
    ]
    return spec


def area_spec(ckpt: str, steps=20, width=704, height=384) -> list:
    return [
        (4, "CheckpointLoaderSimple", [ckpt], {}),
        (5, "EmptyLatentImage", [width, height, 1], {}),
        (6, "CLIPTextEncode", ["a beautiful landscape, night sky"], {"clip": (4, 1)}),
        (7, "CLIPTextEncode", ["bad quality"], {"clip": (4, 1)}),
        (11, "CLIPTextEncode", ["(snowy mountain:1.2), clouds"], {"clip": (4, 1)}),
        (12, "ConditioningSetArea", [width // 2 // 8 * 8, height, 0, 0, 1.0], {"conditioning": (11, 0)}),
        (13, "CLIPTextEncode", ["a [dark] forest lake"], {"clip": (4, 1)}),
        (14, "ConditioningSetArea", [width // 2 // 8 * 8, height, width // 2 // 8 * 8, 0, 0.8], {"conditioning": (13, 0)}),
        (15, "ConditioningCombine", [], {"conditioning_1": (6, 0), "conditioning_2": (12, 0)}),
        (16, "ConditioningCombine", [], {"conditioning_1": (15, 0), "conditioning_2": (14, 0)}),
        (3, "KSampler", ksampler(steps=steps, cfg=7.0), {"model": (4, 0), "positive": (16, 0), "negative": (7, 0),
                                                         "latent_image": (5, 0)}),
        (8, "VAEDecode", [], {"samples": (3, 0), "vae": (4, 2)}),
        (9, "SaveImage", ["ComfyUI"], {"images": (8, 0)}),
    ]


def embedding_spec(ckpt: str, embedding: str, steps=20) -> list:
    spec = txt2img_spec(ckpt, steps=steps, positive=f"a photo of a fox, embedding:{embedding}",
                        negative="embedding:" + embedding + ", text")
    return spec


def sdxl_refiner_spec(base: str, refiner: str, steps=25, switch=20, width=1024, height=1024) -> list:
    return [
        (4, "CheckpointLoaderSimple", [base], {}),
        (12, "CheckpointLoaderSimple", [refiner], {}),
        (5, "EmptyLatentImage", [width, height, 1], {}),
        (45, PRIMITIVE, [steps, "fixed"], {}),
        (46, PRIMITIVE, [switch, "fixed"], {}),
        (6, "CLIPTextEncode", ["evening sunset scenery blue sky nature, glass bottle with a galaxy in it"], {"clip": (4, 1)}),
        (7, "CLIPTextEncode", ["text, watermark"], {"clip": (4, 1)}),
        (15, "CLIPTextEncode", ["evening sunset scenery blue sky nature, glass bottle with a galaxy in it"], {"clip": (12, 1)}),
        (16, "CLIPTextEncode", ["text, watermark"], {"clip": (12, 1)}),
        (10, "KSamplerAdvanced", ["enable", 721897303308196, "randomize", steps, 8, "euler", "normal", 0, switch, "enable"],
         {"model": (4, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (5, 0),
          "steps": (45, 0), "end_at_step": (46, 0)}),
        (11, "KSamplerAdvanced", ["disable", 0, "fixed", steps, 8, "euler", "normal", switch, 10000, "disable"],
         {"model": (12, 0), "positive": (15, 0), "negative": (16, 0), "latent_image": (10, 0),
          "steps": (45, 0), "start_at_step": (46, 0)}),
        (17, "VAEDecode", [], {"samples": (11, 0), "vae": (12, 2)}),
        (19, "SaveImage", ["ComfyUI"], {"images": (17, 0)}),
    ]
