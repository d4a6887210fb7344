"""Validation: a workflow becomes a checked :class:`~nodegraph.plan.Plan`, or every error at once.

Each problem is a :class:`~nodegraph.errors.NodeError` with a machine-readable ``kind`` and a sentence
that names the node, the input and the fix. Every error is reported at once: a node of unknown class
does not stop the check (ComfyUI stops there), the inputs of the other nodes — those the outputs need,
and those the unknown node links to — are checked as well. Coercion is ComfyUI's int→float only (and integral floats
for INT inputs, which lose nothing); strings are never turned into numbers, nor numbers into booleans.
An input name the class does not accept (:meth:`~nodegraph.node.Node.accepts_input`) is an error
(``unknown_input``, with the closest declared name), so a misspelt input never runs with its default.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from typing import Any, Iterable

from .context import Paths
from .errors import NodeError, ValidationFailed
from .node import Input, Node, accepts_paths
from .plan import Plan, PlannedNode
from .registry import NodeRegistry
from .types import ANY, BOOLEAN, COMBO, FLOAT, INT, INT64_MIN, STRING, UINT64_MAX, types_match
from .workflow.api_format import Link, Workflow, WorkflowNode

#: Error kinds, for reference and for tests.
KINDS = ("invalid_node", "unknown_node_type", "required_input_missing", "bad_linked_input",
         "link_required", "return_type_mismatch", "value_below_min", "value_above_max",
         "value_not_in_list", "invalid_value", "custom_validation_failed",
         "exception_during_validation", "cycle", "no_outputs", "unknown_input")

#: kinds that concern the prompt as a whole: partial validation never leaves them out
PROMPT_KINDS = frozenset({"unknown_node_type", "invalid_node", "cycle", "no_outputs"})


def _label(node: WorkflowNode) -> str:
    return f"node {node.id} ({node.class_type})" if node.class_type else f"node {node.id}"


class _Validator:
    def __init__(self, workflow: Workflow, registry: NodeRegistry, paths: Paths | None = None):
        self.workflow = workflow
        self.registry = registry
        self.paths = paths if paths is not None else Paths()
        self.errors: list[NodeError] = []

    def error(self, kind: str, node: WorkflowNode | None, message: str, input_name: str | None = None,
              **extra: Any) -> None:
        self.errors.append(NodeError(kind, message, node.id if node else None,
                                     node.class_type if node else None, input_name, extra))

    # -- whole workflow -----------------------------------------------------------------------

    def run(self, targets: Iterable[str] | None, partial: bool = False) -> Plan:
        nodes = self.workflow.nodes
        classes: dict[str, type[Node]] = {}
        get = self.registry.get
        for node in nodes.values():
            cls = get(node.class_type) if not node.problem else None
            if cls is None:
                cls = self.check_node_class(node)
            if cls is not None:
                classes[node.id] = cls
        outputs = self.pick_outputs(classes, targets)
        # a node of unknown class might be an output: what it links to is checked too, so that every
        # error of the prompt is reported at once (ComfyUI stops at the unknown class)
        unknown = [nid for nid in nodes if nid not in classes] if len(classes) < len(nodes) else []
        order, has_cycle = depth_first_order(self.workflow, outputs + unknown)
        planned: dict[str, PlannedNode] = {}
        for nid in order:
            cls = classes.get(nid)
            if cls is not None:
                planned[nid] = self.check_inputs(nodes[nid], cls, classes)
        if has_cycle:
            self.report_cycle(order)
        plan = Plan(planned, outputs, order)
        if self.errors:
            kept = keep_valid_outputs(plan, self.errors) if partial else None
            if kept is None:
                raise ValidationFailed(self.errors)
            return kept
        return plan

    def check_node_class(self, node: WorkflowNode) -> type[Node] | None:
        if node.problem:
            self.error("invalid_node", node, node.problem)
            return None
        cls = self.registry.get(node.class_type)
        if cls is None:
            close = _close_names(node.class_type, self.registry.names())
            hint = f" Did you mean {', '.join(close)}?" if close else \
                " Install the node pack that provides it, or remove the node."
            self.error("unknown_node_type", node,
                       f"{_label(node)}: there is no node type '{node.class_type}'.{hint}")
        return cls

    def pick_outputs(self, classes: dict[str, type[Node]], targets: Iterable[str] | None) -> list[str]:
        outputs = [nid for nid, cls in classes.items() if cls.output_node]
        if targets is not None:
            wanted = {str(t) for t in targets}
            for t in sorted(wanted - set(self.workflow.nodes)):
                self.error("no_outputs", None, f"the requested output node '{t}' is not in the workflow")
            outputs = [nid for nid in outputs if nid in wanted]
        if not outputs and not any(e.kind == "unknown_node_type" for e in self.errors):
            self.error("no_outputs", None,
                       "the workflow has no output node (such as SaveImage or PreviewImage), so "
                       "nothing would run; add one and connect it")
        return outputs

    def report_cycle(self, needed: list[str]) -> None:
        import networkx as nx

        graph = nx.DiGraph()
        for nid in needed:
            for _, link in self.workflow.nodes[nid].links():
                if link.node_id in self.workflow.nodes:
                    graph.add_edge(link.node_id, nid)
        cycle = [edge[0] for edge in nx.find_cycle(graph)]
        first = self.workflow.nodes[cycle[0]]
        path = " → ".join(cycle + [cycle[0]])
        self.error("cycle", first, f"the links form a cycle: {path}. A workflow must be a DAG; "
                   "break the cycle (use a loop node for repetition)", nodes=cycle)

    # -- one node -----------------------------------------------------------------------------

    def check_inputs(self, node: WorkflowNode, cls: type[Node], classes: dict[str, type[Node]]) -> PlannedNode:
        constants: dict[str, Any] = {}
        links: dict[str, Link] = {}
        custom_names = _custom_validated_names(cls)
        any_type = "input_types" in custom_names  # the class checks linked types itself (ComfyUI)
        given = node.inputs
        for name, spec in cls.INPUTS.items():
            value = given.get(name, _MISSING)
            if value is _MISSING:
                if spec.has_default and spec.is_widget:
                    constants[name] = spec.default
                elif not spec.optional:
                    self.error("required_input_missing", node,
                               f"{_label(node)}: required input '{name}' ({spec.type}) is missing; "
                               f"{'connect it to an output of type ' + spec.type if not spec.is_widget else 'give it a value'}",
                               name)
            else:
                self.check_given(node, spec, value, classes, any_type, name in custom_names, constants, links)
        declared = cls.INPUTS
        for name in given:
            if name in declared:
                continue
            extra = cls.extra_input(name, type(given[name]) is Link)
            if extra is not None:  # an input the class takes beyond its declared ones (ComfyUI packs)
                self.check_given(node, extra, given[name], classes, any_type, name in custom_names, constants,
                                 links)
            elif not cls.accepts_input(name):
                self.unknown_input(node, cls, name)
        if custom_names:
            self.check_custom(node, cls, constants, links, classes)
        return PlannedNode(node.id, node.class_type, cls, constants, links,
                           parent=node.parent, display_node=node.display_node or node.id,
                           is_changed=node.is_changed)

    def check_given(self, node: WorkflowNode, spec: Input, value: Any, classes: dict[str, type[Node]],
                    any_type: bool, skip_range: bool, constants: dict[str, Any], links: dict[str, Link]) -> None:
        """Check the value a workflow gives an input; a good one goes into ``constants`` / ``links``."""
        name = spec.name
        kind = type(value)
        if kind is Link:
            if self.check_link(node, spec, value, classes, any_type):
                links[name] = value
        elif kind is list:
            self.bad_list(node, spec, value)
        elif spec.type == ANY:
            constants[name] = value
        elif "," in spec.type and any(t in _CONSTANT_TYPES for t in spec.type.split(",")):
            self.check_union_constant(node, spec, value, constants)
        elif spec.type not in _CONSTANT_TYPES:
            self.error("link_required", node,
                       f"{_label(node)}: input '{name}' takes a {spec.type} from another node's "
                       f"output, written as a link like [\"<node id>\", 0], not the constant "
                       f"{_short(value)}", name, received_value=_short(value))
        else:
            ok, coerced = self.check_constant(node, spec, value, skip_range=skip_range)
            if ok:
                constants[name] = coerced

    def check_union_constant(self, node: WorkflowNode, spec: Input, value: Any, constants: dict[str, Any]) -> None:
        """A constant for a union type (``"INT,FLOAT"``): the first widget type of the union it is
        (no range check, as ComfyUI checks none for unions)."""
        members = [t for t in spec.type.split(",") if t in _CONSTANT_TYPES and t != COMBO]
        for member in members:
            coerced = _coerce(member, value)
            if coerced is not _INVALID:
                constants[spec.name] = coerced
                return
        self.error("invalid_value", node,
                   f"{_label(node)}: input '{spec.name}' needs one of {', '.join(members)}, not {_short(value)} "
                   f"({type(value).__name__})", spec.name, received_value=_short(value))

    def unknown_input(self, node: WorkflowNode, cls: type[Node], name: str) -> None:
        self.error("unknown_input", node, unknown_input_message(_label(node), cls, name), name)

    def check_link(self, node: WorkflowNode, spec: Input, link: Link, classes: dict[str, type[Node]],
                   any_type: bool = False) -> bool:
        name = spec.name
        source = self.workflow.nodes.get(link.node_id)
        if source is None:
            self.error("bad_linked_input", node,
                       f"{_label(node)}: input '{name}' links to node '{link.node_id}', which is not "
                       "in the workflow; reconnect it to an existing node", name,
                       linked_node=link.to_json())
            return False
        source_cls = classes.get(link.node_id)
        if source_cls is None:
            return False  # the source's own error is reported there
        outputs = source_cls.outputs
        if not 0 <= link.output < len(outputs):
            self.error("bad_linked_input", node,
                       f"{_label(node)}: input '{name}' links to output {link.output} of "
                       f"{_label(source)}, which has {len(outputs)} output(s) "
                       f"(0..{len(outputs) - 1}); pick an existing output", name,
                       linked_node=link.to_json())
            return False
        produced = outputs[link.output].type
        if produced != spec.type and not any_type and not types_match(produced, spec.type):
            self.error("return_type_mismatch", node,
                       f"{_label(node)}: input '{name}' needs {spec.type} but output {link.output} of "
                       f"{_label(source)} gives {produced}; connect an output of type {spec.type}",
                       name, received_type=produced, linked_node=link.to_json())
            return False
        return True

    def bad_list(self, node: WorkflowNode, spec: Input, value: list) -> None:
        hint = ""
        if len(value) == 2 and isinstance(value[1], int) and not isinstance(value[0], str):
            hint = f" (node ids in links are strings: [\"{value[0]}\", {value[1]}])"
        self.error("bad_linked_input", node,
                   f"{_label(node)}: input '{spec.name}' got the list {_short(value)}; a link is "
                   f"[\"<node id>\", <output index>]{hint}, and a list constant is written "
                   "{\"__value__\": [...]}", spec.name, received_value=_short(value))

    def check_constant(self, node: WorkflowNode, spec: Input, value: Any, skip_range: bool) -> tuple[bool, Any]:
        coerced = _coerce(spec.type, value)
        if coerced is _INVALID:
            self.error("invalid_value", node,
                       f"{_label(node)}: input '{spec.name}' needs {_describe_type(spec.type)}, not "
                       f"{_short(value)} ({type(value).__name__})", spec.name,
                       received_value=_short(value))
            return False, None
        if skip_range:
            return True, coerced
        if spec.type in (INT, FLOAT):
            low = spec.min if spec.min is not None else (INT64_MIN if spec.type == INT else None)
            high = spec.max if spec.max is not None else (UINT64_MAX if spec.type == INT else None)
            if low is not None and coerced < low:
                self.error("value_below_min", node,
                           f"{_label(node)}: input '{spec.name}' is {coerced}, below its minimum "
                           f"{low}; use a value from {low} to {high}", spec.name,
                           received_value=coerced, min=low)
                return False, None
            if high is not None and coerced > high:
                self.error("value_above_max", node,
                           f"{_label(node)}: input '{spec.name}' is {coerced}, above its maximum "
                           f"{high}; use a value from {low} to {high}", spec.name,
                           received_value=coerced, max=high)
                return False, None
        elif spec.type == COMBO:
            choices = spec.current_choices(self.paths)
            if coerced not in choices:
                shown = ", ".join(repr(c) for c in choices[:20]) + (" …" if len(choices) > 20 else "")
                self.error("value_not_in_list", node,
                           f"{_label(node)}: input '{spec.name}' is {coerced!r}, which is not one of "
                           f"its choices: {shown or '(none available)'}", spec.name,
                           received_value=coerced, choices=choices[:20])
                return False, None
        return True, coerced

    def check_custom(self, node: WorkflowNode, cls: type[Node], constants: dict, links: dict,
                     classes: dict[str, type[Node]]) -> None:
        if cls.validate_inputs.__func__ is Node.validate_inputs.__func__:  # type: ignore[attr-defined]
            return
        wanted = _custom_validated_names(cls)
        kwargs = dict(constants) if _takes_kwargs(cls) else {}
        kwargs.update({k: constants.get(k) for k in wanted if k != "*"})  # linked ones: None
        if "input_types" in wanted:  # ComfyUI's VALIDATE_INPUTS(input_types=): each linked input's type
            kwargs["input_types"] = {name: classes[link.node_id].outputs[link.output].type
                                     for name, link in links.items() if link.node_id in classes}
        if accepts_paths(cls.validate_inputs):
            kwargs["paths"] = self.paths
        try:
            verdict = cls.validate_inputs(**kwargs)
        except Exception as exc:
            self.error("exception_during_validation", node,
                       f"{_label(node)}: its input check raised {type(exc).__name__}: {exc}",
                       exception_type=type(exc).__name__)
            return
        if verdict is not True:
            self.error("custom_validation_failed", node, f"{_label(node)}: {verdict}")


_INVALID = object()
_MISSING = object()
_CONSTANT_TYPES = frozenset({INT, FLOAT, STRING, BOOLEAN, COMBO})


def _coerce(type_: str, value: Any) -> Any:
    if type_ == INT:
        if type(value) is int:
            return value
        if type(value) is float and math.isfinite(value) and value.is_integer():
            return int(value)
        return _INVALID
    if type_ == FLOAT:
        if type(value) is int:
            return float(value)
        if type(value) is float and math.isfinite(value):
            return value
        return _INVALID
    if type_ == BOOLEAN:
        return value if type(value) is bool else _INVALID
    if type_ in (STRING, COMBO):
        return value if type(value) is str else _INVALID
    return value


def _describe_type(type_: str) -> str:
    return {INT: "a whole number (INT)", FLOAT: "a finite number (FLOAT)",
            BOOLEAN: "true or false (BOOLEAN)", STRING: "a text string (STRING)",
            COMBO: "one of its choices (a string)"}.get(type_, type_)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.lru_cache(maxsize=None)
def _custom_validated_names(cls: type[Node]) -> frozenset[str]:
    """Inputs that ``validate_inputs`` takes by name skip the generic range/choice checks (as ComfyUI).

    Empty when the class has no custom check; ``{"*"}`` marks a check that takes no named inputs.
    """
    if cls.validate_inputs.__func__ is Node.validate_inputs.__func__:  # type: ignore[attr-defined]
        return frozenset()
    params = inspect.signature(cls.validate_inputs).parameters
    names = frozenset(n for n, p in params.items()
                      if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "paths")
    return names or frozenset({"*"})


def _takes_kwargs(cls: type[Node]) -> bool:
    params = inspect.signature(cls.validate_inputs).parameters.values()
    return any(p.kind == p.VAR_KEYWORD for p in params)


def unknown_input_message(label: str, cls: type[Node], name: str) -> str:
    """The sentence for an input name the class does not declare, with the closest real names."""
    declared = list(cls.INPUTS)
    close = difflib.get_close_matches(name, declared, n=1, cutoff=0.5) or \
        difflib.get_close_matches(name.lower(), [n.lower() for n in declared], n=1, cutoff=0.5)
    if close:
        real = next(n for n in declared if n.lower() == close[0].lower())
        hint = f"did you mean '{real}'?"
    elif declared:
        hint = "its inputs are " + ", ".join(f"'{n}'" for n in declared[:12]) + \
            (" …" if len(declared) > 12 else "")
    else:
        hint = "it takes no inputs"
    return f"{label} has no input '{name}'; {hint}"


def _close_names(name: str, names: list[str]) -> list[str]:
    return difflib.get_close_matches(name, names, n=3, cutoff=0.75)


def depth_first_order(workflow: Workflow, roots: list[str]) -> tuple[list[str], bool]:
    """Every node the roots reach through links (lazy ones too), producers first; and whether the
    links met a cycle on the way. Links to absent nodes are skipped (reported per input)."""
    nodes = workflow.nodes
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    order: list[str] = []
    cycle = False
    for root in roots:
        if root in state or root not in nodes:
            continue
        state[root] = 1
        stack = [(root, iter([v.node_id for v in nodes[root].inputs.values() if type(v) is Link]))]
        while stack:
            node_id, producers = stack[-1]
            for src in producers:
                seen = state.get(src)
                if seen is None:
                    if src in nodes:
                        state[src] = 1
                        stack.append((src, iter([v.node_id for v in nodes[src].inputs.values()
                                                 if type(v) is Link])))
                        break
                elif seen == 1:
                    cycle = True
            else:
                stack.pop()
                state[node_id] = 2
                order.append(node_id)
    return order, cycle


def topological_order(workflow: Workflow, ids: Iterable[str]) -> list[str] | None:
    """Kahn's algorithm over the given nodes' links; ``None`` when they contain a cycle."""
    ids = list(ids)
    wanted = set(ids)
    indegree = {nid: 0 for nid in ids}
    consumers: dict[str, list[str]] = {nid: [] for nid in ids}
    for nid in ids:
        for _, link in workflow.nodes[nid].links():
            src = link.node_id
            if src in wanted:
                indegree[nid] += 1
                consumers[src].append(nid)
    ready = [nid for nid in ids if indegree[nid] == 0]
    order: list[str] = []
    while ready:
        nid = ready.pop()
        order.append(nid)
        for consumer in consumers[nid]:
            indegree[consumer] -= 1
            if indegree[consumer] == 0:
                ready.append(consumer)
    return order if len(order) == len(ids) else None


def validate(workflow: Workflow | dict, registry: NodeRegistry, targets: Iterable[str] | None = None,
             paths: Paths | None = None, *, partial: bool = False) -> Plan:
    """Check a workflow; return its :class:`Plan` or raise :class:`ValidationFailed` with all errors.

    ``paths``: the folders that file inputs are checked against (default ``Paths()``). ``partial``:
    leave out the outputs whose branch holds an error instead of failing (see
    :func:`keep_valid_outputs`); the plan's ``node_errors`` lists those errors.
    """
    if not isinstance(workflow, Workflow):
        workflow = Workflow.from_api(workflow)
    return _Validator(workflow, registry, paths).run(targets, partial)


def keep_valid_outputs(plan: Plan, errors: list[NodeError]) -> Plan | None:
    """The plan of the outputs that no error touches, with ``errors`` as its ``node_errors`` (ComfyUI
    runs a prompt's valid outputs and reports the others); ``None`` when an error concerns the whole
    prompt, names no node, or touches every output.

    ``plan`` may hold the invalid nodes themselves: a node is left out when it has an error or one of
    its producers (through any link, lazy ones too) is left out. ``plan.order`` lists producers first,
    so one pass forward marks the broken branches and one pass backward keeps what the valid outputs
    need."""
    if any(e.kind in PROMPT_KINDS or e.node_id is None for e in errors):
        return None
    broken = {e.node_id for e in errors}
    for nid in plan.order:
        node = plan.nodes.get(nid)
        if node is not None and nid not in broken and any(l.node_id in broken for l in node.links.values()):
            broken.add(nid)
    outputs = [nid for nid in plan.outputs if nid not in broken]
    if not outputs:
        return None
    needed = set(outputs)
    for nid in reversed(plan.order):
        if nid in needed:
            needed.update(l.node_id for l in plan.nodes[nid].links.values())
    return Plan({nid: plan.nodes[nid] for nid in plan.order if nid in needed}, outputs,
                [nid for nid in plan.order if nid in needed], list(errors))


def validate_node(node: WorkflowNode, workflow: Workflow, registry: NodeRegistry,
                  paths: Paths | None = None) -> tuple[PlannedNode | None, list[NodeError]]:
    """Validate one node in the context of ``workflow`` (used for nodes added by expansion)."""
    validator = _Validator(workflow, registry, paths)
    cls = validator.check_node_class(node)
    planned = None
    if cls is not None:
        classes = {nid: c for nid, n in workflow.nodes.items() if (c := registry.get(n.class_type))}
        planned = validator.check_inputs(node, cls, classes)
    return (None if validator.errors else planned), validator.errors
