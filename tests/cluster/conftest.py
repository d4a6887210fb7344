"""Scale-out fixtures: one local Ray cluster for the session (2 CPUs), real servers on 127.0.0.1
whose jobs run on 2 Ray engine actors (the Ray runner), and small helpers to follow jobs through the
HTTP API."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import sys
import time

import pytest

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "server"))

from nodegraph.cluster import RaySettings, ray_runner  # noqa: E402
from nodegraph.context import Paths  # noqa: E402
from nodegraph.server import ServerConfig  # noqa: E402

from cluster_nodes import save_tiny_model  # noqa: E402
from http_client import Client  # noqa: E402
from live_server import LiveServer  # noqa: E402

#: generous: a loaded 2-core machine starts an actor (torch + nodes imports) in seconds, not always fast
START_TIMEOUT = 240
JOB_TIMEOUT = 240


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with 2 CPUs, quiet (no dashboard, worker logs not copied to the test output)."""
    ray = pytest.importorskip("ray")  # the [ray] extra; scripts/test installs it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True)
    yield ray
    ray.shutdown()


class RayServer(LiveServer):
    """A live server whose runner is the Ray runner (start-up waits for its actors)."""

    def start(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(START_TIMEOUT)
        return self

    def stop(self) -> None:
        if not self.thread.is_alive():
            return  # stopped already (a test restarts the server)
        super().stop()

    def client(self) -> Client:
        return Client("127.0.0.1", self.port, timeout=60)

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


def cluster_config(root: pathlib.Path, **overrides) -> ServerConfig:
    options = dict(host="127.0.0.1", port=0, paths=Paths.under(root), data_dir=root / "data", device="cpu",
                   threads=1, nodes_modules=("cluster_nodes",))
    options.update(overrides)
    return ServerConfig(**options)


def cluster_runner(config: ServerConfig, **overrides):
    """The Ray runner factory for ``config``: 2 actors on the session's cluster."""
    options = dict(address="auto", actors=2, node_modules=config.nodes_modules, device=config.device)
    options.update(overrides)
    return ray_runner(RaySettings(**options))


@pytest.fixture
def start_ray_server(ray_cluster, tmp_path):
    started: list[RayServer] = []

    def start(ray: dict | None = None, **overrides) -> RayServer:
        config = cluster_config(tmp_path, **overrides)
        server = RayServer(config, cluster_runner(config, **(ray or {}))).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def tiny_models(tmp_path) -> pathlib.Path:
    """``models/tiny``: a.safetensors, b.safetensors (different weights), broken.safetensors (not one)."""
    folder = Paths.under(tmp_path).models_dir / "tiny"
    save_tiny_model(folder / "a.safetensors", seed=1)
    save_tiny_model(folder / "b.safetensors", seed=2)
    (folder / "broken.safetensors").write_bytes(b"this is not a safetensors file" * 4)
    return folder


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


def dumps(value) -> str:
    return json.dumps(value, indent=1)[:2000]
