"""PlanMemo: a prompt that comes again gets a copy of its plan (signatures included); the same graph with
other constants has only its changed nodes validated again and only the signatures downstream of them
computed again; nothing is kept where validation or signatures depend on more than the prompt."""

from __future__ import annotations

import json

import pytest

from nodegraph import Engine, Paths
from nodegraph.errors import ValidationFailed
from nodegraph.node import Input, Node, Output
from nodegraph.plan_memo import PlanMemo
from nodegraph.registry import NodeRegistry
from nodegraph.signature import compute_signatures
from nodegraph.types import COMBO, INT
from nodegraph.validation import validate
from tests.engine_nodes import TEST_NODES

CHOICES = ["a", "b"]


class Pick(Node):
    """A combo whose choices are computed (as a file list would be)."""
    category = "test"
    name = Input(COMBO, choices=lambda: list(CHOICES))
    outputs = (Output(INT),)

    def execute(self, name):
        return (len(name),)


class Stamped(Node):
    """A node with a fingerprint of its own (ComfyUI IS_CHANGED)."""
    category = "test"
    value = Input(INT, default=0)
    outputs = (Output(INT),)

    @classmethod
    def fingerprint(cls, value):
        return value

    def execute(self, value):
        return (value,)


@pytest.fixture
def registry():
    return NodeRegistry([*TEST_NODES, Pick, Stamped])


def chain(length: int, start: int = 1, b: int = 1) -> dict:
    prompt = {"n": {"class_type": "Number", "inputs": {"value": start}}}
    previous = "n"
    for i in range(length):
        prompt[f"a{i}"] = {"class_type": "Add", "inputs": {"a": [previous, 0], "b": b if i == length - 1 else 1}}
        previous = f"a{i}"
    prompt["out"] = {"class_type": "Sink", "inputs": {"value": [previous, 0]}}
    return prompt


def plan_of(memo: PlanMemo, registry, prompt: dict, targets=None):
    return memo.plan(prompt, json.dumps(prompt), targets, lambda: validate(prompt, registry, targets, partial=True))


def fresh(registry, prompt: dict):
    plan = validate(prompt, registry, partial=True)
    return plan, compute_signatures(plan.nodes, plan.order)


def same_plan(got, expected) -> bool:
    return (got.order == expected.order and got.outputs == expected.outputs and list(got.nodes) == list(expected.nodes)
            and all(got.nodes[n].constants == expected.nodes[n].constants and got.nodes[n].links == expected.nodes[n].links
                    and got.nodes[n].cls is expected.nodes[n].cls for n in got.nodes))


def test_the_same_prompt_gets_a_copy_of_its_plan_and_signatures(registry):
    memo = PlanMemo(registry, min_nodes=1)
    first = plan_of(memo, registry, chain(20))
    again = plan_of(memo, registry, chain(20))
    assert memo.counts == {"same": 1, "constants": 0, "full": 1}
    expected, signatures = fresh(registry, chain(20))
    assert same_plan(again, expected) and again.signatures == signatures == first.signatures
    again.nodes.clear()  # a run may add nodes to its plan: copies are handed out
    again.signatures.clear()
    third = plan_of(memo, registry, chain(20))
    assert same_plan(third, expected) and third.signatures == signatures


def test_other_constants_validate_only_the_changed_nodes(registry, monkeypatch):
    memo = PlanMemo(registry, min_nodes=1)
    plan_of(memo, registry, chain(20))
    import nodegraph.plan_memo as plan_memo

    checked = []
    original = plan_memo.validate_node
    monkeypatch.setattr(plan_memo, "validate_node", lambda node, *a, **k: checked.append(node.id) or original(node, *a, **k))
    changed = chain(20, b=7)  # the last Add's constant
    plan = plan_of(memo, registry, changed)
    assert memo.counts == {"same": 0, "constants": 1, "full": 1} and checked == ["a19"]
    expected, signatures = fresh(registry, changed)
    assert same_plan(plan, expected) and plan.signatures == signatures
    assert plan.nodes["a19"].constants == {"b": 7}
    # and it runs with the new constant
    result = Engine(registry, paths=Paths()).execute(plan)
    assert result.ok and result.outputs["out"] == {"value": [1 + 19 + 7]}


def test_a_changed_constant_at_the_head_changes_every_signature_downstream(registry):
    memo = PlanMemo(registry, min_nodes=1)
    before = plan_of(memo, registry, chain(10, start=1))
    after = plan_of(memo, registry, chain(10, start=2))
    expected, signatures = fresh(registry, chain(10, start=2))
    assert memo.counts["constants"] == 1 and after.signatures == signatures
    assert all(after.signatures[n] != before.signatures[n] for n in after.order)


def test_an_invalid_new_constant_is_reported_as_by_a_full_validation(registry):
    memo = PlanMemo(registry, min_nodes=1)
    plan_of(memo, registry, chain(10))
    bad = chain(10)
    bad["n"]["inputs"]["value"] = 5000  # above Number's maximum
    with pytest.raises(ValidationFailed) as caught:
        plan_of(memo, registry, bad)
    with pytest.raises(ValidationFailed) as direct:
        validate(bad, registry)
    assert [e.kind for e in caught.value.errors] == [e.kind for e in direct.value.errors] == ["value_above_max"]
    assert memo.counts["full"] == 2


