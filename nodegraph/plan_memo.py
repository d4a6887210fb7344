"""Plans (and node signatures) of recently validated prompts, reused when a prompt comes again.

A client re-queues the same graph over and over: exactly the same prompt (a full cache hit), or the
same graph with a few constants changed (a new seed, a new text, a crop moved). Validating a 400-node
prompt and computing its signatures costs milliseconds; most of it would give the same answer again.
:class:`PlanMemo` keeps the last few valid prompts with their :class:`~nodegraph.plan.Plan` and, where
they are stable, their signatures, and for a new prompt:

* **the same prompt** (the same JSON text and output targets): a copy of the kept plan, signatures
  included, after checking that every node's class is still the one the registry had;
* **the same graph, other constants** (the same node ids, classes and links as a kept prompt; only
  constants, titles or ``is_changed`` differ): only the changed nodes are validated again (the others'
  checks, the order and the outputs cannot have changed), and only the signatures downstream of a
  changed one are computed again;
* anything else: a full validation (``validate()``), whose plan is kept when it can be.

What may be kept is decided per node class: a plan only when no class in the prompt has inputs whose
choices are computed (file lists: :meth:`Input.current_choices <nodegraph.node.Input.current_choices>`
would answer differently once a file is added or removed) or a custom ``validate_inputs`` (which may
read the disk); signatures only when no node has a fingerprint of its own (ComfyUI's ``IS_CHANGED``),
``cacheable = False`` or an ``is_changed`` value. A prompt with errors (partial validation's
``node_errors``) or workflow policies switched on is never kept. Plans handed out are copies: a run may
add nodes to its plan (expansion).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .context import Paths
from .node import Node
from .plan import Plan, PlannedNode
from .registry import NodeRegistry
from .signature import compute_signatures, node_signature
from .validation import validate_node
from .workflow.api_format import Workflow, WorkflowNode, is_link_json

#: prompts kept (each holds its parsed prompt and plan: a few hundred KiB for a 400-node prompt) ...
DEFAULT_SIZE = 16
#: ... and nodes kept in all (the oldest prompts go first; a prompt larger than this is not kept)
MAX_NODES = 20_000
#: smaller prompts are validated every time (that costs less than looking them up: ~15 µs a node)
MIN_NODES = 6

_BASE_FINGERPRINT = Node.fingerprint.__func__  # type: ignore[attr-defined]
_BASE_VALIDATE = Node.validate_inputs.__func__  # type: ignore[attr-defined]


def validation_is_stable(cls: type[Node]) -> bool:
    """Whether validating a node of ``cls`` depends on its constants and links alone (no computed
    choices, no custom ``validate_inputs``)."""
    return cls.validate_inputs.__func__ is _BASE_VALIDATE and not any(  # type: ignore[attr-defined]
        callable(spec.choices) for spec in cls.INPUTS.values())


def signature_is_stable(node: PlannedNode) -> bool:
    """Whether ``node``'s signature depends on its constants and producers alone (no fingerprint,
    cacheable, no ``is_changed``)."""
    cls = node.cls
    return (node.is_changed is None and cls.cacheable
            and cls.fingerprint.__func__ is _BASE_FINGERPRINT)  # type: ignore[attr-defined]


@dataclass
class _Kept:
    prompt: dict[str, Any]
    targets: tuple[str, ...] | None
    #: every prompt node's class, as the registry had it
    classes: dict[str, type[Node]]
    #: never handed out (copies are)
    plan: Plan
    signatures: dict[str, bytes] | None
    #: the registry's generation ``classes`` were last checked against (``None``: check every time)
    generation: int | None = None


def _links(inputs: dict[str, Any]) -> list:
    return [(name, value) for name, value in inputs.items() if is_link_json(value)]


class PlanMemo:
    """The last :data:`DEFAULT_SIZE` valid prompts' plans (see the module docstring). Thread-safe."""

    def __init__(self, registry: NodeRegistry, paths: Paths | None = None, size: int = DEFAULT_SIZE,
                 max_nodes: int = MAX_NODES, min_nodes: int = MIN_NODES) -> None:
        self.registry = registry
        self.paths = paths
        self.size = size
        self.max_nodes = max_nodes
        self.min_nodes = min_nodes
        self._kept: OrderedDict[bytes, _Kept] = OrderedDict()
        self._nodes = 0
        self._lock = threading.Lock()
        #: how the plans of prompts of ``min_nodes`` or more were made: ``same`` prompt, ``constants``
        #: changed, ``full`` validation
        self.counts = {"same": 0, "constants": 0, "full": 0}

    def plan(self, prompt: dict[str, Any], prompt_text: str, targets: Sequence[str] | None,
             validate: Callable[[], Plan]) -> Plan:
        """The plan of ``prompt`` (``prompt_text``: its JSON text, the key); ``validate()`` makes it
        when no kept plan serves (and raises what validation raises)."""
        if len(prompt) < self.min_nodes:
            return validate()
        wanted = tuple(targets) if targets is not None else None
        key = hashlib.blake2b(prompt_text.encode("utf-8", "surrogatepass") + b"\x00" + repr(wanted).encode(),
                              digest_size=16).digest()
        with self._lock:
            same = self._kept.get(key)
            if same is not None:
                self._kept.move_to_end(key)
            bases = [k for k in reversed(self._kept.values()) if k.targets == wanted]
        if same is not None and self._still_registered(prompt, same):
            self.counts["same"] += 1
            return _copy(same.plan, same.signatures)
        for base in bases[:2]:
            kept = self._changed_constants(prompt, wanted, base)
            if kept is not None:
                self.counts["constants"] += 1
                self._keep(key, kept)
                return _copy(kept.plan, kept.signatures)
        self.counts["full"] += 1
        plan = validate()
        kept = self._keepable(prompt, wanted, plan)
        if kept is None:
            return plan
        self._keep(key, kept)
        return _copy(kept.plan, kept.signatures)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self._nodes = 0

    def __len__(self) -> int:
        return len(self._kept)

    # -- helpers ----------------------------------------------------------------------------------

    def _keep(self, key: bytes, kept: _Kept) -> None:
        if len(kept.prompt) > self.max_nodes:
            return
        with self._lock:
            old = self._kept.pop(key, None)
            if old is not None:
                self._nodes -= len(old.prompt)
            self._kept[key] = kept
            self._nodes += len(kept.prompt)
            while len(self._kept) > self.size or self._nodes > self.max_nodes:
                self._nodes -= len(self._kept.popitem(last=False)[1].prompt)

    def _still_registered(self, prompt: dict[str, Any], kept: _Kept) -> bool:
        """Whether every node class of ``prompt`` is still the one ``kept`` has: at once when nothing
        was registered since it was last checked (the registry's generation), else class by class."""
        generation = getattr(self.registry, "generation", None)
        if generation is not None and generation == kept.generation:
            return True
        if not self._classes_unchanged(prompt, kept.classes):
            return False
        kept.generation = generation
        return True

    def _classes_unchanged(self, prompt: dict[str, Any], classes: dict[str, type[Node]]) -> bool:
        get = self.registry.get
        try:
            return all(get(node["class_type"]) is classes[nid] for nid, node in prompt.items())
        except (KeyError, TypeError):
            return False

    def _keepable(self, prompt: dict[str, Any], targets: tuple[str, ...] | None, plan: Plan) -> _Kept | None:
        """What to keep of a fully validated prompt; ``None`` when it cannot be kept."""
        if plan.node_errors:
            return None
        get = self.registry.get
        generation = getattr(self.registry, "generation", None)  # read before the classes are
        try:
            classes = {nid: get(node["class_type"]) for nid, node in prompt.items()}
        except (KeyError, TypeError):
            return None
        if any(cls is None or not validation_is_stable(cls) for cls in set(classes.values())):
            return None
        template = Plan(dict(plan.nodes), list(plan.outputs), list(plan.order))
        signatures = None
        if all(signature_is_stable(node) for node in plan.nodes.values()):
            signatures = compute_signatures(template.nodes, template.order, paths=self.paths)
        return _Kept(prompt, targets, classes, template, signatures, generation)

    def _changed_constants(self, prompt: dict[str, Any], targets: tuple[str, ...] | None,
                           base: _Kept) -> _Kept | None:
        """``base`` brought to ``prompt`` when only constants (titles, ``is_changed``) differ; else
        ``None``."""
        before = base.prompt
        if len(prompt) != len(before) or prompt.keys() != before.keys():
            return None
        changed: list[str] = []
        for nid, node in prompt.items():
            old = before[nid]
            if node == old:
                continue
            if type(node) is not dict or node.get("class_type") != old.get("class_type"):
                return None
            inputs, old_inputs = node.get("inputs"), old.get("inputs")
            if type(inputs) is not dict or type(old_inputs) is not dict or _links(inputs) != _links(old_inputs):
                return None
            changed.append(nid)
        if len(changed) * 2 > len(prompt) or not self._still_registered(prompt, base):
            return None  # most of it changed: a full validation costs no more
        nodes = dict(base.plan.nodes)
        redone: list[str] = []
        for nid in changed:
            if nid not in nodes:  # not needed by the outputs: validation does not look at it
                continue
            planned = self._validate_one(prompt, nid)
            if planned is None:
                return None  # an error: the full validation reports it as usual
            nodes[nid] = planned
            redone.append(nid)
        plan = Plan(nodes, list(base.plan.outputs), list(base.plan.order))
        signatures = None
        if base.signatures is not None and all(signature_is_stable(nodes[nid]) for nid in redone):
            signatures = self._update_signatures(plan, base.signatures, redone)
        return _Kept(prompt, targets, base.classes, plan, signatures, base.generation)

    def _validate_one(self, prompt: dict[str, Any], nid: str) -> PlannedNode | None:
        node = Workflow.from_api({nid: prompt[nid]}).nodes[nid]
        view: dict[str, WorkflowNode] = {}
        for _, link in node.links():
            source = prompt.get(link.node_id)
            if type(source) is not dict or type(source.get("class_type")) is not str:
                return None
            view[link.node_id] = WorkflowNode(link.node_id, source["class_type"])
        view[nid] = node
        planned, errors = validate_node(node, Workflow(view), self.registry, self.paths)
        return None if errors else planned

    def _update_signatures(self, plan: Plan, before: dict[str, bytes], redone: list[str]) -> dict[str, bytes]:
        signatures = dict(before)
        dirty = set(redone)
        nodes = plan.nodes
        for nid in plan.order:
            node = nodes[nid]
            if nid not in dirty:
                for link in node.links.values():
                    if link.node_id in dirty:
                        break
                else:
                    continue
            signature = node_signature(node, signatures, self.paths)
            if signature == before[nid]:
                dirty.discard(nid)
            else:
                dirty.add(nid)
                signatures[nid] = signature
        return signatures


def _copy(plan: Plan, signatures: dict[str, bytes] | None) -> Plan:
    copy = Plan(dict(plan.nodes), list(plan.outputs), list(plan.order))
    copy.signatures = dict(signatures) if signatures is not None else None
    return copy
