"""Scale-out on a local Ray cluster (2 CPUs, 2 engine actors): the server's queue spreads jobs over
both actors, routes jobs to the actor holding their model, survives an actor dying mid-job (the job
completes once, elsewhere, and its client sees the events), keeps jobs across a restart, and returns
output files as bytes when asked to."""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.cluster_helpers import message_types, model_prompt, queue, ran_on, spin_prompt
from tests.helpers.comfy_client import ComfyClient

pytestmark = pytest.mark.timeout(600)


def test_twenty_jobs_spread_over_both_actors_and_all_complete(start_ray_server):
    server = start_ray_server()
    client = server.client()
    pids = {lane.state.pid for lane in server.lanes}
    assert len(pids) == 2
    ids = [queue(client, spin_prompt(f"job{i}", iterations=300_000)) for i in range(20)]
    # the API answers while the actors run
    assert client.get("/queue").status == 200
    assert client.get("/system_stats").status == 200
    entries = server.wait_done(ids)
    assert all(e["status"]["status_str"] == "success" for e in entries.values())
    assert [entries[pid]["outputs"]["1"]["text"] for pid in ids] == [[f"job{i}"] for i in range(20)]
    used = [ran_on(e) for e in entries.values()]
    assert set(used) == pids, used
    assert min(used.count(p) for p in pids) >= 3, used  # both took a fair share, not one or two jobs
    assert json.loads(client.get("/queue").body) == {"queue_running": [], "queue_pending": []}


def test_jobs_keep_landing_on_the_actor_that_loaded_their_model(start_ray_server, tiny_models):
    server = start_ray_server()
    client = server.client()
    where: dict[str, list[int]] = {"a.safetensors": [], "b.safetensors": []}
    for i in range(3):
        for name in where:
            pid = queue(client, model_prompt(name, x=float(i)))
            entry = server.wait_done([pid])[pid]
            assert entry["status"]["status_str"] == "success", message_types(entry)
            where[name].append(ran_on(entry, "2"))
    a, b = where["a.safetensors"], where["b.safetensors"]
    assert len(set(a)) == 1 and len(set(b)) == 1 and a[0] != b[0], where
    holder = {lane.state.pid: lane.state.model_files for lane in server.lanes}
    assert any(f.endswith("/tiny/a.safetensors") for f in holder[a[0]])
    assert not any(f.endswith("/tiny/a.safetensors") for f in holder[b[0]])

    # a model that cannot be loaded fails that job only, with the node and the reason
    bad = queue(client, model_prompt("broken.safetensors", x=1.0))
    server.wait_done([bad])
    after = queue(client, model_prompt("a.safetensors", x=5.0))
    entries = server.wait_done([bad, after])
    assert entries[bad]["status"]["status_str"] == "error"
    error = dict(entries[bad]["status"]["messages"])["execution_error"]
    assert error["node_id"] == "1" and error["node_type"] == "TinyModelLoader"
    assert error["exception_message"]
    assert entries[after]["status"]["status_str"] == "success"
    assert ran_on(entries[after], "2") == a[0]


def test_killed_actor_job_completes_once_on_another_and_client_sees_events(start_ray_server, tmp_path):
    server = start_ray_server()
    client = server.client()
    log_path = tmp_path / "runs.log"
    comfy = ComfyClient(f"127.0.0.1:{server.port}")
    with comfy.connect() as ws:
        ws.recv(timeout=30)  # status greeting
        prompt_id = comfy.queue_prompt(spin_prompt("victim", iterations=20_000_000, steps=200,
                                                   log_path=str(log_path)))["prompt_id"]
        messages = []
        while True:  # wait until the job is running on an actor
            message = json.loads(ws.recv(timeout=120))
            messages.append(message)
            if message["type"] == "progress":
                break
        lane = next(l for l in server.lanes if l.job is not None and l.job.prompt_id == prompt_id)
        killed_pid = lane.state.pid
        import ray

        ray.kill(lane.handle, no_restart=True)
        assert client.get("/queue").status == 200  # the API answers during failover
        while True:
            message = json.loads(ws.recv(timeout=240))
            messages.append(message)
            if message["type"] == "executing" and message["data"]["node"] is None:
                break
    entry = server.wait_done([prompt_id])[prompt_id]
    assert entry["status"]["status_str"] == "success"
    assert ran_on(entry) != killed_pid
    kinds = [m["type"] for m in messages if m["data"].get("prompt_id") == prompt_id]
    assert kinds.count("execution_start") == 2  # the killed run and the completed one
    assert kinds.count("execution_success") == 1
    assert kinds[-2:] == ["execution_success", "executing"]
    restarted = dict(entry["status"]["messages"])["execution_restarted"]
    assert "died" in restarted["reason"] and restarted["attempt"] == 2
    lines = log_path.read_text().split()
    assert log_path.read_text().count("end victim") == 1  # ran to completion exactly once
    assert f"start victim {killed_pid}" in log_path.read_text(), lines
    assert len(server.history()) == 1

    # the lane has a new actor, and the cluster goes on with two
    server.wait_lanes_alive()
    assert killed_pid not in {lane.state.pid for lane in server.lanes}
    ids = [queue(client, spin_prompt(f"after{i}")) for i in range(4)]
    entries = server.wait_done(ids)
    assert all(e["status"]["status_str"] == "success" for e in entries.values())


