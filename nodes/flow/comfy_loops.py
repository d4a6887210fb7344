"""ComfyUI's Start Loop / End Loop on the engine's run-time expansion.

In a ComfyUI workflow the loop body is ordinary nodes between a ``StartLoop`` and its ``EndLoop``: the
nodes reachable from StartLoop's outputs up to EndLoop. Inputs and outputs are ComfyUI's (API prompts
carry the ``mode`` drop-down's inputs as ``mode.num_iterations`` … and the terminations as
``terminations.termination0`` …). Here:

1. ``EndLoop`` reads the workflow (the hidden ``prompt``), pairs it with its StartLoop (innermost loops
   first, as ComfyUI does) and collects the body. Its body inputs are lazy and never evaluated in place,
   so the body's own nodes do not run; it expands into one ``LoopUnroll`` node that takes StartLoop's
   inputs (the iteration count may come from a link).
2. ``LoopUnroll`` expands the body once per iteration: a ``LoopIteration`` node stands for StartLoop
   (iteration_index, is_first, is_last, list_item, current_iteration_value), copies of the body nodes
   follow, links out of the body stay on the workflow's nodes. ``next_iteration_value`` of one iteration
   is ``current_iteration_value`` of the next; every iteration waits for the one before, as in ComfyUI.
   ``LoopCollect`` / ``LoopAfter`` chain the iterations' ``output_value`` (every one with
   ``accumulate``, else the last) and make the terminations run. A loop inside the body is copied with
   its own description (``EndLoopInBody``), so it unrolls again inside each iteration.

Outputs are ComfyUI's: End Loop's ``outputs`` is a list (the nodes after it run once per item when
accumulating). ``cache_iterations`` off (the default) re-runs every iteration each time; on, an
iteration whose inputs did not change comes from the cache. As in ComfyUI (where Start Loop's
fingerprint is always NaN), End Loop and what follows it run again on every run.
The body is everything downstream of Start Loop up to End Loop, so an output node inside it (a preview)
runs in every iteration; ComfyUI rejects such a loop (``loop_escape``) unless the node leads to End Loop.
Start Loop itself only runs when such an output node asks for the body's own nodes: it hands them
blockers, as ComfyUI inhibits them. Errors, when End Loop or Start Loop runs (ComfyUI reports them at
validation): an End Loop with no Start Loop, or two it could close; a Start Loop with no End Loop; a body
node that also uses what comes after the loop; accumulate driven from inside the loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from nodegraph.blocking import ExecutionBlocker
from nodegraph.node import Input, Node, NodeResult, Output
from nodegraph.types import ANY, BOOLEAN, COMBO, INT, STRING, UINT64_MAX
from nodegraph.workflow.api_format import is_link_json

START_TYPES = frozenset({"StartLoop"})
END_TYPES = frozenset({"EndLoop", "EndLoopInBody"})
MODES = ["simple", "For", "List"]
TERMINATIONS = tuple(f"terminations.termination{i}" for i in range(50))
#: StartLoop's outputs, by slot
ITERATION_OUTPUTS = ("iteration_index", "is_first", "is_last", "list_item", "current_iteration_value")
START_INPUTS = ("mode", "mode.num_iterations", "mode.start_iteration_index", "mode.max_iteration", "mode.step",
                "mode.list", "cache_iterations", "parent_iteration", "initial_iteration_value")

Json = dict[str, Any]


class LoopStructureError(ValueError):
    """The workflow's Start Loop / End Loop nodes do not pair up into closed loops."""


# -- the loop's structure ------------------------------------------------------------------------------

