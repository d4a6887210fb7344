"""ComfyUI's classic node protocol as a nodegraph node kind.

A classic ComfyUI node class (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``, …) becomes a generated
:class:`ClassicNode` subclass — an ordinary :class:`~nodegraph.node.Node` — so it goes through the same
validator, signatures and cache, list mapping, lazy scheduling, expansion and events as our own
nodes. How each part of the protocol maps:

=====================  ===================================================================================
``INPUT_TYPES``        ``required`` / ``optional`` → :class:`ClassicInput` (options kept as the pack wrote
                       them, for ``/object_info``; combo lists re-read, at most once a second); ``hidden``
                       ``PROMPT``, ``EXTRA_PNGINFO``, ``UNIQUE_ID``, ``DYNPROMPT`` (a
                       :class:`~nodegraph.comfy_compat.dynprompt.DynamicPrompt`), ``AUTH_TOKEN_COMFY_ORG``
                       / ``API_KEY_COMFY_ORG`` (from the prompt's extra data), ``PROMPT_ID``, under the
                       pack's names; another kind gets no value (the function's default)
``RETURN_TYPES`` …     outputs (a list entry is a ``COMBO`` output); ``RETURN_NAMES``, ``OUTPUT_IS_LIST``,
                       ``OUTPUT_TOOLTIPS``
``FUNCTION``           called on one pack object per node id (kept between prompts, as ComfyUI does);
                       ``async def`` functions are awaited
``INPUT_IS_LIST``      :attr:`~nodegraph.node.Node.takes_lists`
``IS_CHANGED``         :meth:`~nodegraph.node.Node.fingerprint` (constants only; lists/dicts made hashable)
``VALIDATE_INPUTS``    :meth:`~nodegraph.node.Node.validate_inputs` with the pack's signature (inputs it
                       names skip the range/choice checks; ``input_types`` gets each linked input's type
                       and lifts the link type check)
``check_lazy_status``  :meth:`~nodegraph.node.Node.check_lazy`; without it, lazy inputs stay ``None``
                       (ComfyUI evaluates a lazy input only when asked)
``NOT_IDEMPOTENT``     the node id enters the cache key
returns                a tuple; ``{"result", "ui", "expand"}``; an ``ExecutionBlocker``
=====================  ===================================================================================

Inputs beyond the declared ones (:meth:`ClassicNode.extra_input`): a name an ``INPUT_TYPES`` section
says it contains (the "accept any input" mappings some packs use) is taken, linked or constant; a link
of any other name is passed to a function that takes ``**kwargs`` (ComfyUI passes undeclared links:
that is how inputs a pack's frontend adds arrive).

Stricter than ComfyUI: constants are not coerced from strings ("5" is not an INT), and an undeclared
constant is a validation error (``unknown_input``; ComfyUI drops it silently).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ..blocking import ExecutionBlocker
from ..node import Input, Node, NodeResult, Output
from ..run_sync import run_sync
from ..types import ANY, COMBO
from .current import running
from .dynprompt import DynamicPrompt

#: ComfyUI's hidden kinds → the hidden input of ours that carries what they need
HIDDEN_SOURCES = {"PROMPT": "prompt", "DYNPROMPT": "prompt", "EXTRA_PNGINFO": "extra_pnginfo",
                  "UNIQUE_ID": "unique_id", "AUTH_TOKEN_COMFY_ORG": None, "API_KEY_COMFY_ORG": None,
                  "PROMPT_ID": None}
#: how long one ``INPUT_TYPES()`` answer is reused (object_info and validation ask per input)
TYPES_TTL = 1.0
#: pack objects kept per class (ComfyUI keeps one per node id between prompts)
MAX_OBJECTS = 256


class ClassicProtocolError(TypeError):
    """A pack's class does not follow the classic node protocol (said at load time)."""


class _TypesReader:
    """``INPUT_TYPES()`` of a pack class, re-read at most once per :data:`TYPES_TTL` seconds; when a
    later call raises, the last good answer stays."""

    def __init__(self, pack_cls: type, first: dict) -> None:
        self.pack_cls = pack_cls
        self.value = first
        self.at = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self) -> dict:
        now = time.monotonic()
        if now - self.at > TYPES_TTL:
            with self.lock:
                if now - self.at > TYPES_TTL:
                    try:
                        self.value = read_input_types(self.pack_cls)
                    except Exception:  # a flaky INPUT_TYPES keeps its last answer
                        pass
                    self.at = now
        return self.value

    def spec(self, section: str, name: str) -> tuple[Any, dict]:
        entry = (self().get(section) or {}).get(name)
        return split_spec(entry) if entry is not None else (None, {})