def test_changed_links_classes_or_targets_take_a_full_validation(registry):
    memo = PlanMemo(registry, min_nodes=1)
    base = chain(10)
    plan_of(memo, registry, base)
    relinked = chain(10)
    relinked["a5"]["inputs"]["a"] = ["a3", 0]
    plan = plan_of(memo, registry, relinked)
    assert same_plan(plan, fresh(registry, relinked)[0])
    plan_of(memo, registry, chain(10), targets=["out"])  # another target list: not the same key
    assert memo.counts == {"same": 0, "constants": 0, "full": 3}


def test_a_class_replaced_in_the_registry_is_not_served_from_memory(registry):
    memo = PlanMemo(registry, min_nodes=1)
    plan_of(memo, registry, chain(5))

    class Add(Node):  # noqa: F811 - replaces the registered Add
        category = "test"
        a = Input(INT, force_input=True)
        b = Input(INT, default=1)
        outputs = (Output(INT),)

        def execute(self, a, b):
            return (a - b,)

    registry.register(Add)
    plan = plan_of(memo, registry, chain(5))
    assert memo.counts["full"] == 2 and plan.nodes["a0"].cls is Add

    class Unrelated(Node):
        category = "test"
        outputs = (Output(INT),)

        def execute(self):
            return (0,)

    registry.register(Unrelated)  # a registration that changes none of the prompt's classes
    assert plan_of(memo, registry, chain(5)).nodes["a0"].cls is Add
    assert memo.counts["same"] == 1 and memo.counts["full"] == 2


def test_computed_choices_are_asked_every_time(registry):
    memo = PlanMemo(registry, min_nodes=1)
    prompt = {"p": {"class_type": "Pick", "inputs": {"name": "c"}},
              "out": {"class_type": "Sink", "inputs": {"value": ["p", 0]}}}
    with pytest.raises(ValidationFailed):
        plan_of(memo, registry, prompt)
    CHOICES.append("c")  # a file appeared
    try:
        assert plan_of(memo, registry, prompt).nodes["p"].constants == {"name": "c"}
        CHOICES.remove("c")  # and went again: the plan that was valid a moment ago is not reused
        with pytest.raises(ValidationFailed):
            plan_of(memo, registry, prompt)
    finally:
        if "c" in CHOICES:
            CHOICES.remove("c")
    assert memo.counts == {"same": 0, "constants": 0, "full": 3}


def test_custom_validation_is_run_every_time(registry):
    memo = PlanMemo(registry, min_nodes=1)
    prompt = {"v": {"class_type": "NeedsPositive", "inputs": {"value": 3}},
              "out": {"class_type": "Sink", "inputs": {"value": ["v", 0]}}}
    plan_of(memo, registry, prompt)
    plan_of(memo, registry, prompt)
    assert memo.counts == {"same": 0, "constants": 0, "full": 2}


def test_fingerprints_and_uncacheable_nodes_keep_the_plan_but_not_the_signatures(registry):
    memo = PlanMemo(registry, min_nodes=1)
    for source in ("Stamped", "Random"):
        prompt = {"s": {"class_type": source, "inputs": {"value": 1} if source == "Stamped" else {}},
                  "out": {"class_type": "Sink", "inputs": {"value": ["s", 0]}}}
        first = plan_of(memo, registry, prompt)
        again = plan_of(memo, registry, prompt)
        assert first.signatures is None and again.signatures is None  # the executor computes them
    assert memo.counts == {"same": 2, "constants": 0, "full": 2}


def test_a_prompt_with_errors_in_some_outputs_is_not_kept(registry):
    memo = PlanMemo(registry, min_nodes=1)
    prompt = chain(3)
    prompt["bad"] = {"class_type": "Sink", "inputs": {"value": ["missing", 0]}}
    for _ in range(2):
        plan = plan_of(memo, registry, prompt)
        assert plan.outputs == ["out"] and plan.node_errors
    assert memo.counts == {"same": 0, "constants": 0, "full": 2}


def test_what_is_kept_is_bounded_by_prompts_and_nodes(registry):
    memo = PlanMemo(registry, size=3, max_nodes=60, min_nodes=1)
    for length in range(10, 15):  # 12..16 nodes each
        plan_of(memo, registry, chain(length))
    assert len(memo) == 3
    plan_of(memo, registry, chain(40))  # 42 nodes: the oldest go until at most 60 nodes are kept
    assert len(memo) == 2 and memo._nodes == 16 + 42
    plan_of(memo, registry, chain(70))  # larger than the whole bound: not kept
    assert len(memo) == 2


def test_small_prompts_are_validated_every_time(registry):
    memo = PlanMemo(registry)  # the default: prompts under MIN_NODES nodes are not looked up
    small = chain(2)
    calls = []
    for _ in range(2):
        memo.plan(small, json.dumps(small), None, lambda: calls.append(1) or validate(small, registry))
    assert len(calls) == 2 and len(memo) == 0 and memo.counts["full"] == 0