@dataclass
class LoopGraph:
    """One loop: its StartLoop and EndLoop (API-format nodes), the body's nodes by id, and the loops
    nested in the body (by their EndLoop's id)."""

    start_id: str
    start: Json
    end_id: str
    end: Json
    body: dict[str, Json]
    inner: dict[str, "LoopGraph"] = field(default_factory=dict)

    def to_json(self) -> Json:
        return {"start_id": self.start_id, "start": self.start, "end_id": self.end_id, "end": self.end,
                "body": self.body, "inner": {k: g.to_json() for k, g in self.inner.items()}}

    @classmethod
    def from_json(cls, data: Json) -> "LoopGraph":
        return cls(data["start_id"], data["start"], data["end_id"], data["end"], data["body"],
                   {k: cls.from_json(g) for k, g in data.get("inner", {}).items()})

    def remapped(self, rename: Callable[[str], str], relink: Callable[[Any], Any]) -> "LoopGraph":
        """The same loop with node ids renamed and input links rewritten (a copy inside an iteration)."""
        return LoopGraph(rename(self.start_id), copy_node(self.start, relink), rename(self.end_id),
                         copy_node(self.end, relink), {rename(k): copy_node(n, relink) for k, n in self.body.items()},
                         {rename(k): g.remapped(rename, relink) for k, g in self.inner.items()})


def copy_node(node: Json, relink: Callable[[Any], Any]) -> Json:
    return {"class_type": node["class_type"],
            "inputs": {k: relink(v) if is_link_json(v) else v for k, v in node.get("inputs", {}).items()}}


def _links(node: Json):
    return [v for v in node.get("inputs", {}).values() if is_link_json(v)]


def _walk(starts, edges: dict[str, set[str]], stop: set[str], return_stops: bool = False) -> set[str]:
    found: set[str] = set()
    stops: set[str] = set()
    pending = list(starts)
    while pending:
        node_id = pending.pop()
        if node_id in found:
            continue
        found.add(node_id)
        if node_id in stop:
            stops.add(node_id)
        else:
            pending.extend(edges.get(node_id, ()))
    return stops if return_stops else found


def pair_loops(prompt: Json) -> dict[str, str]:
    """EndLoop id → its StartLoop id, pairing innermost loops first (ComfyUI's rule: an End closes the
    nearest Start upstream of it that no inner End has closed)."""
    parents = {nid: {v[0] for v in _links(n) if v[0] in prompt} for nid, n in prompt.items()}
    children: dict[str, set[str]] = {nid: set() for nid in prompt}
    for nid, ps in parents.items():
        for p in ps:
            children[p].add(nid)
    starts = {nid for nid, n in prompt.items() if n.get("class_type") in START_TYPES}
    ends = {nid for nid, n in prompt.items() if n.get("class_type") in END_TYPES}
    start_dag = {s: _walk(children[s], children, starts, return_stops=True) for s in starts}
    below = {s: _walk(start_dag[s], start_dag, set()) for s in starts}
    end_dag = {e: _walk(parents[e], parents, ends, return_stops=True) for e in ends}
    pairs: dict[str, str] = {}
    open_starts, open_ends = set(starts), set(ends)
    while open_ends:
        end_id = next((e for e in sorted(open_ends) if not end_dag[e] & open_ends), None)
        if end_id is None:
            raise LoopStructureError(f"End Loops depend on each other, so none of them can be closed first: "
                                     f"{', '.join(sorted(open_ends))}")
        candidates = _walk(parents[end_id], parents, open_starts, return_stops=True)
        if not candidates:
            raise LoopStructureError(f"End Loop {end_id} has no Start Loop upstream of it; connect its "
                                     "output_value or next_iteration_value to a node after a Start Loop")
        closest = {c for c in candidates if all(o == c or c in below[o] for o in candidates)}
        if len(closest) != 1:
            raise LoopStructureError(f"End Loop {end_id} can close several unrelated Start Loops: "
                                     f"{', '.join(sorted(candidates))}")
        start_id = closest.pop()
        pairs[end_id] = start_id
        open_starts.discard(start_id)
        open_ends.discard(end_id)
    return pairs


def _children(prompt: Json) -> dict[str, set[str]]:
    children: dict[str, set[str]] = {nid: set() for nid in prompt}
    for nid, n in prompt.items():
        for v in _links(n):
            if v[0] in children:
                children[v[0]].add(nid)
    return children


