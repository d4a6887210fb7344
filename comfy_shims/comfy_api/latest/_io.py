"""ComfyUI's V3 node schema (``comfy_api.latest.io``), nodegraph's version.

A V3 node is a :class:`ComfyNode` subclass with ``define_schema`` (a :class:`Schema` of ``io.*``
inputs and outputs) and a classmethod ``execute`` returning a :class:`NodeOutput`. As in ComfyUI, a
V3 class also answers the classic protocol (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``,
``OUTPUT_NODE``, ``IS_CHANGED`` for ``fingerprint_inputs``, ``VALIDATE_INPUTS`` for
``validate_inputs`` …), so nodegraph runs it through the same adapter as classic nodes
(``nodegraph.comfy_compat.classic``): same validation, cache, lists, lazy inputs and events.
``execute`` sees the hidden values as ``cls.hidden`` (a per-call copy of the class, as ComfyUI's).

Supported: the widget types (``Boolean``, ``Int``, ``Float``, ``String``, ``Combo``, ``MultiCombo``),
every socket type ComfyUI names (``Image``, ``Mask``, ``Latent``, ``Model`` …, ``AnyType``),
``Custom(io_type)``, ``MultiType``, ``Hidden``, ``NodeOutput`` (``ui``, ``expand``,
``block_execution``), ``fingerprint_inputs``, ``validate_inputs``, ``check_lazy_status``, and the
dynamic inputs ``Autogrow``, ``DynamicCombo``
(flat ``<id>.<part>`` inputs in prompts, one dict in ``execute``) and ``MatchType`` (outputs typed ``*``).
Options, fields and socket types of newer ComfyUI versions are accepted (see each class).
"""

from __future__ import annotations

import copy
import inspect
from abc import ABCMeta
from collections import Counter
from enum import Enum
from typing import Any, Callable

from nodegraph.blocking import ExecutionBlocker


def prune_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class RemoteOptions:
    def __init__(self, route: str, refresh_button: bool, control_after_refresh: str = "first",
                 timeout: int | None = None, max_retries: int | None = None, refresh: int | None = None) -> None:
        self.route, self.refresh_button, self.control_after_refresh = route, refresh_button, control_after_refresh
        self.timeout, self.max_retries, self.refresh = timeout, max_retries, refresh

    def as_dict(self) -> dict:
        return prune_dict({"route": self.route, "refresh_button": self.refresh_button,
                           "control_after_refresh": self.control_after_refresh, "timeout": self.timeout,
                           "max_retries": self.max_retries, "refresh": self.refresh})


class _StringIOType(str):
    """A type name that compares "not equal" only when the types cannot connect (``*``, unions)."""

    def __ne__(self, value: object) -> bool:
        if self == "*" or value == "*":
            return False
        if not isinstance(value, str):
            return True
        a, b = frozenset(self.split(",")), frozenset(value.split(","))
        return not (b.issubset(a) or a.issubset(b))

    __hash__ = str.__hash__


# -- inputs and outputs ---------------------------------------------------------------------------

class _IO_V3:
    Parent: Any = None

    @property
    def io_type(self) -> Any:
        return self.Parent.io_type

    @property
    def Type(self) -> Any:
        return self.Parent.Type


class Input(_IO_V3):
    """Options a newer ComfyUI added (``advanced=…``) are kept as they are, in ``/object_info``."""

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, extra_dict: dict | None = None, **newer: Any) -> None:
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = {**(extra_dict or {}), **newer}

    def as_dict(self) -> dict:
        return prune_dict({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                           "lazy": self.lazy}) | prune_dict(self.extra_dict)

    def get_io_type(self) -> Any:
        return _StringIOType(self.io_type)


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: Any = None, socketless: bool | None = None,
                 widget_type: str | None = None, force_input: bool | None = None, extra_dict: dict | None = None,
                 **newer: Any) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **newer)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self) -> dict:
        return super().as_dict() | prune_dict({"default": self.default, "socketless": self.socketless,
                                               "widgetType": self.widget_type, "forceInput": self.force_input})

    def get_io_type(self) -> Any:
        return self.widget_type if self.widget_type is not None else super().get_io_type()


