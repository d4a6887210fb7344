"""Helpers of the scale-out tests: a live server whose runner is the Ray runner (with ways to follow
its jobs and actors through the HTTP API), the runner factory, and small prompt builders."""

from __future__ import annotations

import time

from nodegraph.cluster import RaySettings, ray_runner
from nodegraph.server import ServerConfig

from tests.helpers.http_client import Client
from tests.helpers.live_server import LiveServer, ServerSetup

#: generous: a loaded 2-core machine starts an actor (torch + nodes imports) in seconds, not always fast
START_TIMEOUT = 240
JOB_TIMEOUT = 240


class RayServer(LiveServer):
    """A live server whose runner is the Ray runner (start-up waits for its actors)."""

    start_timeout = START_TIMEOUT
    client_timeout = 60

    @property
    def lanes(self):
        return self.server.runner.lanes

    def history(self, prompt_id: str | None = None) -> dict:
        return self.client().get(f"/history/{prompt_id}" if prompt_id else "/history").json()

    def wait_done(self, prompt_ids, timeout: float = JOB_TIMEOUT) -> dict:
        """Poll ``/history`` until every id is there; returns ``{id: entry}``."""
        wanted = set(prompt_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.history()
            if wanted <= history.keys():
                return {pid: history[pid] for pid in wanted}
            time.sleep(0.2)
        raise AssertionError(f"jobs not finished after {timeout}s: {sorted(wanted - self.history().keys())}; "
                             f"queue: {self.client().get('/queue').body[:500]!r}")

    def wait_lanes_alive(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(lane.alive and not lane.busy for lane in self.lanes):
                return
            time.sleep(0.2)
        raise AssertionError("the Ray actors did not all come back")


def cluster_runner(config: ServerConfig, overrides: dict):
    """The Ray runner factory for ``config``: 2 actors on the session's cluster."""
    options = dict(address="auto", actors=2, node_modules=config.nodes_modules, device=config.device)
    options.update(overrides)
    return ray_runner(RaySettings(**options))


#: the scale-out suite's servers: its test nodes (Ray actors import them by this name), 1 engine thread
#: per actor, the Ray runner
RAY_SERVERS = ServerSetup(nodes_modules=("tests.cluster.cluster_nodes",), threads=1, server_class=RayServer,
                          make_runner=cluster_runner)


def spin_prompt(tag: str, iterations: int = 200_000, steps: int = 10, log_path: str = "",
                preview: bool = False) -> dict:
    return {"1": {"class_type": "Spin", "inputs": {"iterations": iterations, "steps": steps, "tag": tag,
                                                   "log_path": log_path, "preview": preview}}}


def model_prompt(name: str, x: float) -> dict:
    return {"1": {"class_type": "TinyModelLoader", "inputs": {"model_name": name}},
            "2": {"class_type": "TinyModelApply", "inputs": {"model": ["1", 0], "x": x}}}


def queue(client: Client, prompt: dict, **fields) -> str:
    reply = client.post_json("/prompt", {"prompt": prompt, **fields})
    assert reply.status == 200, reply.body
    return reply.json()["prompt_id"]


def ran_on(entry: dict, node: str = "1") -> int:
    """The actor pid an output node reported."""
    return entry["outputs"][node]["pid"][0]


def message_types(entry: dict) -> list[str]:
    return [m[0] for m in entry["status"]["messages"]]