def check_closed(prompt: Json, start_id: str) -> None:
    """Raise when Start Loop ``start_id`` has no End Loop, or its End Loop's accumulate comes from the
    loop itself (ComfyUI's loop_start_without_end and loop_accumulate_from_body errors)."""
    pairs = pair_loops(prompt)
    end_id = next((e for e, s in pairs.items() if s == start_id), None)
    if end_id is None:
        raise LoopStructureError(f"Start Loop {start_id} has no End Loop; connect what the loop produces to an "
                                 "End Loop's output_value or next_iteration_value")
    children = _children(prompt)
    inside = (_walk(children[start_id], children, {end_id}) - {end_id}) | {start_id}
    accumulate = prompt[end_id].get("inputs", {}).get("accumulate")
    if is_link_json(accumulate) and accumulate[0] in inside:
        raise LoopStructureError(f"End Loop {end_id}'s accumulate is driven by node {accumulate[0]} of its own "
                                 "loop; give it a value from outside the loop")


def loop_graph(prompt: Json, end_id: str) -> LoopGraph:
    """The loop EndLoop ``end_id`` closes, with the loops nested in its body."""
    pairs = pair_loops(prompt)
    children = _children(prompt)

    def build(end: str) -> LoopGraph:
        start = pairs[end]
        body = _walk(children[start], children, {end}) - {end}
        after = _walk([end], children, set())
        for nid in sorted(body):
            late = sorted({v[0] for v in _links(prompt[nid]) if v[0] in after})
            if late:
                raise LoopStructureError(f"node {nid} follows Start Loop {start} and also uses {', '.join(late)}, "
                                         f"which comes after its End Loop {end}; a node inside a loop cannot "
                                         "wait for the loop's result")
        inner = {e: build(e) for e in sorted(body) if e in pairs}
        return LoopGraph(start, prompt[start], end, prompt[end], {nid: prompt[nid] for nid in sorted(body)}, inner)

    if end_id not in pairs:
        raise LoopStructureError(f"End Loop {end_id} is not in the workflow")
    return build(end_id)


# -- the nodes a workflow holds ------------------------------------------------------------------------

class _StartLoopInputs(Node):
    """StartLoop's inputs (also LoopUnroll's, which receives them)."""

    abstract = True
    takes_lists = True
    #: ComfyUI's canvas stores the mode, then the chosen mode's widgets, then cache_iterations
    dynamic_combos = {"mode": {"simple": ("mode.num_iterations",),
                               "For": ("mode.start_iteration_index", "mode.max_iteration", "mode.step"),
                               "List": ("mode.list",)}}
    mode = Input(COMBO, choices=MODES, tooltip="The loop iteration mode.")
    vars().update({
        "mode.num_iterations": Input(INT, default=4, min=0, optional=True,
                                     tooltip="Number of times to execute the loop body."),
        "mode.start_iteration_index": Input(INT, default=0, optional=True,
                                            tooltip="Index of the first iteration when using For loop mode."),
        "mode.max_iteration": Input(INT, default=4, max=UINT64_MAX, optional=True,
                                    tooltip="The exclusive stopping value for iteration_index in For mode."),
        "mode.step": Input(INT, default=1, min=1, optional=True,
                           tooltip="The index step size between each iteration when using For loop mode."),
        "mode.list": Input(ANY, optional=True,
                           tooltip="List of items the loop iterates on. The loop body executes once per item."),
    })
    cache_iterations = Input(BOOLEAN, default=False,
                             tooltip="Reuse unchanged iteration results from previous executions. Disable to "
                                     "execute every iteration again.")
    parent_iteration = Input(INT, optional=True, force_input=True,
                             tooltip="Connect iteration_index from an outer Start Loop to nest this loop.")
    initial_iteration_value = Input(ANY, optional=True,
                                    tooltip="Value exposed as current_iteration_value on the first iteration.")


