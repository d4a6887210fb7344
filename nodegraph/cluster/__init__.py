"""Scale-out on Ray: the server's durable queue dispatches jobs to Ray actors, each an engine.

Modules, one job each: ``records`` (what crosses between server and workers), ``engine_actor`` (the
worker: an :class:`~nodegraph.executor.Engine` with its own cache and model manager, streaming events
back), ``routing`` (model-affinity and cache-affinity choice of a worker), ``files`` (output files
returned as bytes when a worker shares no disk with the server), ``ray_setup`` (connecting to a
cluster, starting actors) and ``dispatcher`` (the server's job runner over N worker lanes, failover).

Nothing here imports Ray at module level; ``nodegraph serve`` without ``--ray`` never imports it.
"""
