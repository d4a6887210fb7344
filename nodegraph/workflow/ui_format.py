"""ComfyUI's UI (canvas, litegraph schema 0.4) workflow → API-format workflow, done in the library.

This does what ComfyUI's frontend does when you press Queue (COMFY_COMPAT §3 "UI → API"):

* virtual nodes (``Reroute``, ``PrimitiveNode``, ``Note``, ``MarkdownNote``) and muted (mode 2) or
  bypassed (mode 4) nodes are not emitted; modes 1 and 3 queue like 0;
* ``widgets_values`` are mapped onto the class's widget inputs in declared order (required, then
  optional), skipping the control / filter / upload entries the canvas stores beside them; for a class
  with DynamicCombo inputs (``Node.dynamic_combos``) a shorter list is ComfyUI's layout: each combo's
  value, then the chosen option's widget values, then the next widget;
* linked inputs are matched by input *name* and followed through Reroutes, PrimitiveNodes (whose value
  is copied in), bypassed nodes and subgraph boundaries; links whose source is not emitted are dropped;
* subgraphs (``definitions.subgraphs``) are flattened; inner nodes get ``"outer:inner"`` ids. A subgraph
  input that feeds a widget inside is a *promoted widget*: the subgraph node shows it, and its value —
  the node's ``widgets_values_named`` entry, else its ``widgets_values`` in the order of those inputs —
  goes to the inner input when the subgraph node's own input is not linked (nested subgraphs pass it
  down level by level), as the frontend does.

Unknown class types are kept (inputs from links only, raw ``widgets_values`` in ``_meta``) so that
validation can report them. Malformed files raise :class:`~nodegraph.errors.WorkflowFormatError`.
Not done here (frontend-only text features): ``{a|b}`` dynamic prompts, ``//`` comment stripping and
``%date:…%`` / ``%Node.widget%`` expansion in ``filename_prefix``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

from ..errors import WorkflowFormatError
from ..node import Input, Node
from ..registry import NodeRegistry
from ..types import ANY, BOOLEAN, COMBO, FLOAT, INT, STRING, types_match

MODE_MUTED = 2
MODE_BYPASS = 4
VIRTUAL_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
#: Values of the "control after generate" widget; booleans are the legacy form.
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
#: INT inputs that get a control widget even when the class does not ask for one.
SEED_NAMES = frozenset({"seed", "noise_seed"})
#: Subgraph boundary pseudo-node ids (inside a subgraph definition's links).
SUBGRAPH_INPUT_ID = -10
SUBGRAPH_OUTPUT_ID = -20

NodeKind = Literal["normal", "reroute", "primitive", "note", "subgraph", "subgraph_input"]
ExtraKind = Literal["control", "filter"]


# -- parsed UI graph ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UiLink:
    """One link ``[id, origin_id, origin_slot, target_id, target_slot, type]``; ids are scoped keys."""

    key: str
    id: int | str
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: str


@dataclass(frozen=True, slots=True)
class UiInput:
    """One input slot of a canvas node; ``name`` is the widget name for widget slots."""

    name: str
    type: str
    link: str | None
    #: the slot belongs to a widget (``"widget": {"name"}``): a value can stand in for a link
    widget: bool = False


@dataclass(frozen=True, slots=True)
class UiOutput:
    name: str
    type: str


@dataclass(slots=True)
class UiNode:
    """One canvas node. ``key`` is its API id (``"7"``, or ``"3:7"`` inside subgraph node 3)."""

    key: str
    type: str
    kind: NodeKind
    mode: int = 0
    title: str | None = None
    inputs: list[UiInput] = field(default_factory=list)
    inputs_given: bool = True
    outputs: list[UiOutput] = field(default_factory=list)
    widgets_values: list[Any] | dict[str, Any] | None = None
    #: ``widgets_values_named`` (the frontend writes it beside ``widgets_values`` since 1.5x)
    widgets_named: dict[str, Any] | None = None
    #: For pass-through nodes (reroute, subgraph node, subgraph input): output slot → link to follow.
    passthrough: dict[int, str | None] | None = None
    #: For a subgraph's input boundary: slot → the subgraph node's promoted widget value, used where
    #: the passthrough has no link.
    constants: dict[int, Any] | None = None
    #: Inside a muted or bypassed subgraph node: never emitted.
    hidden: bool = False

    @property
    def emitted(self) -> bool:
        return self.kind == "normal" and not self.hidden and self.mode not in (MODE_MUTED, MODE_BYPASS)


@dataclass(slots=True)
class UiGraph:
    """A whole UI workflow, subgraphs flattened: nodes by key (file order) and links by key."""

    nodes: dict[str, UiNode] = field(default_factory=dict)
    links: dict[str, UiLink] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Source:
    """A resolved link: output ``slot`` of emitted-candidate node ``node``."""

    node: str
    slot: int


@dataclass(frozen=True, slots=True)
class Constant:
    """A resolved PrimitiveNode: its value replaces the input."""

    value: Any


Resolved = Source | Constant | None


# -- detection ------------------------------------------------------------------------------------


def is_ui_workflow(data: Any) -> bool:
    """True for a canvas workflow: an object whose ``nodes`` is a list (``links`` a list if present)."""
    return (isinstance(data, dict) and isinstance(data.get("nodes"), list)
            and isinstance(data.get("links", []), list))


def is_api_workflow(data: Any) -> bool:
    """True for a non-empty API workflow: every value an object with a string ``class_type``."""
    return (isinstance(data, dict) and bool(data) and not is_ui_workflow(data)
            and all(isinstance(n, dict) and isinstance(n.get("class_type"), str) for n in data.values()))


# -- parsing --------------------------------------------------------------------------------------


def parse_ui_workflow(data: Any) -> UiGraph:
    """Parse and check a UI workflow; subgraph instances are flattened into the one graph."""
    if not isinstance(data, dict):
        raise WorkflowFormatError(f"a UI workflow must be a JSON object, not {type(data).__name__}")
    nodes = data.get("nodes")
    if not isinstance(nodes, list):
        raise WorkflowFormatError("a UI workflow needs a 'nodes' list")
    links = data.get("links") or []
    if not isinstance(links, list):
        raise WorkflowFormatError("the UI workflow's 'links' must be a list")
    graph = UiGraph()
    _ScopeParser(graph, _subgraph_definitions(data)).add_scope(nodes, links, prefix="", stack=())
    return graph


def _subgraph_definitions(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """All subgraph definitions by id, including ones nested in other definitions."""
    found: dict[str, dict[str, Any]] = {}
    pending = [data]
    while pending:
        holder = pending.pop()
        definitions = holder.get("definitions") or {}
        subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
        if subgraphs is None:
            continue
        if not isinstance(subgraphs, list):
            raise WorkflowFormatError("'definitions.subgraphs' must be a list")
        for sub in subgraphs:
            if not isinstance(sub, dict) or not isinstance(sub.get("id"), str):
                raise WorkflowFormatError("each subgraph definition must be an object with a string 'id'")
            if sub["id"] not in found:
                found[sub["id"]] = sub
                pending.append(sub)
    return found


class _ScopeParser:
    """Adds one graph scope (top level or a subgraph instance) to a :class:`UiGraph`."""

    def __init__(self, graph: UiGraph, subgraphs: dict[str, dict[str, Any]]) -> None:
        self.graph = graph
        self.subgraphs = subgraphs

    def add_scope(self, nodes: list[Any], links: list[Any], prefix: str, stack: tuple[str, ...],
                  hidden: bool = False) -> list[UiLink]:
        scope_nodes = [self._add_node(raw, i, prefix, hidden) for i, raw in enumerate(nodes)]
        scope_links = [link for i, raw in enumerate(links) if (link := self._add_link(raw, i, prefix))]
        for node in scope_nodes:
            if node.kind == "subgraph":
                self._add_subgraph_instance(node, stack)
        return scope_links

    def _add_node(self, raw: Any, index: int, prefix: str, hidden: bool) -> UiNode:
        node = parse_node(raw, index, prefix, self.subgraphs)
        node.hidden = hidden
        if node.key in self.graph.nodes:
            raise WorkflowFormatError(f"node id {node.key} appears twice in the workflow")
        self.graph.nodes[node.key] = node
        return node

    def _add_link(self, raw: Any, index: int, prefix: str) -> UiLink | None:
        """The parsed link; ``None`` for a stale entry whose target node does not exist (no input can
        name it, so it feeds nothing; the frontend's link check drops such entries on load — one of
        ComfyUI's official templates carries one inside a subgraph)."""
        link = parse_link(raw, index, prefix)
        known = self.graph.links.get(link.key)
        if known is not None and known != link:
            raise WorkflowFormatError(f"link {link.id} is defined twice with different ends")
        if link.target not in self.graph.nodes and not link.target.endswith(f":{SUBGRAPH_OUTPUT_ID}"):
            return None
        self.graph.links[link.key] = link
        return link

    def _add_subgraph_instance(self, outer: UiNode, stack: tuple[str, ...]) -> None:
        sub = self.subgraphs[outer.type]
        if outer.type in stack:
            raise WorkflowFormatError(f"subgraph {outer.type} (node {outer.key}) contains itself")
        nodes, links = sub.get("nodes") or [], sub.get("links") or []
        if not isinstance(nodes, list) or not isinstance(links, list):
            raise WorkflowFormatError(f"subgraph {outer.type} needs 'nodes' and 'links' lists")
        prefix = outer.key + ":"
        hide = outer.hidden or outer.mode in (MODE_MUTED, MODE_BYPASS)
        inner_links = self.add_scope(nodes, links, prefix, stack + (outer.type,), hide)
        outer.passthrough = {l.target_slot: l.key for l in inner_links
                             if l.target == f"{prefix}{SUBGRAPH_OUTPUT_ID}"}
        declared = sub.get("inputs") or []
        boundary = UiNode(key=f"{prefix}{SUBGRAPH_INPUT_ID}", type="SubgraphInput",
                          kind="subgraph_input", hidden=True,
                          passthrough=_subgraph_input_links(outer, declared),
                          constants=self._promoted_values(outer, declared, inner_links, prefix))
        self.graph.nodes[boundary.key] = boundary

    def _promoted_values(self, outer: UiNode, declared: list[Any], inner_links: list[UiLink],
                         prefix: str) -> dict[int, Any]:
        """Subgraph input slot k → the subgraph node's value for it, for the inputs that feed a widget
        inside (the node's widgets, in input order)."""
        boundary = f"{prefix}{SUBGRAPH_INPUT_ID}"
        promoted: list[tuple[int, str]] = []
        for k, spec in enumerate(declared):
            name = spec.get("name") if isinstance(spec, dict) else None
            if not isinstance(name, str):
                continue
            for link in inner_links:
                if link.origin != boundary or link.origin_slot != k:
                    continue
                target = self.graph.nodes.get(link.target)
                slots = target.inputs if target is not None else []
                if any(slot.link == link.key and slot.widget for slot in slots):
                    promoted.append((k, name))
                    break
        named = outer.widgets_named or (outer.widgets_values if isinstance(outer.widgets_values, dict) else None)
        positional = outer.widgets_values if isinstance(outer.widgets_values, list) else []
        values: dict[int, Any] = {}
        for index, (k, name) in enumerate(promoted):
            if named is not None and name in named:
                values[k] = named[name]
            elif named is None and index < len(positional):
                values[k] = positional[index]
        return values


def _subgraph_input_links(outer: UiNode, declared: list[Any]) -> dict[int, str | None]:
    """Subgraph input slot k → the link feeding the outer node's input of that name (or index)."""
    by_name = {i.name: i.link for i in outer.inputs}
    names = {spec.get("name") for spec in declared if isinstance(spec, dict)}
    result: dict[int, str | None] = {}
    for k, spec in enumerate(declared):
        name = spec.get("name") if isinstance(spec, dict) else None
        if name in by_name:
            result[k] = by_name[name]
        elif k < len(outer.inputs) and outer.inputs[k].name not in names:
            # an input saved under another name: matched by position. Not when it is another input's
            # slot: exports leave out unlinked widget slots, which shifts the positions
            result[k] = outer.inputs[k].link
    return result


def parse_node(raw: Any, index: int, prefix: str = "",
               subgraphs: Mapping[str, Any] | None = None) -> UiNode:
    """One node object of the ``nodes`` list (``index`` only names it in errors)."""
    if not isinstance(raw, dict):
        raise WorkflowFormatError(f"nodes[{index}] is not an object")
    node_id = raw.get("id")
    if isinstance(node_id, bool) or not isinstance(node_id, (int, str)) or node_id == "":
        raise WorkflowFormatError(f"nodes[{index}] has no valid 'id' (got {node_id!r})")
    key = f"{prefix}{node_id}"
    type_ = raw.get("type")
    if not isinstance(type_, str) or not type_:
        raise WorkflowFormatError(f"node {key} has no 'type' string")
    mode = raw.get("mode", 0)
    if mode is None:
        mode = 0
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise WorkflowFormatError(f"node {key} ({type_}) has mode {mode!r}; expected an integer 0-4")
    widgets_values = raw.get("widgets_values")
    if widgets_values is not None and not isinstance(widgets_values, (list, dict)):
        raise WorkflowFormatError(f"node {key} ({type_}): 'widgets_values' must be a list or an object")
    widgets_named = raw.get("widgets_values_named")
    title = raw.get("title")
    kind = _node_kind(type_, subgraphs or {})
    inputs = _parse_inputs(raw.get("inputs"), key, type_, prefix)
    node = UiNode(key=key, type=type_, kind=kind, mode=mode,
                  title=title if isinstance(title, str) and title else None,
                  inputs=inputs, inputs_given=raw.get("inputs") is not None,
                  outputs=_parse_outputs(raw.get("outputs"), key, type_),
                  widgets_values=widgets_values,
                  widgets_named=widgets_named if isinstance(widgets_named, dict) else None)
    if kind == "reroute":
        node.passthrough = {0: inputs[0].link if inputs else None}
    return node


def _node_kind(type_: str, subgraphs: Mapping[str, Any]) -> NodeKind:
    if type_ == "Reroute":
        return "reroute"
    if type_ == "PrimitiveNode":
        return "primitive"
    if type_ in VIRTUAL_TYPES:
        return "note"
    if type_ in subgraphs:
        return "subgraph"
    return "normal"


def _parse_inputs(raw: Any, key: str, type_: str, prefix: str) -> list[UiInput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise WorkflowFormatError(f"node {key} ({type_}): 'inputs' must be a list")
    inputs = []
    for i, slot in enumerate(raw):
        if not isinstance(slot, dict):
            raise WorkflowFormatError(f"node {key} ({type_}): inputs[{i}] is not an object")
        widget = slot.get("widget")
        name = widget.get("name") if isinstance(widget, dict) and widget.get("name") else slot.get("name")
        link = slot.get("link")
        if link is not None and (isinstance(link, bool) or not isinstance(link, (int, str))):
            raise WorkflowFormatError(f"node {key} ({type_}): input {name!r} has link {link!r}; "
                                      "expected a link id or null")
        inputs.append(UiInput(name=str(name or ""), type=str(slot.get("type") or ANY),
                              link=None if link is None else f"{prefix}{link}",
                              widget=isinstance(widget, dict)))
    return inputs


def _parse_outputs(raw: Any, key: str, type_: str) -> list[UiOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise WorkflowFormatError(f"node {key} ({type_}): 'outputs' must be a list")
    outputs = []
    for i, slot in enumerate(raw):
        if not isinstance(slot, dict):
            raise WorkflowFormatError(f"node {key} ({type_}): outputs[{i}] is not an object")
        outputs.append(UiOutput(name=str(slot.get("name") or ""), type=str(slot.get("type") or ANY)))
    return outputs


def parse_link(raw: Any, index: int, prefix: str = "") -> UiLink:
    """A link as a 6-array (schema 0.4) or an object (schema 1 / subgraph definitions)."""
    if isinstance(raw, list):
        if len(raw) != 6:
            raise WorkflowFormatError(
                f"links[{index}] has {len(raw)} entries; expected 6: "
                "[link_id, origin_id, origin_slot, target_id, target_slot, type]")
        link_id, origin, origin_slot, target, target_slot, type_ = raw
    elif isinstance(raw, dict):
        try:
            link_id, origin, origin_slot, target, target_slot = (
                raw[k] for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot"))
        except KeyError as exc:
            raise WorkflowFormatError(f"links[{index}] lacks {exc.args[0]!r}") from None
        type_ = raw.get("type")
    else:
        raise WorkflowFormatError(f"links[{index}] is neither an array nor an object")
    for what, value in (("id", link_id), ("origin id", origin), ("target id", target)):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise WorkflowFormatError(f"link {link_id!r} (links[{index}]) has a bad {what}: {value!r}")
    for what, value in (("origin slot", origin_slot), ("target slot", target_slot)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise WorkflowFormatError(f"link {link_id} has {what} {value!r}; expected an integer")
    return UiLink(key=f"{prefix}{link_id}", id=link_id, origin=f"{prefix}{origin}",
                  origin_slot=origin_slot, target=f"{prefix}{target}", target_slot=target_slot,
                  type=str(type_ if type_ is not None else ANY))


# -- widgets_values → widget inputs ---------------------------------------------------------------


def declared_inputs(cls: type[Node]) -> list[Input]:
    """Inputs in ComfyUI's declared order: required, then optional."""
    return list(cls.required_inputs()) + list(cls.optional_inputs())


def is_canvas_widget(cls: type[Node], spec: Input) -> bool:
    """True when the canvas keeps this input's value in ``widgets_values`` (``Node.canvas_widgets`` too)."""
    return spec.is_widget or spec.name in cls.canvas_widgets


def widget_inputs(cls: type[Node]) -> list[Input]:
    return [spec for spec in declared_inputs(cls) if is_canvas_widget(cls, spec)]


def canonical_slots(cls: type[Node]) -> list[str]:
    """Input slot names as the current canvas lays them out: sockets, then widget slots."""
    specs = declared_inputs(cls)
    return ([s.name for s in specs if not is_canvas_widget(cls, s)]
            + [s.name for s in specs if is_canvas_widget(cls, s)])


def widget_extras(spec: Input) -> tuple[ExtraKind, ...]:
    """The entries the canvas stores after this widget's value in ``widgets_values``."""
    if spec.type in (INT, FLOAT) and (spec.control_after_generate
                                      or (spec.type == INT and spec.name in SEED_NAMES)):
        return ("control",)
    if spec.type == COMBO and spec.control_after_generate:
        return ("control", "filter")
    return ()


def widget_accepts(spec: Input | None, value: Any) -> bool:
    """Could ``value`` be the stored value of widget ``spec``? (``None``: no widget, never.)"""
    if spec is None:
        return False
    if spec.type in (INT, FLOAT):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.type == BOOLEAN:
        return isinstance(value, bool)
    if spec.type == STRING:
        return isinstance(value, str)
    if spec.type == COMBO:
        if not isinstance(value, str):
            return False
        try:
            choices = spec.current_choices()
        except Exception:  # a choice list that cannot be built now: assume it could hold the value
            return True
        return value in choices
    return True


def _looks_like_extra(kind: ExtraKind, value: Any, next_widget: Input | None) -> bool:
    if kind == "control":
        is_control = isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)
        return is_control and not widget_accepts(next_widget, value)
    return isinstance(value, str) and not widget_accepts(next_widget, value)


def map_widget_values(cls: type[Node], values: list[Any] | dict[str, Any] | None,
                      node_key: str = "?") -> dict[str, Any]:
    """Widget input values from a node's ``widgets_values``; absent ones take the widget default.

    When the list is long enough to hold every control/filter/upload entry it is read positionally,
    as the canvas does. A shorter list (older files wrote no control value) is read by value: an
    entry after a control-capable widget is skipped only when it is a control value that the next
    widget could not hold. The upload button's entry (``"image"``) comes after all widgets, so it
    is never read.
    """
    widgets = widget_inputs(cls)
    if isinstance(values, dict):
        found = {w.name: values[w.name] for w in widgets if w.name in values}
    elif isinstance(values, list) and cls.dynamic_combos and len(values) < _full_length(widgets):
        found = _map_dynamic(cls, widgets, values)
    elif isinstance(values, list) or values is None:
        found = _map_positional(widgets, values or [])
    else:
        raise WorkflowFormatError(f"node {node_key}: 'widgets_values' must be a list or an object")
    result: dict[str, Any] = {}
    for widget in widgets:
        if widget.name in found:
            result[widget.name] = _wrap_array(found[widget.name])
        else:
            result.update(_widget_default(widget))
    return result


def _full_length(widgets: list[Input]) -> int:
    """How many entries ``widgets_values`` has when it holds every widget and its extras."""
    return sum(1 + len(widget_extras(w)) for w in widgets)


def _map_dynamic(cls: type[Node], widgets: list[Input], values: list[Any]) -> dict[str, Any]:
    """ComfyUI's layout for a class with DynamicCombo inputs (``Node.dynamic_combos``): each combo's
    value is followed by the widgets of the option it holds (nested combos likewise), then the next
    widget. A list holding every widget is our canvas's layout (declared order) and is not read here."""
    by_name = {w.name: w for w in widgets}
    fields = {name for options in cls.dynamic_combos.values() for names in options.values() for name in names}
    found: dict[str, Any] = {}
    pos = 0

    def walk(names: Iterable[str]) -> None:
        nonlocal pos
        for name in names:
            widget = by_name.get(name)
            if widget is None:                   # a socket among the option's inputs: no stored value
                continue
            if pos >= len(values):
                return
            found[name] = values[pos]
            pos += 1 + len(widget_extras(widget))
            options = cls.dynamic_combos.get(name)
            if options is not None and isinstance(found[name], str):
                walk(options.get(found[name], ()))

    walk(w.name for w in widgets if w.name not in fields)
    return found


def _map_positional(widgets: list[Input], values: list[Any]) -> dict[str, Any]:
    full = _full_length(widgets)
    positional = len(values) >= full
    found: dict[str, Any] = {}
    pos = 0
    for k, widget in enumerate(widgets):
        if pos >= len(values):
            break
        found[widget.name] = values[pos]
        pos += 1
        next_widget = widgets[k + 1] if k + 1 < len(widgets) else None
        for kind in widget_extras(widget):
            if pos < len(values) and (positional or _looks_like_extra(kind, values[pos], next_widget)):
                pos += 1
            else:
                break
    return found


def _widget_default(spec: Input) -> dict[str, Any]:
    """What a freshly created canvas widget holds (its default, or a combo's first choice), if any."""
    if spec.has_default:
        return {spec.name: _wrap_array(spec.default)}
    if spec.type != COMBO:
        return {}
    try:
        choices = spec.current_choices()
    except Exception:  # a choice list that cannot be built now: leave the input to validation
        return {}
    return {spec.name: choices[0]} if choices else {}


def _wrap_array(value: Any) -> Any:
    """The frontend sends array constants as ``{"__value__": [...]}`` so they are not taken as links."""
    return {"__value__": value} if isinstance(value, list) else value


# -- link resolution ------------------------------------------------------------------------------


class _Resolver:
    """Follows a link back to a real source through reroutes, primitives, bypasses and subgraphs.

    ``registry`` (optional) names the widgets of inner nodes: a subgraph input that the subgraph node
    neither links nor gives a value for, but that also feeds a widget inside (a promoted widget saved
    as ``properties.proxyWidgets``, its value left on the inner node), carries that widget's value to
    its other targets, as the frontend's proxy widget does."""

    def __init__(self, graph: UiGraph, registry: NodeRegistry | None = None) -> None:
        self.graph = graph
        self.registry = registry

    def resolve(self, link_key: str | None, wanted: str) -> Resolved:
        return self._follow(link_key, wanted, set())

    def _follow(self, link_key: str | None, wanted: str, seen: set[str]) -> Resolved:
        link = self.graph.links.get(link_key) if link_key is not None else None
        if link is None:
            return None
        if link.key in seen:
            raise WorkflowFormatError(f"link {link.id} is part of a loop of reroutes or bypassed nodes")
        seen.add(link.key)
        origin = self.graph.nodes.get(link.origin)
        if origin is None or origin.kind == "note":
            return None
        if origin.kind == "primitive":
            return _primitive_value(origin)
        if origin.mode == MODE_BYPASS and origin.kind in ("normal", "subgraph"):
            return self._follow(self._bypass_input(origin, link, wanted), wanted, seen)
        if origin.passthrough is not None:
            through = origin.passthrough.get(link.origin_slot)
            if through is None and origin.constants and link.origin_slot in origin.constants:
                return Constant(origin.constants[link.origin_slot])  # a promoted widget's value
            if through is None and origin.kind == "subgraph_input":
                return self._inner_widget_value(origin, link)
            return self._follow(through, wanted, seen)
        return Source(origin.key, link.origin_slot)

    def _inner_widget_value(self, boundary: UiNode, link: UiLink) -> Resolved:
        """The value of an inner widget fed by the same (unlinked, valueless) subgraph input slot."""
        if self.registry is None:
            return None
        for other in self.graph.links.values():
            if other.origin != boundary.key or other.origin_slot != link.origin_slot or other.key == link.key:
                continue
            target = self.graph.nodes.get(other.target)
            cls = self.registry.get(target.type) if target is not None and target.kind == "normal" else None
            slot = next((i for i in target.inputs if i.link == other.key and i.widget), None) if cls else None
            if slot is None:
                continue
            values = map_widget_values(cls, target.widgets_values, target.key)
            if slot.name in values:
                return Constant(values[slot.name])
        return None

    @staticmethod
    def _bypass_input(node: UiNode, link: UiLink, wanted: str) -> str | None:
        """The link a bypassed node passes on for its output ``link.origin_slot``."""
        inputs = node.inputs
        slot = link.origin_slot
        if not inputs:
            return None
        if wanted == ANY:
            return (inputs[slot] if slot < len(inputs) else inputs[0]).link
        out_type = node.outputs[slot].type if slot < len(node.outputs) else link.type
        if slot < len(inputs) and _compatible(inputs[slot].type, wanted) \
                and _compatible(inputs[slot].type, out_type):
            return inputs[slot].link
        for candidate in inputs:
            if candidate.type == wanted:
                return candidate.link
        for candidate in inputs:
            if _compatible(candidate.type, wanted):
                return candidate.link
        return None


def _compatible(produced: str, wanted: str) -> bool:
    return types_match(produced, wanted) or produced.upper() == wanted.upper()


def _primitive_value(node: UiNode) -> Resolved:
    values = node.widgets_values
    if isinstance(values, list) and values:
        return Constant(values[0])
    if isinstance(values, dict) and "value" in values:
        return Constant(values["value"])
    return None


# -- conversion -----------------------------------------------------------------------------------


def ui_to_api(data: Any, registry: NodeRegistry, *,
              virtual_types: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Convert a UI workflow into the API format ``{id: {class_type, inputs, _meta: {title}}}``.

    ``virtual_types``: further canvas-only node types to skip (e.g. a custom pack's helper nodes).
    """
    graph = parse_ui_workflow(data)
    skip = frozenset(virtual_types)
    resolver = _Resolver(graph, registry)
    prompt: dict[str, dict[str, Any]] = {}
    linked: dict[str, set[str]] = {}
    for node in graph.nodes.values():
        if node.emitted and node.type not in skip:
            prompt[node.key], linked[node.key] = _convert_node(node, graph, registry, resolver)
    _drop_links_to_missing(prompt, linked)
    return prompt


def _convert_node(node: UiNode, graph: UiGraph, registry: NodeRegistry,
                  resolver: _Resolver) -> tuple[dict[str, Any], set[str]]:
    cls = registry.get(node.type)
    meta: dict[str, Any] = {"title": node.title or (cls.display_name if cls else None) or node.type}
    if cls is not None:
        inputs = map_widget_values(cls, node.widgets_values, node.key)
    else:
        inputs = {}
        if node.widgets_values:
            meta["widgets_values"] = node.widgets_values
    linked: set[str] = set()
    for name, link_key, wanted in _linked_inputs(node, graph, cls):
        resolved = resolver.resolve(link_key, wanted)
        if isinstance(resolved, Source):
            inputs[name] = [resolved.node, resolved.slot]
            linked.add(name)
        elif isinstance(resolved, Constant):
            inputs[name] = _wrap_array(resolved.value)
    return {"class_type": node.type, "inputs": inputs, "_meta": meta}, linked


def _linked_inputs(node: UiNode, graph: UiGraph,
                   cls: type[Node] | None) -> list[tuple[str, str, str]]:
    """``(input name, link key, wanted type)`` for each connected input of ``node``."""
    declared = cls.INPUTS if cls is not None else {}
    if node.inputs_given:
        return [(i.name, i.link, declared[i.name].type if i.name in declared else i.type)
                for i in node.inputs if i.link is not None]
    return _linked_inputs_from_links(node, graph, cls)


def _linked_inputs_from_links(node: UiNode, graph: UiGraph,
                              cls: type[Node] | None) -> list[tuple[str, str, str]]:
    """A node written without an ``inputs`` list: name its links by ``target_slot``."""
    incoming = [l for l in graph.links.values() if l.target == node.key]
    if not incoming:
        return []
    if cls is None:
        raise WorkflowFormatError(f"node {node.key} ({node.type}) has links but no 'inputs' list, "
                                  "and its class is unknown, so the links cannot be named")
    slots = canonical_slots(cls)
    result = []
    for link in incoming:
        if not 0 <= link.target_slot < len(slots):
            raise WorkflowFormatError(f"link {link.id} goes to input slot {link.target_slot} of node "
                                      f"{node.key} ({node.type}), which has {len(slots)} inputs")
        name = slots[link.target_slot]
        result.append((name, link.key, cls.INPUTS[name].type))
    return result


def _drop_links_to_missing(prompt: dict[str, dict[str, Any]], linked: dict[str, set[str]]) -> None:
    """Step 4 of the frontend: an input linked to a node that was not emitted (muted) is removed."""
    for key, names in linked.items():
        inputs = prompt[key]["inputs"]
        for name in names:
            if inputs[name][0] not in prompt:
                del inputs[name]


__all__ = ["UiGraph", "UiNode", "UiInput", "UiOutput", "UiLink", "Source", "Constant",
           "is_ui_workflow", "is_api_workflow", "parse_ui_workflow", "parse_node", "parse_link",
           "map_widget_values", "widget_inputs", "is_canvas_widget", "widget_extras", "canonical_slots",
           "ui_to_api",
           "VIRTUAL_TYPES", "CONTROL_VALUES"]