class StartLoop(_StartLoopInputs):
    """Start of a loop: the nodes between it and an End Loop run once per iteration (simple: a count; For:
    start, stop, step; List: once per item). Its outputs are the iteration's index, whether it is the first
    or the last, the list item, and the value End Loop carries to the next iteration."""

    category = "utilities/looping"
    display_name = "Start Loop"
    hidden = ("prompt", "unique_id")
    cacheable = False
    outputs = (Output(INT, "iteration_index", tooltip="Index of the current loop iteration."),
               Output(BOOLEAN, "is_first", tooltip="True during the first iteration of the loop."),
               Output(BOOLEAN, "is_last", tooltip="True during the last iteration of the loop."),
               Output(ANY, "list_item", tooltip="Current item from the list when using List mode."),
               Output(ANY, "current_iteration_value", tooltip="Loop-carried value for the current iteration."))

    def execute(self, prompt=None, unique_id=None, **_: Any) -> tuple:
        # Only the body's own nodes ask for this node's outputs (its iterations' copies read LoopIteration):
        # an output node in the body, whose copies run in the iterations. As ComfyUI inhibits the body's
        # nodes, the originals are blocked.
        check_closed(prompt[0], unique_id[0])
        return tuple(ExecutionBlocker(None) for _ in self.outputs)


class EndLoop(Node):
    """End of a loop: outputs output_value of the last iteration, or of every iteration when accumulate is
    on; next_iteration_value goes back to Start Loop as the next iteration's current_iteration_value;
    terminations are outputs that must run in every iteration (their values are not returned)."""

    category = "utilities/looping"
    display_name = "End Loop"
    takes_lists = True
    cacheable = False
    hidden = ("prompt", "unique_id")
    output_value = Input(ANY, optional=True, lazy=True,
                         tooltip="Value returned by End Loop: the final iteration's or all iterations' "
                                 "according to accumulate.")
    next_iteration_value = Input(ANY, optional=True, lazy=True,
                                 tooltip="Value sent from End Loop back to Start Loop for the next iteration.")
    accumulate = Input(BOOLEAN, default=False,
                       tooltip="Return output_value from every iteration when enabled; otherwise return only "
                               "the final iteration.")
    vars().update({name: Input(ANY, optional=True, lazy=True,
                               tooltip="Connect a preview or side-effect output that must execute on every "
                                       "iteration. Its value is not returned.") for name in TERMINATIONS})
    outputs = (Output(ANY, "outputs", is_list=True,
                      tooltip="The final iteration's output_value, or values accumulated across iterations "
                              "when accumulate is enabled."),)

    def check_lazy(self, **_: Any) -> list[str]:
        return []  # the body runs in the expansion, never in place

    def execute(self, accumulate, prompt=None, unique_id=None, loop=None, **_: Any) -> NodeResult:
        if loop:
            graph = LoopGraph.from_json(json.loads(loop[0]))
        else:
            graph = loop_graph(prompt[0], unique_id[0])
        start_inputs = {k: v for k, v in graph.start.get("inputs", {}).items() if k in START_INPUTS}
        unroll = {"class_type": "LoopUnroll",
                  "inputs": {**start_inputs, "accumulate": bool(accumulate[0]),
                             "loop": json.dumps(graph.to_json(), sort_keys=True)}}
        return NodeResult(outputs=(["unroll", 0],), expand={"unroll": unroll})


class EndLoopInBody(EndLoop):
    """An End Loop copied into an outer loop's iteration; ``loop`` describes its loop in the copy's ids."""

    category = "utilities/looping/internal"
    display_name = None
    loop = Input(STRING, default="")


# -- the nodes an expansion holds -------------------------------------------------------------------------