@dataclass(slots=True)
class ClassicInput(Input):
    """An input declared by a pack: the options the pack wrote are what ``/object_info`` shows."""

    section: str = "required"
    reader: _TypesReader | None = None
    raw_head: Any = None
    raw_options: dict = field(default_factory=dict)

    def current_raw(self) -> tuple[Any, dict]:
        if self.reader is not None:
            head, options = self.reader.spec(self.section, self.name)
            if head is not None:
                return head, options
        return self.raw_head, self.raw_options

    def options(self, paths=None) -> dict[str, Any]:  # noqa: ANN001 - Input's signature
        return dict(self.current_raw()[1])

    def spec(self, paths=None) -> list[Any]:  # noqa: ANN001
        head, options = self.current_raw()
        head = list(head) if isinstance(head, (list, tuple)) else head
        return [head, dict(options)] if options else [head]


def read_input_types(pack_cls: type) -> dict:
    types = pack_cls.INPUT_TYPES()
    if not isinstance(types, dict):
        raise ClassicProtocolError(f"INPUT_TYPES() returned {type(types).__name__}, not a dict")
    return types


def split_spec(entry: Any) -> tuple[Any, dict]:
    """``("INT", {...})`` / ``(["a", "b"],)`` / ``"IMAGE"`` → (head, options)."""
    if isinstance(entry, (tuple, list)) and entry and not isinstance(entry, str):
        head = entry[0]
        options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
        return head, options
    return entry, {}


def combo_choices(head: Any, options: dict) -> list | None:
    """The choices of a combo input (legacy list head, or ``"COMBO"`` with ``options``), else None."""
    if isinstance(head, (list, tuple)):
        return list(head)
    if head == COMBO:
        return list(options.get("options") or [])
    return None


def make_input(name: str, entry: Any, section: str, reader: _TypesReader | None) -> ClassicInput:
    head, options = split_spec(entry)
    if not isinstance(head, (str, list, tuple)):
        raise ClassicProtocolError(f"input '{name}': its type must be a string or a list of choices, "
                                   f"not {type(head).__name__}")
    choices = combo_choices(head, options)
    kwargs: dict[str, Any] = {}
    if "default" in options:
        kwargs["default"] = options["default"]
    for key in ("min", "max", "step"):  # numbers only: the generic range check reads them
        value = options.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            kwargs[key] = value
    if isinstance(options.get("tooltip"), str):
        kwargs["tooltip"] = options["tooltip"]
    if choices is not None and reader is None:
        kwargs["choices"] = choices
    elif choices is not None:
        def fresh(section=section, name=name) -> list:
            current_head, current_options = reader.spec(section, name)
            found = combo_choices(current_head, current_options)
            return found if found is not None else choices
        kwargs["choices"] = fresh
    return ClassicInput(
        COMBO if choices is not None else str(head), optional=section == "optional",
        lazy=bool(options.get("lazy")), force_input=bool(options.get("forceInput")),
        multiline=bool(options.get("multiline")), control_after_generate=bool(options.get("control_after_generate")),
        image_upload=bool(options.get("image_upload")), name=name, section=section, reader=reader,
        raw_head=list(head) if isinstance(head, tuple) else head, raw_options=dict(options), **kwargs)


def run_awaitable(value: Any) -> Any:
    """The result of an ``async def`` node function (run to completion on this thread)."""
    if not inspect.isawaitable(value):
        return value
    return run_sync(value, "nodegraph-comfy-async")


def hashable(value: Any) -> Any:
    """An ``IS_CHANGED`` answer as a cache-key part: lists and dicts become tuples (ComfyUI compares
    them by value); anything else not hashable means "changed every time"."""
    if isinstance(value, (list, tuple)):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), hashable(v)) for k, v in value.items()))
    if value is None or isinstance(value, (str, int, float, bytes, bool)):
        return value
    return float("nan")


