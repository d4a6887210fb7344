"""/api/jobs against a real server and store: statuses mapped from our run records, filters, sorting,
pagination, preview outputs, one job's detail, and cancelling queued and running jobs."""

from __future__ import annotations

import time

IMAGE = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "jobs"}}}
FAILING = {"1": {"class_type": "FailingNode", "inputs": {"message": "broken on purpose"}}}


def slow(seconds: float, tag: str) -> dict:
    return {"1": {"class_type": "SlowNode", "inputs": {"seconds": seconds, "steps": 200, "tag": tag}}}


def wait_for(client, prompt_id: str, statuses: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = client.get(f"/api/jobs/{prompt_id}")
        if reply.status == 200 and reply.json()["status"] in statuses:
            return reply.json()
        time.sleep(0.05)
    raise AssertionError(f"job {prompt_id} never reached {statuses}")


def queue(client, prompt: dict, workflow_id: str | None = None) -> str:
    extra = {"extra_pnginfo": {"workflow": {"id": workflow_id, "nodes": []}}} if workflow_id else {}
    return client.queue(prompt, extra_data=extra)["prompt_id"]


def test_a_finished_job_in_comfyuis_shape(client):
    pid = queue(client, IMAGE, workflow_id="wf-1")
    job = wait_for(client, pid, ("completed",))
    assert job["id"] == pid and job["workflow_id"] == "wf-1"
    assert job["outputs_count"] == 1 and job["previewable_outputs_count"] == 1
    assert job["preview_output"] == {"filename": "jobs_00001_.png", "subfolder": "", "type": "output",
                                     "nodeId": "2", "mediaType": "images"}
    assert job["create_time"] <= job["execution_start_time"] <= job["execution_end_time"]
    assert job["outputs"] == {"2": {"images": [{"filename": "jobs_00001_.png", "subfolder": "", "type": "output"}]}}
    assert job["execution_status"]["status_str"] == "success" and job["execution_status"]["completed"] is True
    assert job["workflow"]["prompt"]["2"]["class_type"] == "SaveImage"
    assert "execution_error" not in job
    listed = client.get("/api/jobs?status=completed,failed,cancelled&limit=64&offset=0").json()
    assert listed["pagination"] == {"offset": 0, "limit": 64, "total": 1, "has_more": False}
    assert listed["jobs"][0]["id"] == pid and "outputs" not in listed["jobs"][0]


def test_a_failed_job_carries_its_execution_error(client):
    pid = queue(client, FAILING)
    job = wait_for(client, pid, ("failed",))
    assert job["execution_error"]["node_type"] == "FailingNode"
    assert "broken on purpose" in job["execution_error"]["exception_message"]
    assert job["outputs_count"] == 0 and "preview_output" not in job


def test_queue_and_cancel_through_the_jobs_routes(client):
    running = queue(client, slow(30, "long"))
    wait_for(client, running, ("in_progress",))
    waiting = queue(client, slow(0, "never"))
    queue_page = client.get("/api/jobs?status=in_progress,pending&limit=200&offset=0").json()
    assert [(j["id"], j["status"]) for j in queue_page["jobs"]] == [(waiting, "pending"), (running, "in_progress")]
    assert queue_page["pagination"]["total"] == 2
    assert client.request("POST", f"/api/jobs/{waiting}/cancel").json() == {"cancelled": [waiting]}
    assert client.request("POST", f"/api/jobs/{running}/cancel").json() == {"cancelled": [running]}
    assert wait_for(client, running, ("cancelled",))["execution_status"]["status_str"] == "error"
    assert wait_for(client, waiting, ("cancelled",))["id"] == waiting
    assert client.request("POST", f"/api/jobs/{running}/cancel").status == 409
    assert client.request("POST", "/api/jobs/nope/cancel").status == 404
    assert client.get("/api/jobs/nope").status == 404
    history = client.get("/api/jobs?status=cancelled").json()
    assert {j["id"] for j in history["jobs"]} == {running, waiting}


def test_cancel_many(client):
    running = queue(client, slow(30, "a"))
    wait_for(client, running, ("in_progress",))
    waiting = [queue(client, slow(0, f"w{i}")) for i in range(2)]
    reply = client.post_json("/api/jobs/cancel", {"job_ids": waiting + ["unknown"]})
    assert sorted(reply.json()["cancelled"]) == sorted(waiting)
    assert client.post_json("/api/jobs/cancel", {"job_ids": []}).status == 400
    client.request("POST", f"/api/jobs/{running}/cancel")
    wait_for(client, running, ("cancelled",))


def test_sorting_paging_and_filters(client):
    ids = []
    for i in range(5):
        ids.append(queue(client, IMAGE, workflow_id="even" if i % 2 == 0 else "odd"))
        wait_for(client, ids[-1], ("completed",))
    failed = queue(client, FAILING)
    wait_for(client, failed, ("failed",))
    newest_first = [j["id"] for j in client.get("/api/jobs").json()["jobs"]]
    assert newest_first == [failed, *reversed(ids)]
    oldest_first = [j["id"] for j in client.get("/api/jobs?sort_order=asc").json()["jobs"]]
    assert oldest_first == [*ids, failed]
    page = client.get("/api/jobs?status=completed&limit=2&offset=2").json()
    assert [j["id"] for j in page["jobs"]] == [ids[2], ids[1]]
    assert page["pagination"] == {"offset": 2, "limit": 2, "total": 5, "has_more": True}
    last = client.get("/api/jobs?status=completed&limit=2&offset=4").json()
    assert [j["id"] for j in last["jobs"]] == [ids[0]] and last["pagination"]["has_more"] is False
    assert [j["id"] for j in client.get("/api/jobs?status=failed").json()["jobs"]] == [failed]
    even = client.get("/api/jobs?workflow_id=even").json()
    assert [j["id"] for j in even["jobs"]] == [ids[4], ids[2], ids[0]] and even["pagination"]["total"] == 3
    by_duration = client.get("/api/jobs?sort_by=execution_duration&status=completed").json()["jobs"]
    durations = [j["execution_end_time"] - j["execution_start_time"] for j in by_duration]
    assert durations == sorted(durations, reverse=True)


def test_bad_parameters_are_400(client):
    for query in ("status=done", "sort_by=name", "sort_order=up", "limit=0", "offset=-1", "limit=x"):
        reply = client.get(f"/api/jobs?{query}")
        assert reply.status == 400, query
        assert reply.json()["error"]["message"]


def test_the_same_routes_without_the_api_prefix(client):
    assert client.get("/jobs").json()["pagination"]["total"] == 0