def test_events_and_previews_reach_the_submitting_client_in_order_and_interrupt_reaches_the_actor(
        start_ray_server):
    server = start_ray_server()
    client = server.client()
    alice = ComfyClient(f"127.0.0.1:{server.port}", features={"nodegraph_previews": True, "nodegraph_events": True})
    bob = ComfyClient(f"127.0.0.1:{server.port}")
    with alice.connect() as ws_a, bob.connect() as ws_b:
        ws_a.recv(timeout=30)
        ws_b.recv(timeout=30)
        mine = alice.queue_prompt(spin_prompt("alice", iterations=400_000, steps=8, preview=True))["prompt_id"]
        long = bob.queue_prompt(spin_prompt("bob", iterations=10**9, steps=10_000))["prompt_id"]
        texts, frames = [], 0
        while True:
            message = ws_a.recv(timeout=120)
            if isinstance(message, bytes):
                frames += 1
                continue
            texts.append(json.loads(message))
            if texts[-1]["type"] == "executing" and texts[-1]["data"]["node"] is None:
                break
        while True:  # bob's job is running on the other actor: interrupt it by id
            message = ws_b.recv(timeout=120)
            if isinstance(message, str) and json.loads(message)["type"] == "progress":
                break
        assert client.post_json("/interrupt", {"prompt_id": long}).json() == {"interrupted": True}
        bob_kinds = []
        while True:
            message = ws_b.recv(timeout=120)
            if isinstance(message, str):
                data = json.loads(message)
                bob_kinds.append(data["type"])
                assert data["data"].get("prompt_id") in (None, long)  # never alice's events
                if data["type"] == "executing" and data["data"]["node"] is None:
                    break
    own = [m for m in texts if m["type"] not in ("status", "feature_flags")]
    assert {m["data"]["prompt_id"] for m in own} == {mine}
    kinds = [m["type"] for m in own]
    assert kinds[:3] == ["execution_start", "execution_cached", "executing"]
    assert kinds[-4:] == ["executed", "node_finished", "execution_success", "executing"]
    progress = [m["data"]["value"] for m in own if m["type"] == "progress"]
    assert progress == list(range(1, 9))
    assert frames == 8  # one JPEG preview per step
    executed = next(m for m in own if m["type"] == "executed")
    assert executed["data"]["output"]["text"] == ["alice"]
    assert "execution_interrupted" in bob_kinds
    entries = server.wait_done([mine, long])
    assert entries[mine]["status"]["status_str"] == "success"
    assert entries[long]["status"]["status_str"] == "error"
    assert "execution_interrupted" in message_types(entries[long])
    assert entries[long]["nodegraph"]["status"] == "interrupted"  # our run status (docs/history.md)


def test_restart_loses_no_jobs(start_ray_server):
    first = start_ray_server()
    client = first.client()
    ids = [queue(client, spin_prompt(f"r{i}", iterations=3_000_000, steps=100)) for i in range(5)]
    deadline = time.monotonic() + 120
    while not any(lane.busy for lane in first.lanes) and time.monotonic() < deadline:
        time.sleep(0.1)
    first.stop()  # running jobs are interrupted and go back to the queue
    second = start_ray_server()
    entries = second.wait_done(ids)
    assert all(e["status"]["status_str"] == "success" for e in entries.values())
    assert len(second.history()) == 5


def test_output_files_shipped_as_bytes_land_in_the_server_output_folder(start_ray_server, tmp_path):
    server = start_ray_server(ray={"ship_outputs": True})
    client = server.client()
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1,
                                                          "color": 0xFF0000}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "shipped"}}}
    ids = []
    for width in (32, 40, 48):  # distinct jobs: each actor numbers its files from 1, names collide
        prompt["1"]["inputs"]["width"] = width
        ids.append(queue(client, prompt))
    entries = server.wait_done(ids)
    names = []
    for pid in ids:
        assert entries[pid]["status"]["status_str"] == "success", message_types(entries[pid])
        for image in entries[pid]["outputs"]["2"]["images"]:
            names.append(image["filename"])
            reply = client.get("/view", query={"filename": image["filename"], "type": "output"})
            assert reply.status == 200 and reply.body.startswith(b"\x89PNG")
    assert len(set(names)) == 3, names
    assert sorted(p.name for p in (tmp_path / "output").glob("shipped*.png")) == sorted(names)
