"""Which actor gets which job: the one holding the job's models, then its cached sub-graphs, else
the least-loaded one.

A job *names* model files through its loader inputs: constant values of COMBO inputs whose choices are
a function (folder listings, as every loader declares them). An actor *holds* the files named in its
model manager's keys (reported after each job, see :class:`~nodegraph.cluster.records.ActorState`),
and the output-cache signatures it keeps. Scores compare those sets; nothing is loaded to decide.

:func:`choose` is pure (views in, assignments out) so the policy is tested without Ray.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

from ..node import COMBO
from ..signature import compute_signatures
from .records import ActorState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobNeeds:
    """What a job would like to find on its actor."""

    model_names: frozenset[str] = frozenset()
    signatures: frozenset[bytes] = frozenset()


@dataclass(frozen=True)
class ActorView:
    """The Ray runner's view of one actor when choosing."""

    index: int
    alive: bool
    busy: bool
    state: ActorState | None = None

    @property
    def jobs_done(self) -> int:
        return self.state.jobs_done if self.state else 0


@dataclass(frozen=True)
class Waiting:
    """A pending job offered to the actors: its id, needs and how long it has waited (seconds)."""

    prompt_id: str
    needs: JobNeeds
    waited: float = 0.0


def model_names(prompt: dict[str, Any], registry) -> frozenset[str]:
    """The file names a prompt's loader inputs give (COMBO inputs with listed-at-run-time choices)."""
    names = set()
    for node in prompt.values():
        if not isinstance(node, dict):
            continue
        cls = registry.get(node.get("class_type", ""))
        if cls is None:
            continue
        for name, value in (node.get("inputs") or {}).items():
            spec = cls.INPUTS.get(name)
            if isinstance(value, str) and value and spec is not None and spec.type == COMBO \
                    and callable(spec.choices):
                names.add(value)
    return frozenset(names)


def job_needs(prompt: dict[str, Any], outputs: Iterable[str] | None, engine) -> JobNeeds:
    """A job's models and node signatures, computed on the server (an invalid prompt needs nothing)."""
    names = model_names(prompt, engine.registry)
    try:
        plan = engine.validate(prompt, list(outputs) if outputs else None)
        signatures = frozenset(compute_signatures(plan.nodes, plan.order, paths=engine.paths).values())
    except Exception as exc:  # the actor reports the problem when it runs the job
        log.debug("no signatures for a job: %s", exc)
        signatures = frozenset()
    return JobNeeds(names, signatures)


def holds(state: ActorState | None, name: str) -> bool:
    """True when the actor has a model file loaded whose path ends with ``name``."""
    if state is None:
        return False
    tail = "/" + name.replace("\\", "/").lstrip("/")
    return any(f == name or f.replace("\\", "/").endswith(tail) for f in state.model_files)


def affinity(needs: JobNeeds, state: ActorState | None) -> tuple[int, int]:
    """``(models held, cached nodes held)`` — compared in that order."""
    if state is None:
        return 0, 0
    return (sum(1 for n in needs.model_names if holds(state, n)),
            len(needs.signatures & state.cache_keys))


def rank(needs: JobNeeds, actors: Iterable[ActorView]) -> list[ActorView]:
    """Live actors, best first: most models held, most cached nodes, idle, fewest jobs done, index."""
    def key(w: ActorView):
        models, cached = affinity(needs, w.state)
        return (-models, -cached, w.busy, w.jobs_done, w.index)

    return sorted((w for w in actors if w.alive), key=key)


def choose(jobs: Iterable[Waiting], actors: list[ActorView],
           affinity_wait: float = 0.0) -> list[tuple[str, int]]:
    """Assign pending jobs (queue order) to idle actors: ``[(prompt_id, actor index)]``.

    A job goes to its best-ranked actor when that one is idle. When the best one is busy and holds
    more of the job's models than any idle actor, the job waits for it up to ``affinity_wait``
    seconds (later jobs may pass it meanwhile); after that, or when no busy actor is better, the best
    idle actor takes it — independent jobs run in parallel.
    """
    views = {w.index: w for w in actors}
    assigned: list[tuple[str, int]] = []
    for job in jobs:
        if not any(w.alive and not w.busy for w in views.values()):
            break
        ranked = rank(job.needs, views.values())
        best = ranked[0]
        idle = [w for w in ranked if not w.busy]
        if best.busy:
            better = affinity(job.needs, best.state)[0] > affinity(job.needs, idle[0].state)[0]
            if better and job.waited < affinity_wait:
                continue
        chosen = idle[0]
        assigned.append((job.prompt_id, chosen.index))
        views[chosen.index] = ActorView(chosen.index, chosen.alive, True, chosen.state)
    return assigned
