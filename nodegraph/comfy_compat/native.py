"""Our nodes as classic ComfyUI classes: what a pack gets from ``nodes.SaveImage``, ``nodes.LoraLoader``, …

Packs call core nodes directly (``nodes.CLIPTextEncode().encode(clip, text)``), subclass them
(``class MaskPreview(nodes.SaveImage)`` calling ``self.save_images(...)``) or read them from
``nodes.NODE_CLASS_MAPPINGS``. :func:`classic_class` wraps one of our registered
:class:`~nodegraph.node.Node` classes in a class with ComfyUI's attributes (``INPUT_TYPES``,
``RETURN_TYPES``, ``FUNCTION`` named as ComfyUI names it, ``OUTPUT_NODE``, …) whose function runs our
node inside the pack node that calls it (its folders, device, models and events), or in a standalone
context when called outside a run. ``SaveImage``'s ``save_images`` honours ``self.type = "temp"`` (the
``PreviewImage`` pattern). The classes a pack registers itself are left as they are.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from ..context import NodeContext, RunContext
from ..events import EventBus
from ..node import Node, NodeResult
from ..registry import describe_node
from .current import current_node
from .host import HOST

#: ComfyUI's FUNCTION of its core nodes (nodes.py); other classes use "execute"
FUNCTION_NAMES = {
    "CLIPTextEncode": "encode", "ConditioningCombine": "combine", "ConditioningAverage": "addWeighted",
    "ConditioningConcat": "concat", "ConditioningSetArea": "append", "ConditioningSetAreaPercentage": "append",
    "ConditioningSetAreaStrength": "append", "ConditioningSetMask": "append", "ConditioningZeroOut": "zero_out",
    "ConditioningSetTimestepRange": "set_range", "VAEDecode": "decode", "VAEDecodeTiled": "decode",
    "VAEEncode": "encode", "VAEEncodeTiled": "encode", "VAEEncodeForInpaint": "encode",
    "InpaintModelConditioning": "encode", "SaveLatent": "save", "LoadLatent": "load",
    "CheckpointLoader": "load_checkpoint", "CheckpointLoaderSimple": "load_checkpoint",
    "DiffusersLoader": "load_checkpoint", "unCLIPCheckpointLoader": "load_checkpoint",
    "CLIPSetLastLayer": "set_last_layer", "LoraLoader": "load_lora", "LoraLoaderModelOnly": "load_lora_model_only",
    "VAELoader": "load_vae", "ControlNetLoader": "load_controlnet", "DiffControlNetLoader": "load_controlnet",
    "ControlNetApply": "apply_controlnet", "ControlNetApplyAdvanced": "apply_controlnet", "UNETLoader": "load_unet",
    "CLIPLoader": "load_clip", "DualCLIPLoader": "load_clip", "CLIPVisionLoader": "load_clip",
    "CLIPVisionEncode": "encode", "StyleModelLoader": "load_style_model", "StyleModelApply": "apply_stylemodel",
    "unCLIPConditioning": "apply_adm", "GLIGENLoader": "load_gligen", "GLIGENTextBoxApply": "append",
    "EmptyLatentImage": "generate", "LatentFromBatch": "frombatch", "RepeatLatentBatch": "repeat",
    "LatentUpscale": "upscale", "LatentUpscaleBy": "upscale", "LatentRotate": "rotate", "LatentFlip": "flip",
    "LatentComposite": "composite", "LatentBlend": "blend", "LatentCrop": "crop", "SetLatentNoiseMask": "set_mask",
    "KSampler": "sample", "KSamplerAdvanced": "sample", "SaveImage": "save_images", "PreviewImage": "save_images",
    "LoadImage": "load_image", "LoadImageMask": "load_image", "LoadImageOutput": "load_image",
    "ImageScale": "upscale", "ImageScaleBy": "upscale", "ImageInvert": "invert", "ImageBatch": "batch",
    "EmptyImage": "generate", "ImagePadForOutpaint": "expand_image",
}
#: classes whose objects carry ComfyUI's image-saver attributes (``type``, ``output_dir``, …)
SAVERS = {"SaveImage": "output", "PreviewImage": "temp"}


class NativeCallError(RuntimeError):
    """A pack called one of our nodes in a way it cannot run."""


def node_context(class_type: str) -> NodeContext:
    """The context our node runs in when a pack calls it: the calling pack node's run, else a
    standalone one on the bound folders and device (no events, no models service)."""
    ctx = current_node()
    if ctx is not None:
        return NodeContext(ctx.run, ctx.node_id, class_type, ctx.display_node)
    run = RunContext("", EventBus(), threading.Event(), HOST.paths, HOST.device)
    return NodeContext(run, "", class_type)


def run_native(cls: type[Node], class_type: str, kwargs: dict[str, Any]) -> Any:
    """Run our node ``cls`` with ComfyUI-style keyword arguments; a tuple, or ``{"ui", "result"}``."""
    params = inspect.signature(cls.execute).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    call = {}
    for name, spec in cls.INPUTS.items():
        if name in kwargs:
            call[name] = kwargs[name]
        elif spec.has_default:
            call[name] = spec.default
    for name in cls.hidden:
        if name in kwargs:
            call[name] = kwargs[name]
    unknown = [k for k in kwargs if k not in call and k not in cls.INPUTS and k not in cls.hidden]
    if unknown and not takes_any:
        raise NativeCallError(f"{class_type} has no input {', '.join(repr(u) for u in unknown)}; its inputs "
                              f"are {', '.join(cls.INPUTS) or 'none'}")
    node = cls(node_context(class_type))
    result = node.execute(**call)
    if isinstance(result, NodeResult):
        if result.expand is not None:
            raise NativeCallError(f"{class_type} expands into a sub-graph; a pack cannot call it directly")
        if result.ui:
            return {"ui": result.ui, "result": tuple(result.outputs)}
        return tuple(result.outputs)
    return result


def classic_class(class_type: str, cls: type[Node]) -> type:
    """A ComfyUI-style class for our node ``cls`` (registered as ``class_type``)."""
    function = FUNCTION_NAMES.get(class_type, "execute")
    saver = SAVERS.get(class_type)

    def input_types(klass) -> dict:
        info = describe_node(class_type, cls, paths=HOST.current_paths())
        return {section: {k: tuple(v) for k, v in entries.items()} for section, entries in info["input"].items()}

    def call(self, **kwargs: Any) -> Any:
        target, name = cls, class_type
        if saver is not None and getattr(self, "type", saver) != SAVERS[class_type]:
            name = "PreviewImage" if getattr(self, "type", "output") == "temp" else "SaveImage"
            target = HOST.registry.get(name) if HOST.registry is not None else None
            if target is None:
                raise NativeCallError(f"{name} is not registered")
            if name == "PreviewImage":
                kwargs.pop("filename_prefix", None)
        return run_native(target, name, kwargs)

    def positional(self, *args: Any, **kwargs: Any) -> Any:
        names = list(cls.INPUTS) + [h for h in cls.hidden]
        if len(args) > len(names):
            raise NativeCallError(f"{class_type}.{function}() takes at most {len(names)} positional inputs")
        kwargs.update(zip(names, args))
        return call(self, **kwargs)

    def init(self) -> None:
        if saver is not None:
            self.output_dir = str(HOST.current_paths().temp_dir if saver == "temp" else HOST.current_paths().output_dir)
            self.type = saver
            self.prefix_append = ""
            self.compress_level = 1 if saver == "temp" else 4

    namespace = {
        "__module__": "nodes", "__doc__": cls.description or None, "__init__": init,
        "INPUT_TYPES": classmethod(input_types),
        "RETURN_TYPES": tuple(o.type for o in cls.outputs),
        "RETURN_NAMES": tuple(o.display_name for o in cls.outputs),
        "OUTPUT_IS_LIST": tuple(o.is_list for o in cls.outputs),
        "FUNCTION": function, "CATEGORY": cls.category, "OUTPUT_NODE": cls.output_node,
        "DESCRIPTION": cls.description, "INPUT_IS_LIST": cls.takes_lists,
        "nodegraph_class": cls, function: positional,
    }
    return type(class_type, (), namespace)