class Output(_IO_V3):
    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False, **newer: Any) -> None:
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    def as_dict(self) -> dict:
        return prune_dict({"display_name": self.display_name, "tooltip": self.tooltip,
                           "is_output_list": self.is_output_list})

    def get_io_type(self) -> Any:
        return self.io_type


class _ComfyType:
    Type: Any = Any
    io_type: Any = None


class ComfyTypeI(_ComfyType):
    class Input(Input):
        ...


class ComfyTypeIO(ComfyTypeI):
    class Output(Output):
        ...


def comfytype(io_type: str, **kwargs: Any) -> Callable[[type], type]:
    """Bind ``io_type`` to a ComfyType class and to its own ``Input`` / ``Output`` classes."""
    def decorate(cls: type) -> type:
        if not issubclass(cls, _ComfyType):
            cls = type(cls.__name__, (cls, ComfyTypeIO), {k: v for k, v in cls.__dict__.items()
                                                         if k not in ("__dict__", "__weakref__")})
        for part in ("Input", "Output"):
            inner = getattr(cls, part, None)
            if inner is not None:  # a copy per type, so the parent's Input keeps its own Parent
                setattr(cls, part, type(inner.__name__, (inner,), {"__qualname__": f"{cls.__name__}.{part}"}))
                getattr(cls, part).Parent = cls
        cls.io_type = _StringIOType(io_type)
        return cls
    return decorate


def Custom(io_type: str) -> type:
    """A ComfyType for a custom type name."""
    @comfytype(io_type=io_type)
    class CustomComfyType(ComfyTypeIO):
        ...
    return CustomComfyType


@comfytype(io_type="BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, default: bool | None = None, label_on: str | None = None,
                     label_off: str | None = None, socketless: bool | None = None, force_input: bool | None = None,
                     **newer: Any) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input, **newer)
            self.label_on, self.label_off = label_on, label_off

        def as_dict(self) -> dict:
            return super().as_dict() | prune_dict({"label_on": self.label_on, "label_off": self.label_off})


@comfytype(io_type="INT")
class Int(ComfyTypeIO):
    Type = int

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, default: int | None = None, min: int | None = None, max: int | None = None,
                     step: int | None = None, control_after_generate: bool | None = None,
                     display_mode: NumberDisplay | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, **newer: Any) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input, **newer)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate, self.display_mode = control_after_generate, display_mode

        def as_dict(self) -> dict:
            return super().as_dict() | prune_dict({
                "min": self.min, "max": self.max, "step": self.step,
                "control_after_generate": self.control_after_generate,
                "display": self.display_mode.value if self.display_mode else None})


@comfytype(io_type="FLOAT")
class Float(ComfyTypeIO):
    Type = float

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, default: float | None = None, min: float | None = None,
                     max: float | None = None, step: float | None = None, round: float | None = None,
                     display_mode: NumberDisplay | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, **newer: Any) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input, **newer)
            self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode

        def as_dict(self) -> dict:
            return super().as_dict() | prune_dict({
                "min": self.min, "max": self.max, "step": self.step, "round": self.round,
                "display": self.display_mode.value if self.display_mode else None})


@comfytype(io_type="STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, multiline: bool = False, placeholder: str | None = None,
                     default: str | None = None, dynamic_prompts: bool | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, **newer: Any) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input, **newer)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

        def as_dict(self) -> dict:
            return super().as_dict() | prune_dict({"multiline": self.multiline, "placeholder": self.placeholder,
                                                   "dynamicPrompts": self.dynamic_prompts})


