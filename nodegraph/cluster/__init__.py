"""Scale-out on Ray: the Ray runner feeds the server's durable queue to Ray actors, each an engine.

Modules, one job each: ``records`` (what crosses between the server and its actors), ``engine_actor``
(the actor: an :class:`~nodegraph.executor.Engine` with its own cache and model manager, streaming
events back), ``routing`` (model-affinity and cache-affinity choice of an actor), ``files`` (output
files returned as bytes when an actor shares no disk with the server), ``ray_setup`` (connecting to a
cluster, starting actors) and ``ray_runner`` (:class:`RayRunner`, the queue's ``JobRunner`` over N
actor lanes, with failover; :func:`ray_runner` makes the factory the CLI hands to the server).

Nothing here imports Ray at module level; ``nodegraph serve`` without ``--ray`` never imports it.
"""

from __future__ import annotations

from .ray_runner import RayRunner, RaySettings, ray_runner

__all__ = ["RayRunner", "RaySettings", "ray_runner"]