class LoopUnroll(_StartLoopInputs):
    """One loop's iterations (made by End Loop): a LoopIteration and a copy of the body per iteration."""

    category = "utilities/looping/internal"
    #: always re-expanded: its signature does not cover what the body reads from outside the loop
    cacheable = False
    loop = Input(STRING, default="")
    accumulate = Input(BOOLEAN, default=False)
    outputs = (Output(ANY, "outputs", is_list=True),)

    def execute(self, mode, loop, accumulate, **inputs: Any) -> NodeResult | tuple:
        first = {k: (v[0] if v else None) for k, v in inputs.items() if k != "mode.list"}
        graph = LoopGraph.from_json(json.loads(loop[0]))
        values, items = iteration_values(mode[0], first, inputs.get("mode.list"))
        cache = bool(first.get("cache_iterations"))
        # the executor names expansion nodes "<this node>.<call>.<local id>"; nested loops' descriptions
        # need those final ids
        expansion, result = unroll(graph, values, items is not None, bool(accumulate[0]), cache,
                                   f"{self.ctx.node_id}.0.")
        if result is None:
            return ([],)
        return NodeResult(outputs=(result,), expand=expansion)


def iteration_values(mode: str, inputs: dict[str, Any], items: list | None) -> tuple[list[int], list | None]:
    """The iteration indexes of a mode (and the list, in List mode)."""
    if mode == "simple":
        count = inputs.get("mode.num_iterations")
        return list(range(4 if count is None else int(count))), None
    if mode == "For":
        start = inputs.get("mode.start_iteration_index")
        stop = inputs.get("mode.max_iteration")
        step = inputs.get("mode.step")
        step = 1 if step is None else int(step)
        if step == 0:
            raise ValueError("Start Loop step must not be 0")
        return list(range(0 if start is None else int(start), 4 if stop is None else int(stop), step)), None
    if mode == "List":
        if items is None:
            raise ValueError("Start Loop is in List mode but input 'mode.list' is not connected")
        return list(range(len(items))), list(items)
    raise ValueError(f"Start Loop mode is {mode!r}; use one of {', '.join(MODES)}")


def unroll(graph: LoopGraph, values: list[int], list_mode: bool, accumulate: bool, cache: bool,
           id_prefix: str = "") -> tuple[dict[str, Json], list | None]:
    """The expansion of ``graph`` over ``values`` and the link to its result (``None``: nothing to run).
    ``id_prefix``: what the executor puts before the expansion's ids (for nested loops' descriptions)."""
    start_in = graph.start.get("inputs", {})
    end_in = graph.end.get("inputs", {})
    output_source = end_in.get("output_value")
    next_source = end_in.get("next_iteration_value")
    terminations = [end_in[name] for name in TERMINATIONS if is_link_json(end_in.get(name))]
    used = {v[1] for node in [*graph.body.values(), graph.end] for v in _links(node) if v[0] == graph.start_id}
    carry = start_in.get("initial_iteration_value")
    out: dict[str, Json] = {}
    chain: list | None = None
    for position, value in enumerate(values):
        iteration = f"i{position}~"
        inputs: Json = {"iteration_index": value, "is_first": 1 in used and position == 0,
                        "is_last": 2 in used and position == len(values) - 1, "reuse_cache": cache}
        if list_mode:
            inputs.update({"list": start_in.get("mode.list"), "list_index": position})
        if is_link_json(carry):
            inputs["current_iteration_value"] = carry
        elif carry is not None:
            inputs["current_iteration_value_json"] = json.dumps(carry)
        if chain is not None:
            inputs["after"] = chain
        out[iteration] = {"class_type": "LoopIteration", "inputs": inputs}

        def rename(node_id: str, prefix: str = f"b{position}~") -> str:
            return prefix + node_id

        def relink(link: list, iteration: str = iteration, rename=rename, absolute: str = "") -> list:
            if link[0] == graph.start_id:
                return [absolute + iteration, link[1]]
            if link[0] in graph.body:
                return [absolute + rename(link[0]), link[1]]
            return link

        def rename_final(node_id: str, rename=rename) -> str:
            return id_prefix + rename(node_id)

        def relink_final(link: list, relink=relink) -> list:
            return relink(link, absolute=id_prefix)

        for node_id, node in graph.body.items():
            copy = copy_node(node, relink)
            if node_id in graph.inner:
                inner = graph.inner[node_id].remapped(rename_final, relink_final)
                copy["class_type"] = "EndLoopInBody"
                copy["inputs"]["loop"] = json.dumps(inner.to_json(), sort_keys=True)
            out[rename(node_id)] = copy
        if is_link_json(output_source):
            if accumulate or position == len(values) - 1:
                collect = {"item": relink(output_source), "replace": not accumulate}
            else:
                collect = {"item": relink(output_source), "replace": True}
            if chain is not None:
                collect["items"] = chain
            out[f"c{position}~"] = {"class_type": "LoopCollect", "inputs": collect}
            chain = [f"c{position}~", 0]
        deps = ([relink(next_source)] if is_link_json(next_source) else []) + [relink(t) for t in terminations]
        for k, dep in enumerate(deps):
            after: Json = {"after": dep}
            if chain is not None:
                after["value"] = chain
            out[f"d{position}.{k}~"] = {"class_type": "LoopAfter", "inputs": after}
            chain = [f"d{position}.{k}~", 0]
        if is_link_json(next_source):
            carry = relink(next_source)
    if not values or chain is None:
        return out, None
    if not is_link_json(output_source):  # the chain only made things run: the loop outputs nothing
        out["result~"] = {"class_type": "LoopAfter", "inputs": {"after": chain, "empty": True}}
        chain = ["result~", 0]
    return out, chain