@comfytype(io_type="COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, options: Any = None, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: Any = None,
                     control_after_generate: bool | None = None, upload: UploadType | None = None,
                     image_folder: FolderType | None = None, remote: RemoteOptions | None = None,
                     socketless: bool | None = None, **newer: Any) -> None:
            if isinstance(options, type) and issubclass(options, Enum):
                options = [v.value for v in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, **newer)
            self.multiselect = False
            self.options = options
            self.control_after_generate, self.upload = control_after_generate, upload
            self.image_folder, self.remote = image_folder, remote

        def as_dict(self) -> dict:
            return super().as_dict() | prune_dict({
                "multiselect": self.multiselect, "options": self.options,
                "control_after_generate": self.control_after_generate,
                **({self.upload.value: True} if self.upload is not None else {}),
                "image_folder": self.image_folder.value if self.image_folder else None,
                "remote": self.remote.as_dict() if self.remote else None})

    class Output(Output):
        def __init__(self, id: str | None = None, display_name: str | None = None, options: list | None = None,
                     tooltip: str | None = None, is_output_list: bool = False, **newer: Any) -> None:
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = options if options is not None else []

        @property
        def io_type(self) -> Any:
            return self.options


@comfytype(io_type="COMBO")
class MultiCombo(ComfyTypeI):
    Type = list

    class Input(Combo.Input):
        def __init__(self, id: str, options: list, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: list | None = None,
                     placeholder: str | None = None, chip: bool | None = None,
                     control_after_generate: bool | None = None, socketless: bool | None = None, **newer: Any) -> None:
            super().__init__(id, options, display_name, optional, tooltip, lazy, default, control_after_generate,
                             socketless=socketless, **newer)
            self.multiselect = True
            self.placeholder, self.chip = placeholder, chip

        def as_dict(self) -> dict:
            return super().as_dict() | prune_dict({"multi_select": self.multiselect, "placeholder": self.placeholder,
                                                   "chip": self.chip})


@comfytype(io_type="WEBCAM")
class Webcam(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, default: str | None = None, socketless: bool | None = None,
                     **newer: Any) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, **newer)


def _socket_type(name: str, io_type: str) -> type:
    return comfytype(io_type=io_type)(type(name, (ComfyTypeIO,), {"__module__": __name__, "__qualname__": name}))


#: ComfyUI's socket-only types, by class name
SOCKET_TYPES = {
    "Image": "IMAGE", "Mask": "MASK", "Latent": "LATENT", "Conditioning": "CONDITIONING", "Sampler": "SAMPLER",
    "Sigmas": "SIGMAS", "Noise": "NOISE", "Guider": "GUIDER", "Clip": "CLIP", "ControlNet": "CONTROL_NET",
    "Vae": "VAE", "Model": "MODEL", "ClipVision": "CLIP_VISION", "ClipVisionOutput": "CLIP_VISION_OUTPUT",
    "StyleModel": "STYLE_MODEL", "Gligen": "GLIGEN", "UpscaleModel": "UPSCALE_MODEL", "Audio": "AUDIO",
    "Video": "VIDEO", "SVG": "SVG", "LoraModel": "LORA_MODEL", "LossMap": "LOSS_MAP", "Voxel": "VOXEL",
    "Mesh": "MESH", "Hooks": "HOOKS", "HookKeyframes": "HOOK_KEYFRAMES", "TimestepsRange": "TIMESTEPS_RANGE",
    "LatentOperation": "LATENT_OPERATION", "FlowControl": "FLOW_CONTROL", "Accumulation": "ACCUMULATION",
    "Load3DCamera": "LOAD3D_CAMERA", "Load3D": "LOAD_3D", "Load3DAnimation": "LOAD_3D_ANIMATION",
    "Photomaker": "PHOTOMAKER", "Point": "POINT", "FaceAnalysis": "FACE_ANALYSIS", "BBOX": "BBOX", "SEGS": "SEGS",
    "AnyType": "*", "MODEL_PATCH": "MODEL_PATCH", "AudioEncoder": "AUDIO_ENCODER",
    "AudioEncoderOutput": "AUDIO_ENCODER_OUTPUT", "WanCameraEmbedding": "WAN_CAMERA_EMBEDDING",
}
for _name, _io_type in SOCKET_TYPES.items():
    globals()[_name] = _socket_type(_name, _io_type)


