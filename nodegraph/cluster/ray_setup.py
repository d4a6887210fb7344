"""Connecting the server to a Ray cluster and starting engine actors on it (the only module that
talks to Ray's start-up API)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from .engine_actor import EngineActor
from .records import ActorSettings

#: an actor answers interrupt/free/state calls while its job runs
ACTOR_CONCURRENCY = 4


@dataclass(frozen=True)
class ActorResources:
    """What each engine actor reserves: one GPU each when the cluster has GPUs, else one CPU."""

    num_cpus: float = 1
    num_gpus: float = 0


def connect(address: str | None) -> bool:
    """``ray.init`` for ``address`` (``auto``: the cluster on this machine, or a new local one; else a
    ``host:port`` / ``ray://`` address). Returns ``True`` when this call connected (so the caller
    should disconnect), ``False`` when Ray was initialised already (e.g. by a test)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=None if address in (None, "", "auto") else address, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=True)
    return True


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def plan_actors(requested: int | None) -> tuple[int, ActorResources]:
    """How many actors to start and what each reserves: one per GPU of the cluster unless
    ``requested`` (``--ray-actors``) says otherwise; one on a CPU-only cluster by default."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    count = requested if requested else max(gpus, 1)
    if gpus:
        return count, ActorResources(num_cpus=1, num_gpus=min(1.0, gpus / count))
    return count, ActorResources(num_cpus=1, num_gpus=0)


def server_node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id()


def spawn(actor_id: str, settings: ActorSettings, resources: ActorResources) -> Any:
    """Start one engine actor (not restarted by Ray: the Ray runner replaces dead ones itself)."""
    actor = _remote_actor_class().options(
        num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_concurrency=ACTOR_CONCURRENCY,
        max_restarts=0)
    return actor.remote(actor_id, settings)


@functools.lru_cache(maxsize=1)
def _remote_actor_class() -> Any:
    import ray

    return ray.remote(EngineActor)


def dead_actor_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the actor is gone" (as opposed to "the job raised")."""
    from ray import exceptions

    return tuple(cls for cls in (getattr(exceptions, "RayActorError", None),
                                 getattr(exceptions, "WorkerCrashedError", None),
                                 getattr(exceptions, "ActorUnavailableError", None)) if cls is not None)
