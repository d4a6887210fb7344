"""The node API: a node is a small declarative class.

    class ImageBlur(Node):
        '''Gaussian blur.'''
        category = "image/postprocessing"
        image = Input(IMAGE)
        blur_radius = Input(INT, default=1, min=1, max=31, step=1)
        outputs = (Output(IMAGE),)

        def execute(self, image, blur_radius):
            return (blur(image, blur_radius),)

Inputs are class attributes holding :class:`Input` records, collected in declaration order into
``INPUTS``. From this one declaration the engine derives ``/object_info``, validation and the canvas
widgets. ``execute`` returns a tuple with one value per output, or a :class:`NodeResult` to add UI data
or to expand into a sub-graph at run time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Sequence

from .types import BOOLEAN, COMBO, FLOAT, INT, STRING, WIDGET_TYPES

if TYPE_CHECKING:  # pragma: no cover
    from .context import NodeContext, Paths

HIDDEN_INPUTS = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}

_UNSET: Any = object()


@dataclass(slots=True)
class Input:
    """One declared input: its socket type and everything the canvas and validation need."""

    type: str
    default: Any = _UNSET
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    round: float | bool | None = None
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    optional: bool = False
    lazy: bool = False
    multiline: bool = False
    tooltip: str | None = None
    force_input: bool = False
    display: str | None = None
    control_after_generate: bool = False
    image_upload: bool = False
    #: ComfyUI's upload buttons for video and audio files (LoadVideo, LoadAudio)
    video_upload: bool = False
    audio_upload: bool = False
    placeholder: str | None = None
    dynamic_prompts: bool = False
    label_on: str | None = None
    label_off: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.choices is not None and self.type != COMBO:
            raise TypeError(f"input with choices must have type COMBO, not {self.type!r}")
        if self.type == COMBO and self.choices is None:
            raise TypeError("a COMBO input needs choices (a list, or a function returning one)")

    @property
    def has_default(self) -> bool:
        return self.default is not _UNSET

    @property
    def is_widget(self) -> bool:
        """True when the canvas shows a widget for it (a JSON constant is allowed)."""
        return self.type in WIDGET_TYPES and not self.force_input

    def current_choices(self, paths: "Paths | None" = None) -> list[str]:
        """The combo's choices now (a callable is asked each time, so lists refresh).

        A callable that takes a ``paths`` parameter gets the engine's folders (default ``Paths()``).
        """
        if self.choices is None:
            return []
        if not callable(self.choices):
            return list(self.choices)
        if accepts_paths(self.choices):
            return list(self.choices(paths=paths if paths is not None else _default_paths()))
        return list(self.choices())

    def options(self, paths: "Paths | None" = None) -> dict[str, Any]:
        """The ComfyUI ``/object_info`` options dict for this input."""
        opts: dict[str, Any] = {}
        if self.has_default:
            opts["default"] = self.default
        elif self.type == COMBO:
            choices = self.current_choices(paths)
            if choices:
                opts["default"] = choices[0]
        for key, value in (("min", self.min), ("max", self.max), ("step", self.step),
                           ("round", self.round), ("tooltip", self.tooltip),
                           ("display", self.display), ("placeholder", self.placeholder),
                           ("label_on", self.label_on), ("label_off", self.label_off)):
            if value is not None:
                opts[key] = value
        for key, flag in (("multiline", self.multiline), ("forceInput", self.force_input),
                          ("lazy", self.lazy), ("control_after_generate", self.control_after_generate),
                          ("image_upload", self.image_upload), ("video_upload", self.video_upload),
                          ("audio_upload", self.audio_upload), ("dynamicPrompts", self.dynamic_prompts)):
            if flag:
                opts[key] = True
        return opts

    def spec(self, paths: "Paths | None" = None) -> list[Any]:
        """``[TYPE, options]`` as ComfyUI writes it; legacy combos as ``[[choices…], options]``."""
        head: Any = self.current_choices(paths) if self.type == COMBO else self.type
        return [head, self.options(paths)]


@dataclass(frozen=True, slots=True)
class Output:
    """One declared output."""

    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.type


@dataclass(slots=True)
class NodeResult:
    """What ``execute`` may return instead of a plain tuple.

    ``outputs``: one value per declared output. ``ui``: data shown on the node / stored in history
    (``{"images": [...]}``, ``{"text": [...]}``). ``expand``: an API-format graph the node expands
    into at run time; then ``outputs`` may hold links ``[node_id, index]`` into that graph.
    """

    outputs: tuple = ()
    ui: dict[str, list] | None = None
    expand: dict[str, dict] | None = None


class Node:
    """Base class of every node. Subclasses declare inputs as class attributes (see module doc)."""

    #: Menu path on the canvas, e.g. ``"image/transform"``.
    category: ClassVar[str] = ""
    #: Name shown on the canvas; the class name when ``None``.
    display_name: ClassVar[str | None] = None
    #: One-paragraph description; the class docstring when empty.
    description: ClassVar[str] = ""
    #: Bump when the node's results change for the same inputs: it is part of the cache key.
    version: ClassVar[int | str] = 1
    #: Output nodes are what a workflow runs for (save, preview, ...).
    output_node: ClassVar[bool] = False
    outputs: ClassVar[tuple[Output, ...]] = ()
    #: ComfyUI's INPUT_IS_LIST: receive whole lists instead of being mapped over them.
    takes_lists: ClassVar[bool] = False
    #: ``False`` for nodes whose results must never be reused (clocks, true randomness).
    cacheable: ClassVar[bool] = True
    #: Hidden inputs the engine injects: any of ``prompt``, ``extra_pnginfo``, ``unique_id``.
    hidden: ClassVar[tuple[str, ...]] = ()
    deprecated: ClassVar[bool] = False
    experimental: ClassVar[bool] = False
    #: ComfyUI's API nodes (``api_node`` in ``/object_info``): the node calls a paid API through Comfy.org
    #: with the credentials the prompt's ``extra_data`` carries; the frontend marks them.
    api_node: ClassVar[bool] = False
    #: Input names the class accepts beyond its declared inputs, as regular expressions matched
    #: whole (``(r"option\d+",)``): values a canvas posts that the node does not use (CustomCombo's
    #: ``option1``…). Validation lets them through; ``execute`` does not receive them. Any other
    #: undeclared name is a validation error (``unknown_input``).
    extra_inputs: ClassVar[tuple[str, ...]] = ()
    #: ComfyUI's DynamicCombo inputs, declared flat (``resize_type`` and ``resize_type.width``…): combo
    #: input → {option → the inputs that option shows, in order}. ComfyUI's canvas stores such a node's
    #: ``widgets_values`` as the combo's value, the chosen option's widget values, then the next widget;
    #: the UI → API conversion reads them that way.
    dynamic_combos: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {}
    #: Inputs of a type this engine has no constant widget for (ComfyUI's socketless ``BOUNDING_BOX``,
    #: ``COLOR``… widgets, declared here as ``*``) whose value ComfyUI's canvas keeps in
    #: ``widgets_values``: the UI ↔ API conversions treat them as widgets, in declared order.
    canvas_widgets: ClassVar[tuple[str, ...]] = ()

    INPUTS: ClassVar[dict[str, Input]] = {}
    _LAZY: ClassVar[frozenset[str]] = frozenset()
    _EXTRA: ClassVar["re.Pattern[str] | None"] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inputs: dict[str, Input] = {}
        for base in reversed(cls.__mro__[1:]):
            inputs.update(getattr(base, "INPUTS", {}))
        for name, value in list(vars(cls).items()):
            if isinstance(value, Input):
                value.name = name
                inputs[name] = value
                delattr(cls, name)
        cls.declare_inputs(inputs)
        for name in cls.hidden:
            if name not in HIDDEN_INPUTS:
                raise TypeError(f"{cls.__name__}: unknown hidden input {name!r}; "
                                f"use one of {sorted(HIDDEN_INPUTS)}")
        if "description" not in vars(cls) and vars(cls).get("__doc__"):
            cls.description = " ".join(cls.__doc__.split())

    def __init__(self, context: "NodeContext") -> None:
        self.ctx = context

    @classmethod
    def declare_inputs(cls, inputs: dict[str, Input]) -> None:
        """Set the class's inputs (in order) and what follows from them; for classes built at run time
        (the ComfyUI adapter), whose input names may clash with class attributes."""
        cls.INPUTS = inputs
        cls._LAZY = frozenset(n for n, spec in inputs.items() if spec.lazy)
        cls._EXTRA = _extra_pattern(cls.extra_inputs, inputs.values())

    # -- what a node implements -------------------------------------------------------------------

    def execute(self, **inputs: Any) -> tuple | NodeResult:
        raise NotImplementedError(f"{type(self).__name__} does not implement execute()")

    @classmethod
    def fingerprint(cls, **constants: Any) -> Any:
        """ComfyUI's IS_CHANGED: a value that changes when the node's result would (file hash...).

        Called with the node's constant inputs (linked inputs absent), plus ``paths`` (the engine's
        folders) when the method declares that parameter. It enters the cache key. Return
        ``math.nan`` to force a re-run every time.
        """
        return None

    @classmethod
    def validate_inputs(cls, **constants: Any) -> bool | str:
        """Extra validation of constant inputs: ``True``, or a sentence saying what is wrong.

        Receives ``paths`` too when it declares that parameter. Inputs it names are exempt from the
        generic range/choice checks (as in ComfyUI).
        """
        return True

    def check_lazy(self, **inputs: Any) -> list[str]:
        """Names of lazy inputs still needed. Unevaluated lazy inputs arrive as ``None``.

        The default asks for every lazy input (as ComfyUI does without ``check_lazy_status``).
        """
        return [name for name, spec in self.INPUTS.items() if spec.lazy and inputs.get(name) is None]

    # -- derived information ----------------------------------------------------------------------

    @classmethod
    def class_type(cls) -> str:
        return getattr(cls, "CLASS_TYPE", cls.__name__)

    @classmethod
    def hidden_spec(cls) -> dict[str, str]:
        """``/object_info``'s ``input.hidden``: name → ComfyUI kind (``{"prompt": "PROMPT"}``)."""
        return {h: HIDDEN_INPUTS[h] for h in cls.hidden}

    @classmethod
    def lazy_inputs(cls) -> frozenset[str]:
        return cls._LAZY

    @classmethod
    def accepts_input(cls, name: str) -> bool:
        """True when a workflow may give this class an input of that name: a declared input, a
        hidden one it declares, a name matching :attr:`extra_inputs`, or a canvas-only companion of
        a declared widget (``upload`` beside an upload combo, ``video-preview`` beside a video one;
        ``control_after_generate`` and ``control_filter_list`` beside a widget with that control)."""
        if name in cls.INPUTS or name in cls.hidden:
            return True
        return cls._EXTRA is not None and cls._EXTRA.fullmatch(name) is not None

    @classmethod
    def extra_input(cls, name: str, linked: bool) -> Input | None:
        """An input the class takes beyond its declared ones (``linked``: the workflow links it) —
        checked as this :class:`Input` and passed to ``execute`` — or ``None``. Our nodes take none
        (names in :attr:`extra_inputs` are let through but not passed); ComfyUI pack classes take the
        names their ``INPUT_TYPES`` sections say they contain, and links of any name when their function
        takes ``**kwargs`` (as ComfyUI passes them)."""
        return None

    @classmethod
    def required_inputs(cls) -> Iterable[Input]:
        return (s for s in cls.INPUTS.values() if not s.optional)

    @classmethod
    def optional_inputs(cls) -> Iterable[Input]:
        return (s for s in cls.INPUTS.values() if s.optional)


def _extra_pattern(patterns: Iterable[str], inputs: Iterable[Input]) -> "re.Pattern[str] | None":
    """One regular expression for the undeclared names a class accepts (see ``Node.extra_inputs``)."""
    parts = list(patterns)
    for spec in inputs:
        if spec.image_upload or spec.video_upload or spec.audio_upload:
            parts.append("upload")
        if spec.video_upload:  # ComfyUI's frontend posts its video preview widget's empty value
            parts.append("video-preview")
        if spec.control_after_generate:
            parts.extend(("control_after_generate", "control_filter_list"))
    return re.compile("|".join(f"(?:{p})" for p in dict.fromkeys(parts))) if parts else None


def accepts_paths(func: Callable) -> bool:
    """True when a hook declares a ``paths`` parameter (it then gets the engine's folders)."""
    import inspect

    try:
        return "paths" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _default_paths() -> "Paths":
    from .context import Paths

    return Paths()


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


__all__ = ["Input", "Output", "Node", "NodeResult", "HIDDEN_INPUTS", "INT", "FLOAT", "STRING",
           "BOOLEAN", "COMBO", "is_nan"]