@comfytype(io_type="COMFY_MULTITYPED_V3")
class MultiType:
    Type = Any

    class Input(Input):
        """An input of several types; ``id`` may be a widget input whose widget it keeps."""

        def __init__(self, id: Any, types: list, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, extra_dict: dict | None = None,
                     **newer: Any) -> None:
            self.input_override = None
            if isinstance(id, Input):
                self.input_override = copy.copy(id)
                optional = id.optional if id.optional is True else optional
                tooltip = id.tooltip if id.tooltip is not None else tooltip
                display_name = id.display_name if id.display_name is not None else display_name
                lazy = id.lazy if id.lazy is not None else lazy
                id = id.id
                if isinstance(self.input_override, WidgetInput):
                    self.input_override.widget_type = self.input_override.get_io_type()
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **newer)
            self._io_types = types

        def get_io_type(self) -> Any:
            names = [(t if inspect.isclass(t) else type(t)).io_type for t in self._io_types]
            if self.input_override is not None:
                names.insert(0, self.input_override.get_io_type())
            return _StringIOType(",".join(dict.fromkeys(str(n) for n in names)))

        def as_dict(self) -> dict:
            if self.input_override is not None:
                return self.input_override.as_dict() | super().as_dict()
            return super().as_dict()


# -- the dynamic inputs ---------------------------------------------------------------------------
# In an API prompt their parts are flat inputs named ``<group>.<part>`` (``variables.a``,
# ``method.strength``); ``execute`` receives the group as one dict, as ComfyUI gives it.

def _type_names(types: Any) -> list[str]:
    return [str((t if inspect.isclass(t) else type(t)).io_type) for t in (types if isinstance(types, (list, tuple)) else [types])]


class MatchType:
    """An input whose type is one of a template's allowed types, and an output of the type it got.
    Here the input takes any of the allowed types and the output is typed ``*`` (the canvas resolves
    the concrete type; nodegraph's links accept it anywhere)."""

    Type = Any
    io_type = "COMFY_MATCHTYPE_V3"

    class Template:
        def __init__(self, template_id: str, allowed_types: Any = None) -> None:
            self.template_id = template_id
            self.allowed_types = allowed_types if allowed_types is not None else [AnyType]  # noqa: F821

        def as_dict(self) -> dict:
            return {"template_id": self.template_id, "allowed_types": ",".join(_type_names(self.allowed_types))}

    class Input(Input):
        def __init__(self, id: str, template: "MatchType.Template", display_name: str | None = None,
                     optional: bool = False, tooltip: str | None = None, lazy: bool | None = None,
                     extra_dict: dict | None = None, **newer: Any) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **newer)
            self.template = template

        def get_io_type(self) -> Any:
            return _StringIOType(",".join(dict.fromkeys(_type_names(self.template.allowed_types))))

        def as_dict(self) -> dict:
            return super().as_dict() | {"template": self.template.as_dict()}

    class Output(Output):
        def __init__(self, template: "MatchType.Template | None" = None, id: str | None = None,
                     display_name: str | None = None, tooltip: str | None = None, is_output_list: bool = False,
                     **newer: Any) -> None:
            super().__init__(id, display_name, tooltip, is_output_list)
            self.template = template

        @property
        def io_type(self) -> Any:
            return _StringIOType("*")


class _Grouped(Input):
    """An input that stands for several flat inputs ``<id>.<part>`` and reaches ``execute`` as a dict."""

    def flat_inputs(self) -> list[tuple[str, Input, bool]]:
        """``(flat name, input, optional)`` for each part."""
        raise NotImplementedError

    def gather(self, values: dict[str, Any]) -> Any:
        raise NotImplementedError


def _renamed(item: Input, name: str, optional: bool) -> Input:
    copied = copy.copy(item)
    copied.id = name
    copied.optional = optional
    return copied