class ClassicNode(Node):
    """Base of the generated classes; one per ComfyUI class a pack registers."""

    abstract = True
    #: the pack's class, and what the adapter read from it once
    comfy_class: ClassVar[type]
    comfy_function: ClassVar[str] = ""
    comfy_pack: ClassVar[str] = ""
    #: the pack's hidden inputs: its name → ComfyUI kind (``{"uid": "UNIQUE_ID"}``)
    comfy_hidden: ClassVar[dict[str, str]] = {}
    #: ``INPUT_TYPES()["hidden"]`` as the pack wrote it (``/object_info``; V3 writes ``["PROMPT"]``)
    comfy_hidden_spec: ClassVar[dict[str, Any]] = {}
    #: a V3 class (``comfy_api.latest.io.ComfyNode``): hidden values reach it as ``cls.hidden``
    comfy_v3: ClassVar[bool] = False
    comfy_types: ClassVar[_TypesReader]
    #: the pack's function takes ``**kwargs`` (it then gets links of undeclared names)
    comfy_takes_kwargs: ClassVar[bool] = False
    _objects: ClassVar["OrderedDict[str, Any]"]
    _objects_lock: ClassVar[threading.Lock]

    # -- ComfyUI's view of it ---------------------------------------------------------------------

    @classmethod
    def hidden_spec(cls) -> dict[str, Any]:
        return dict(cls.comfy_hidden_spec)

    @classmethod
    def accepts_input(cls, name: str) -> bool:
        return super().accepts_input(name) or name in cls.comfy_hidden

    @classmethod
    def extra_input(cls, name: str, linked: bool) -> Input | None:
        """A name a section of ``INPUT_TYPES`` says it contains (the "accept any input" mappings some
        packs use: ComfyUI passes such inputs), or — when the pack's function takes ``**kwargs`` — a
        link of any name (ComfyUI passes undeclared links; the inputs a pack's frontend adds arrive so).
        A hidden section that says it contains every name (VideoHelperSuite's ``ContainsAll``: the
        format widgets its frontend adds, ``crf``, ``pix_fmt`` …) takes the value as it comes, unchecked,
        as ComfyUI passes a hidden input. An undeclared constant is not taken otherwise (ComfyUI drops
        it; here it is an ``unknown_input`` error)."""
        types = cls.comfy_types()
        for section in ("required", "optional", "hidden"):
            declared = types.get(section)
            if declared is None or type(declared) is dict:
                continue
            try:
                if name not in declared:
                    continue
                if section == "hidden":
                    return Input(ANY, optional=True, name=name)
                return make_input(name, declared[name], "optional", None)
            except Exception:  # an odd mapping: take the value as it comes
                return Input(ANY, optional=True, name=name)
        if linked and cls.comfy_takes_kwargs:
            return Input(ANY, optional=True, name=name)
        return None

    # -- running ----------------------------------------------------------------------------------

    def pack_object(self) -> Any:
        """The pack's object for this node id (made once, kept between prompts as ComfyUI does)."""
        key = self.ctx.node_id
        with self._objects_lock:
            obj = self._objects.get(key)
            if obj is not None:
                self._objects.move_to_end(key)
                return obj
        obj = self.comfy_class()
        with self._objects_lock:
            self._objects[key] = obj
            while len(self._objects) > MAX_OBJECTS:
                self._objects.popitem(last=False)
        return obj

    def pack_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Our call's inputs under the pack's names (hidden inputs renamed and converted)."""
        ours = {h for h in self.hidden}
        kwargs = {name: value for name, value in inputs.items() if name not in ours}
        extra_data = self.ctx.run.extra_data
        for pack_name, kind in self.comfy_hidden.items():
            if kind not in HIDDEN_SOURCES:
                continue  # a kind ComfyUI does not fill either: the function's default applies
            source = HIDDEN_SOURCES.get(kind)
            if kind == "PROMPT_ID":
                kwargs[pack_name] = [self.ctx.prompt_id] if self.takes_lists else self.ctx.prompt_id
                continue
            if kind in ("AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"):
                value: Any = extra_data.get(kind.lower())
                kwargs[pack_name] = [value] if self.takes_lists else value
                continue
            value = inputs.get(source) if source in self.hidden else None  # None: the name is an input
            if kind == "DYNPROMPT":
                value = [DynamicPrompt(v) for v in value] if self.takes_lists and isinstance(value, list) \
                    else DynamicPrompt(value)
            kwargs[pack_name] = value
        return kwargs

    def execute(self, **inputs: Any) -> Any:
        obj = self.pack_object()
        function = getattr(obj, self.comfy_function, None)
        if function is None:
            raise ClassicProtocolError(f"{type(obj).__name__} has no method {self.comfy_function!r} "
                                       "(its FUNCTION)")
        with running(self.ctx):
            returned = run_awaitable(function(**self.pack_kwargs(inputs)))
        return self.to_result(returned)

    def check_lazy(self, **inputs: Any) -> list[str]:
        obj = self.pack_object()
        check = getattr(obj, "check_lazy_status", None)
        if check is None:
            return []  # ComfyUI evaluates a lazy input only when check_lazy_status asks for it
        kwargs = self.pack_kwargs(inputs)
        if self.comfy_v3:  # ComfyUI passes a V3 node's check only its inputs
            kwargs = {k: v for k, v in kwargs.items() if k in self.INPUTS or k not in self.comfy_hidden}
        with running(self.ctx):
            wanted = run_awaitable(check(**kwargs))
        if isinstance(wanted, str):
            wanted = [wanted]
        return [name for name in (wanted or ()) if isinstance(name, str)]

    def to_result(self, value: Any) -> Any:
        if isinstance(value, dict):
            result = value.get("result", ())
            if isinstance(result, ExecutionBlocker):
                result = (result,) * len(self.outputs)
            return NodeResult(tuple(result or ()), value.get("ui"), value.get("expand"))
        if value is None or isinstance(value, (tuple, ExecutionBlocker, NodeResult)):
            return value
        if isinstance(value, list):
            return tuple(value)
        raise TypeError(f"node {self.ctx.node_id} ({self.ctx.class_type}): {self.comfy_class.__name__}."
                        f"{self.comfy_function}() returned {type(value).__name__}; a ComfyUI node returns a "
                        "tuple with one value per output, or a dict with 'result' / 'ui' / 'expand'")


def _fingerprint(pack_cls: type, takes_lists: bool, hidden: dict[str, str]) -> Callable[..., Any]:
    is_changed = pack_cls.IS_CHANGED
    try:
        params = inspect.signature(is_changed).parameters
    except (TypeError, ValueError):
        params = {}

    def fingerprint(cls, **constants: Any) -> Any:
        kwargs = {k: [v] for k, v in constants.items()} if takes_lists else dict(constants)
        for name in hidden:
            if name in params:
                kwargs[name] = [None] if takes_lists else None
        return hashable(run_awaitable(getattr(pack_cls, "IS_CHANGED")(**kwargs)))

    return classmethod(fingerprint)


def _validator(pack_cls: type, takes_lists: bool) -> Callable[..., Any]:
    check = pack_cls.VALIDATE_INPUTS
    try:
        params = list(inspect.signature(check).parameters.values())
    except (TypeError, ValueError):
        params = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]

    def validate_inputs(cls, **kwargs: Any) -> Any:
        if takes_lists:
            kwargs = {k: [v] for k, v in kwargs.items()}
        verdict = run_awaitable(getattr(pack_cls, "VALIDATE_INPUTS")(**kwargs))
        for one in (verdict if isinstance(verdict, list) else [verdict]):
            if one is not True and not isinstance(one, ExecutionBlocker):
                return str(one)
        return True

    validate_inputs.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + params)
    return classmethod(validate_inputs)


def _takes_kwargs(function: Any) -> bool:
    try:
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False


def output_type(entry: Any) -> str:
    if isinstance(entry, (list, tuple)):
        return COMBO  # a combo output (ComfyUI lets a node return a choice list's value)
    return str(entry)


def build_node_class(name: str, pack_cls: type, pack: str, display_name: str | None = None) -> type[ClassicNode]:
    """The nodegraph node class for the classic ComfyUI class ``pack_cls`` registered as ``name``."""
    if not inspect.isclass(pack_cls):
        raise ClassicProtocolError(f"'{name}' maps to {type(pack_cls).__name__}, not a class")
    if callable(getattr(pack_cls, "GET_SCHEMA", None)):
        pack_cls.GET_SCHEMA()  # a V3 class: its schema's own error, not a missing attribute
    for attr in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION"):
        if not hasattr(pack_cls, attr):
            raise ClassicProtocolError(f"class {pack_cls.__name__} has no {attr}")
    first = read_input_types(pack_cls)
    reader = _TypesReader(pack_cls, first)
    inputs: dict[str, Input] = {}
    for section in ("required", "optional"):
        declared = first.get(section) or {}
        if not isinstance(declared, dict):
            raise ClassicProtocolError(f"INPUT_TYPES()['{section}'] is {type(declared).__name__}, not a dict")
        for input_name, entry in declared.items():
            inputs[str(input_name)] = make_input(str(input_name), entry, section, reader)
    raw_hidden = dict(first.get("hidden") or {})
    hidden = {str(k): str(v[0] if isinstance(v, (tuple, list)) and v else v) for k, v in raw_hidden.items()}
    ours: list[str] = []
    for pack_name, kind in hidden.items():
        source = HIDDEN_SOURCES.get(kind)  # an unknown kind gets no value (ComfyUI fills none either)
        # a hidden value whose carrier name is also one of the class's inputs is not requested: the pack
        # gets None for it (our executor passes hidden values under these names)
        if source and source not in ours and source not in inputs:
            ours.append(source)
    if getattr(pack_cls, "NOT_IDEMPOTENT", False) and "unique_id" not in ours and "unique_id" not in inputs:
        ours.append("unique_id")  # ComfyUI keys such nodes by their id too
    returns = tuple(pack_cls.RETURN_TYPES or ())
    names = tuple(getattr(pack_cls, "RETURN_NAMES", None) or ())
    is_list = tuple(getattr(pack_cls, "OUTPUT_IS_LIST", None) or ())
    tooltips = tuple(getattr(pack_cls, "OUTPUT_TOOLTIPS", None) or ())
    outputs = tuple(Output(output_type(t), str(names[i]) if i < len(names) and names[i] else None,
                           bool(is_list[i]) if i < len(is_list) else False,
                           str(tooltips[i]) if i < len(tooltips) and tooltips[i] else None)
                    for i, t in enumerate(returns))
    takes_lists = bool(getattr(pack_cls, "INPUT_IS_LIST", False))
    namespace: dict[str, Any] = {
        "comfy_takes_kwargs": _takes_kwargs(getattr(pack_cls, str(pack_cls.FUNCTION), None)),
        "__module__": __name__, "__doc__": None, "CLASS_TYPE": name,
        "comfy_class": pack_cls, "comfy_function": str(pack_cls.FUNCTION), "comfy_pack": pack,
        "comfy_hidden": hidden, "comfy_types": reader,
        "comfy_hidden_spec": {k: list(v) if isinstance(v, tuple) else v for k, v in raw_hidden.items()},
        "comfy_v3": callable(getattr(pack_cls, "GET_SCHEMA", None)),
        "_objects": OrderedDict(), "_objects_lock": threading.Lock(),
        "category": str(getattr(pack_cls, "CATEGORY", "sd") or ""),
        "display_name": display_name, "description": str(getattr(pack_cls, "DESCRIPTION", "") or ""),
        "output_node": bool(getattr(pack_cls, "OUTPUT_NODE", False)), "outputs": outputs,
        "takes_lists": takes_lists, "hidden": tuple(ours),
        "deprecated": bool(getattr(pack_cls, "DEPRECATED", False)),
        "experimental": bool(getattr(pack_cls, "EXPERIMENTAL", False)),
    }
    combos = getattr(pack_cls, "NODEGRAPH_DYNAMIC_COMBOS", None)  # a V3 class's DynamicCombo inputs
    if callable(combos):
        namespace["dynamic_combos"] = combos()
    if hasattr(pack_cls, "IS_CHANGED"):
        namespace["fingerprint"] = _fingerprint(pack_cls, takes_lists, hidden)
    if hasattr(pack_cls, "VALIDATE_INPUTS"):
        namespace["validate_inputs"] = _validator(pack_cls, takes_lists)
    cls = type(name, (ClassicNode,), namespace)
    cls.declare_inputs(inputs)
    return cls