class LoopIteration(Node):
    """What Start Loop outputs in one iteration (made by LoopUnroll)."""

    category = "utilities/looping/internal"
    takes_lists = True
    iteration_index = Input(INT, default=0, min=-UINT64_MAX, max=UINT64_MAX)
    is_first = Input(BOOLEAN, default=False)
    is_last = Input(BOOLEAN, default=False)
    reuse_cache = Input(BOOLEAN, default=False)
    list = Input(ANY, optional=True)
    list_index = Input(INT, default=0, optional=True)
    current_iteration_value = Input(ANY, optional=True)
    current_iteration_value_json = Input(STRING, default="", optional=True)
    after = Input(ANY, optional=True, tooltip="The previous iteration's results (waited for, not used).")
    outputs = (Output(INT, "iteration_index"), Output(BOOLEAN, "is_first"), Output(BOOLEAN, "is_last"),
               Output(ANY, "list_item"), Output(ANY, "current_iteration_value", is_list=True))

    @classmethod
    def fingerprint(cls, reuse_cache: bool = False, **_: Any) -> Any:
        return None if reuse_cache else float("nan")

    def execute(self, iteration_index, is_first, is_last, reuse_cache, list=None, list_index=None,
                current_iteration_value=None, current_iteration_value_json=None, after=None) -> tuple:
        item = list[list_index[0]] if list is not None and list_index else None
        if current_iteration_value is not None:
            carried = current_iteration_value
        elif current_iteration_value_json and current_iteration_value_json[0]:
            carried = [json.loads(current_iteration_value_json[0])]
        else:
            carried = [None]
        return (iteration_index[0], is_first[0], is_last[0], item, carried)


class LoopCollect(Node):
    """Appends an iteration's output_value to the values so far (``replace``: keeps only this one)."""

    category = "utilities/looping/internal"
    takes_lists = True
    item = Input(ANY)
    items = Input(ANY, optional=True)
    replace = Input(BOOLEAN, default=False)
    outputs = (Output(ANY, "items", is_list=True),)

    def execute(self, item, replace, items=None) -> tuple:
        return (list(item) if replace[0] else [*(items or []), *item],)


class LoopAfter(Node):
    """Passes ``value`` on once ``after`` exists (makes terminations and carried values run);
    ``empty``: passes nothing."""

    category = "utilities/looping/internal"
    takes_lists = True
    after = Input(ANY)
    value = Input(ANY, optional=True)
    empty = Input(BOOLEAN, default=False, optional=True)
    outputs = (Output(ANY, "value", is_list=True),)

    def execute(self, after, value=None, empty=None) -> tuple:
        return ([] if (empty and empty[0]) else list(value or []),)


__all__ = ["StartLoop", "EndLoop", "LoopGraph", "loop_graph", "pair_loops"]