class Autogrow:
    """A group of inputs that grows on the canvas: named parts (``TemplateNames``) or numbered ones
    (``TemplatePrefix``, ``<prefix>0`` …); ``execute`` gets ``{part: value}`` of the given parts."""

    Type = dict
    io_type = "COMFY_AUTOGROW_V3"

    class TemplateNames:
        def __init__(self, input: Input, names: list[str], min: int = 1, **newer: Any) -> None:
            self.input, self.names, self.min = input, list(names), min

        def part_names(self) -> list[str]:
            return list(self.names)

    class TemplatePrefix:
        def __init__(self, input: Input, prefix: str, min: int = 1, max: int = 10, **newer: Any) -> None:
            self.input, self.prefix, self.min, self.max = input, prefix, min, max

        def part_names(self) -> list[str]:
            return [f"{self.prefix}{i}" for i in range(self.max)]

    class Input(_Grouped):
        def __init__(self, id: str, template: Any, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, extra_dict: dict | None = None,
                     **newer: Any) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **newer)
            self.template = template

        def flat_inputs(self) -> list[tuple[str, Input, bool]]:
            base = self.template.input
            parts = []
            for index, part in enumerate(self.template.part_names()):
                optional = self.optional or base.optional or index >= self.template.min
                parts.append((f"{self.id}.{part}", _renamed(base, f"{self.id}.{part}", optional), optional))
            return parts

        def gather(self, values: dict[str, Any]) -> dict[str, Any]:
            prefix = f"{self.id}."
            return {name[len(prefix):]: value for name, value in values.items() if name.startswith(prefix)}


class DynamicCombo:
    """A combo whose chosen option shows more inputs; ``execute`` gets ``{<id>: option, part: value…}``
    with the chosen option's parts (their defaults when not given)."""

    Type = dict
    io_type = "COMFY_DYNAMICCOMBO_V3"

    class Option:
        def __init__(self, key: str, inputs: list | None = None, **newer: Any) -> None:
            self.key, self.inputs = key, list(inputs or [])

    class Input(_Grouped):
        def __init__(self, id: str, options: list, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, extra_dict: dict | None = None,
                     **newer: Any) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **newer)
            self.options = list(options)

        def combo(self) -> "Combo.Input":
            keys = [o.key for o in self.options]
            return Combo.Input(self.id, options=keys, display_name=self.display_name, optional=self.optional,
                               tooltip=self.tooltip, default=keys[0] if keys else None)

        def flat_inputs(self) -> list[tuple[str, Input, bool]]:
            """The combo, then each part once (a part several options share: the widest range)."""
            parts: dict[str, Input] = {}
            for option in self.options:
                for item in option.inputs:
                    name = f"{self.id}.{item.id}"
                    if name not in parts:
                        parts[name] = _renamed(item, name, True)
                    else:
                        _widen(parts[name], item)
            return [(self.id, self.combo(), self.optional)] + [(n, i, True) for n, i in parts.items()]

        def chosen(self, key: Any) -> "DynamicCombo.Option | None":
            return next((o for o in self.options if o.key == key), None)

        def gather(self, values: dict[str, Any]) -> dict[str, Any]:
            key = values.get(self.id)
            result: dict[str, Any] = {self.id: key}
            option = self.chosen(key)
            for item in option.inputs if option is not None else ():
                name = f"{self.id}.{item.id}"
                if name in values:
                    result[item.id] = values[name]
                elif getattr(item, "default", None) is not None:
                    result[item.id] = item.default
            return result


def _widen(kept: Input, other: Input) -> None:
    for bound, pick in (("min", min), ("max", max)):
        a, b = getattr(kept, bound, None), getattr(other, bound, None)
        if a is not None and b is not None:
            setattr(kept, bound, pick(a, b))
        elif a is not None:
            setattr(kept, bound, None)


AutogrowDynamic = Autogrow
ComboDynamic = DynamicCombo


# -- hidden values --------------------------------------------------------------------------------

class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """``cls.hidden`` inside ``execute``: the hidden values the schema asked for (others are None)."""

    def __init__(self, unique_id: Any = None, prompt: Any = None, extra_pnginfo: Any = None, dynprompt: Any = None,
                 auth_token_comfy_org: Any = None, api_key_comfy_org: Any = None, **kwargs: Any) -> None:
        self.unique_id, self.prompt, self.extra_pnginfo = unique_id, prompt, extra_pnginfo
        self.dynprompt, self.auth_token_comfy_org, self.api_key_comfy_org = dynprompt, auth_token_comfy_org, api_key_comfy_org

    def __getattr__(self, key: str) -> Any:
        return None

    @classmethod
    def from_dict(cls, d: dict | None) -> "HiddenHolder":
        d = d or {}
        return cls(**{h.name: d.get(h, d.get(h.name)) for h in Hidden})


# -- the schema -----------------------------------------------------------------------------------

class Schema:
    """A V3 node's definition. Fields a newer ComfyUI added (``search_aliases=…``) are kept, unused."""

    def __init__(self, node_id: str, display_name: str | None = None, category: str = "sd",
                 inputs: list | None = None, outputs: list | None = None, hidden: list | None = None,
                 description: str = "", is_input_list: bool = False, is_output_node: bool = False,
                 is_deprecated: bool = False, is_experimental: bool = False, is_api_node: bool = False,
                 not_idempotent: bool = False, enable_expand: bool = False, **newer: Any) -> None:
        self.node_id, self.display_name, self.category = node_id, display_name, category
        self.inputs, self.outputs, self.hidden, self.description = inputs, outputs, hidden, description
        self.is_input_list, self.is_output_node = is_input_list, is_output_node
        self.is_deprecated, self.is_experimental, self.is_api_node = is_deprecated, is_experimental, is_api_node
        self.not_idempotent, self.enable_expand = not_idempotent, enable_expand
        self.newer = newer

    def validate(self) -> None:
        inputs = [i.id for i in self.inputs or ()]
        outputs = [o.id for o in self.outputs or ()]
        issues = []
        for what, ids in (("Input", inputs), ("Output", outputs)):
            repeated = [item for item, count in Counter(ids).items() if count > 1]
            if repeated:
                issues.append(f"{what} ids must be unique, but {repeated} are not.")
        both = set(inputs) & set(outputs)
        if both:
            issues.append(f"Ids must be unique between inputs and outputs, but {both} are not.")
        if issues:
            raise ValueError("\n".join(issues))

    def finalize(self) -> None:
        """The hidden values the options imply, and ids for outputs without one (as ComfyUI)."""
        needed = []
        if self.is_api_node:
            needed += [Hidden.auth_token_comfy_org, Hidden.api_key_comfy_org]
        if self.is_output_node:
            needed += [Hidden.prompt, Hidden.extra_pnginfo]
        if needed:
            self.hidden = list(self.hidden or [])
            self.hidden += [h for h in needed if h not in self.hidden]
        for index, output in enumerate(self.outputs or ()):
            if output.id is None:
                output.id = f"_{index}_{output.io_type}_"

    def v1_inputs(self) -> dict:
        """``INPUT_TYPES()``: ``{"required": {id: (type, options)}, "optional": …, "hidden": …}``."""
        inputs: dict[str, dict] = {"required": {}}
        for item in self.inputs or ():
            parts = item.flat_inputs() if isinstance(item, _Grouped) else [(item.id, item, item.optional)]
            for name, part, optional in parts:
                options = part.as_dict()
                options.pop("optional", None)
                inputs.setdefault("optional" if optional else "required", {})[name] = (part.get_io_type(), options)
        for hidden in self.hidden or ():
            inputs.setdefault("hidden", {})[hidden.name] = (hidden.value,)
        return inputs


# -- the node -------------------------------------------------------------------------------------

def _overrides(cls: type, name: str) -> bool:
    """True when a class below ComfyNode defines ``name`` (ComfyUI's ``first_real_override``)."""
    for klass in cls.__mro__:
        if klass is ComfyNode:
            return False
        if name in klass.__dict__:
            return True
    return False


#: classic attributes answered from the schema
_FROM_SCHEMA = {
    "RETURN_TYPES": lambda s: tuple(o.io_type for o in s.outputs or ()),
    "RETURN_NAMES": lambda s: tuple(o.display_name or o.io_type for o in s.outputs or ()),
    "OUTPUT_IS_LIST": lambda s: tuple(o.is_output_list for o in s.outputs or ()),
    "OUTPUT_TOOLTIPS": lambda s: tuple(o.tooltip for o in s.outputs or ()),
    "OUTPUT_NODE": lambda s: s.is_output_node, "INPUT_IS_LIST": lambda s: s.is_input_list,
    "CATEGORY": lambda s: s.category, "DESCRIPTION": lambda s: s.description,
    "DEPRECATED": lambda s: s.is_deprecated, "EXPERIMENTAL": lambda s: s.is_experimental,
    "API_NODE": lambda s: s.is_api_node, "NOT_IDEMPOTENT": lambda s: s.not_idempotent,
}


class _NodeType(ABCMeta):
    """Answers the classic protocol's class attributes from the V3 schema."""

    def __getattr__(cls, name: str) -> Any:
        if name in _FROM_SCHEMA:
            return _FROM_SCHEMA[name](cls.GET_SCHEMA())
        if name == "IS_CHANGED" and _overrides(cls, "fingerprint_inputs"):
            return cls.fingerprint_inputs
        if name == "VALIDATE_INPUTS" and _overrides(cls, "validate_inputs"):
            return cls.validate_inputs
        raise AttributeError(name)


class ComfyNode(metaclass=_NodeType):
    """Base class of V3 nodes: override ``define_schema`` and ``execute`` (classmethods)."""

    RELATIVE_PYTHON_MODULE: str | None = None
    SCHEMA: Schema | None = None
    FUNCTION = "EXECUTE_NORMALIZED"
    hidden: HiddenHolder | None = None
    resources: Any = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError(f"{cls.__name__} defines no define_schema")

    @classmethod
    def execute(cls, **kwargs: Any) -> "NodeOutput":
        raise NotImplementedError(f"{cls.__name__} defines no execute")

    @classmethod
    def validate_inputs(cls, **kwargs: Any) -> bool | str:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def VALIDATE_CLASS(cls) -> None:
        if not _overrides(cls, "define_schema"):
            raise TypeError(f"No define_schema function was defined for node class {cls.__name__}.")
        if not _overrides(cls, "execute"):
            raise TypeError(f"No execute function was defined for node class {cls.__name__}.")

    @classmethod
    def FINALIZE_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.finalize()
        return schema

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        cls.VALIDATE_CLASS()
        schema = cls.FINALIZE_SCHEMA()
        schema.validate()
        cls.SCHEMA = schema
        return schema

    @classmethod
    def INPUT_TYPES(cls, include_hidden: bool = True, return_schema: bool = False) -> Any:
        schema = cls.FINALIZE_SCHEMA()
        inputs = schema.v1_inputs()
        if not include_hidden:
            inputs.pop("hidden", None)
        return (inputs, schema) if return_schema else inputs

    @classmethod
    def GET_BASE_CLASS(cls) -> type:
        return ComfyNode

    @classmethod
    def NODEGRAPH_DYNAMIC_COMBOS(cls) -> dict:
        """For nodegraph's canvas-file conversion (``Node.dynamic_combos``)."""
        return dynamic_combos(cls.SCHEMA or cls.GET_SCHEMA())

    @classmethod
    def PREPARE_CLASS_CLONE(cls, hidden_inputs: dict) -> type:
        """A copy of the class whose ``hidden`` holds this call's hidden values."""
        return _NodeType(cls.__name__, (cls,), {"hidden": HiddenHolder.from_dict(hidden_inputs),
                                               "__module__": cls.__module__, "__qualname__": cls.__qualname__})

    @classmethod
    def EXECUTE_NORMALIZED(cls, **kwargs: Any) -> Any:
        """Run ``execute`` on a copy holding the hidden values; the result in the classic shape."""
        schema = cls.SCHEMA or cls.GET_SCHEMA()
        declared = {i.id for i in schema.inputs or ()}
        hidden = {h: kwargs.pop(h.name) for h in schema.hidden or () if h.name in kwargs and h.name not in declared}
        kwargs = _grouped(schema, kwargs)
        clone = cls.PREPARE_CLASS_CLONE(hidden)
        returned = clone.execute(**kwargs)
        if inspect.isawaitable(returned):
            return _normalized_later(clone, schema, returned)
        return _classic(normalize(returned), schema, cls.__name__)

    EXECUTE_NORMALIZED_ASYNC = EXECUTE_NORMALIZED


def _grouped(schema: Schema, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The flat parts of Autogrow / DynamicCombo inputs gathered into one dict per group."""
    groups = [i for i in schema.inputs or () if isinstance(i, _Grouped)]
    if not groups:
        return kwargs
    rest = dict(kwargs)
    for group in groups:
        mine = {k: v for k, v in kwargs.items() if k == group.id or k.startswith(group.id + ".")}
        for name in mine:
            rest.pop(name, None)
        rest[group.id] = group.gather(mine)
    return rest


def dynamic_combos(schema: Schema) -> dict[str, dict[str, tuple[str, ...]]]:
    """Each DynamicCombo's options and the flat inputs each shows (``Node.dynamic_combos``'s shape)."""
    return {g.id: {o.key: tuple(f"{g.id}.{i.id}" for i in o.inputs) for o in g.options}
            for g in schema.inputs or () if isinstance(g, DynamicCombo.Input)}


async def _normalized_later(clone: type, schema: Schema, pending: Any) -> dict:
    return _classic(normalize(await pending), schema, clone.__name__)


# -- what execute returns -------------------------------------------------------------------------

class _UIOutput:
    def as_dict(self) -> dict:
        raise NotImplementedError


class NodeOutput:
    """``NodeOutput(value, …, ui=…, expand=…, block_execution=…)``."""

    def __init__(self, *args: Any, ui: Any = None, expand: dict | None = None, block_execution: str | None = None) -> None:
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple | None:
        return self.args if self.args else None

    @classmethod
    def from_dict(cls, data: dict) -> "NodeOutput":
        result = data.get("result", ())
        if isinstance(result, ExecutionBlocker):
            return cls(block_execution=result.message)
        return cls(*tuple(result or ()), ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


def normalize(returned: Any) -> NodeOutput:
    if returned is None:
        return NodeOutput()
    if isinstance(returned, NodeOutput):
        return returned
    if isinstance(returned, tuple):
        return NodeOutput(*returned)
    if isinstance(returned, dict):
        return NodeOutput.from_dict(returned)
    if isinstance(returned, ExecutionBlocker):
        return NodeOutput(block_execution=returned.message)
    raise TypeError(f"execute() returned {type(returned).__name__}; a V3 node returns a NodeOutput")


def _classic(output: NodeOutput, schema: Schema, name: str) -> dict:
    if output.expand is not None and not schema.enable_expand:
        raise ValueError(f"node {name} is not expandable, but its NodeOutput has 'expand'; set "
                         "enable_expand=True in its Schema")
    if output.block_execution is not None:
        return {"result": ExecutionBlocker(output.block_execution)}
    result: dict[str, Any] = {"result": tuple(output.args)}
    if output.ui is not None:
        ui = output.ui.as_dict() if isinstance(output.ui, _UIOutput) else dict(output.ui)
        result["ui"] = {k: list(v) if isinstance(v, tuple) else v for k, v in ui.items()}
    if output.expand is not None:
        result["expand"] = output.expand
    return result


def _type_name(class_name: str) -> str:
    """``BoundingBox`` → ``BOUNDING_BOX``: how ComfyUI names a socket type after its class."""
    import re

    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", class_name).upper()


def __getattr__(name: str) -> Any:
    # a socket type of a newer ComfyUI (io.BoundingBox, io.Tracks …): made on first use
    if name[:1].isupper() and name.isidentifier():
        made = _socket_type(name, _type_name(name))
        globals()[name] = made
        return made
    raise AttributeError(f"module 'comfy_api.latest.io' has no attribute {name!r}")


__all__ = ["FolderType", "UploadType", "RemoteOptions", "NumberDisplay", "comfytype", "Custom", "Input",
           "WidgetInput", "Output", "ComfyTypeI", "ComfyTypeIO", "Boolean", "Int", "Float", "String", "Combo",
           "MultiCombo", "Webcam", "MultiType", "Autogrow", "DynamicCombo", "MatchType", "Hidden", "HiddenHolder",
           "Schema", "ComfyNode", "NodeOutput", *SOCKET_TYPES]
