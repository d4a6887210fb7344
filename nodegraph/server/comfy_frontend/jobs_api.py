"""``/jobs``: the queue and the history as one list of jobs, in the shape of ComfyUI's jobs API.

ComfyUI's frontend (1.58) reads the queue and the history only here. Each job:

``{"id", "status", "priority", "create_time", "execution_start_time", "execution_end_time",
"execution_error", "outputs_count", "previewable_outputs_count", "preview_output", "workflow_id"}``
(times in ms since the epoch; keys without a value are left out, as ComfyUI prunes them).

| our state (``nodegraph/queue``) | job ``status`` |
|---|---|
| queued (``pending``) | ``pending`` |
| running | ``in_progress`` |
| history ``success`` | ``completed`` |
| history ``error`` | ``failed`` |
| history ``interrupted`` | ``cancelled`` (ComfyUI: an interrupted run is ``cancelled``) |
| history ``cancelled`` (deleted from the queue before it ran) | ``cancelled`` |

Routes:

* ``GET /jobs`` — ``status`` (comma list of the statuses above; default all), ``workflow_id``,
  ``sort_by`` (``created_at`` default, or ``execution_duration``), ``sort_order`` (``desc`` default,
  or ``asc``), ``limit``, ``offset`` → ``{"jobs": [...], "pagination": {"offset", "limit", "total",
  "has_more"}}``.
* ``GET /jobs/{id}`` — one job; a finished one also carries ``outputs``, ``execution_status`` (the
  history entry's ``status``) and ``workflow`` (``{"prompt", "extra_data"}``). 404 when unknown.
* ``POST /jobs/{id}/cancel`` — a queued job is removed from the queue (kept as cancelled), the running
  one is interrupted; ``{"cancelled": [id]}``. 404 unknown, 409 already finished.
* ``POST /jobs/cancel`` with ``{"job_ids": [...]}`` (1 to 100) — the same for many;
  ``{"cancelled": [ids that were queued or running]}``.

``preview_output`` is the first previewable output (an ``output``-folder one first): ComfyUI's rule —
media type ``images``/``video``/``audio``/``3d``, a ``format`` of ``video/…``/``audio/…``, or a 3D file
extension — with ``nodeId`` and ``mediaType`` added.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ...queue.run_status import CANCELLED, ERROR, INTERRUPTED, SUCCESS
from ...queue.store import HistoryEntry, Job
from .common import RouteError, json_body, query_int
from .state import FrontendState

PENDING, IN_PROGRESS, COMPLETED, FAILED, JOB_CANCELLED = "pending", "in_progress", "completed", "failed", "cancelled"
JOB_STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, JOB_CANCELLED)
#: run status (history) → job status
HISTORY_STATUS = {SUCCESS: COMPLETED, ERROR: FAILED, INTERRUPTED: JOB_CANCELLED, CANCELLED: JOB_CANCELLED}
SORT_KEYS = {"created_at": "created", "execution_duration": "duration"}
PREVIEWABLE_MEDIA = frozenset({"images", "video", "audio", "3d"})
THREE_D_EXTENSIONS = (".obj", ".fbx", ".gltf", ".glb", ".usdz")
MAX_CANCEL = 100


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


def _pruned(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if v is not None}


def workflow_id_of(extra_data: Any) -> str | None:
    """The UI workflow's ``id`` (``extra_data.extra_pnginfo.workflow.id``), which the frontend filters by."""
    pnginfo = extra_data.get("extra_pnginfo") if isinstance(extra_data, dict) else None
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    value = workflow.get("id") if isinstance(workflow, dict) else None
    return value if isinstance(value, str) else None


def is_previewable(media_type: str, item: dict) -> bool:
    if media_type in PREVIEWABLE_MEDIA:
        return True
    fmt = item.get("format")
    if isinstance(fmt, str) and fmt.startswith(("video/", "audio/")):
        return True
    filename = item.get("filename")
    return isinstance(filename, str) and filename.lower().endswith(THREE_D_EXTENSIONS)


def outputs_summary(outputs: Any) -> tuple[int, int, dict | None]:
    """``(outputs_count, previewable_outputs_count, preview_output)`` of a history entry's outputs."""
    count = previewable = 0
    preview = fallback = None
    if not isinstance(outputs, dict):
        return 0, 0, None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if not is_previewable(media_type, item):
                    continue
                previewable += 1
                enriched = {**item, "nodeId": str(node_id), "mediaType": item.get("mediaType", media_type)}
                if preview is None and item.get("type") == "output":
                    preview = enriched
                elif fallback is None:
                    fallback = enriched
    return count, previewable, preview or fallback


def queued_job(job: Job, status: str) -> dict[str, Any]:
    return _pruned({"id": job.prompt_id, "status": status, "priority": job.number,
                    "create_time": _ms(job.created) or 0, "execution_start_time": _ms(job.started)
                    if status == IN_PROGRESS else None, "outputs_count": 0, "previewable_outputs_count": 0,
                    "workflow_id": workflow_id_of(job.extra_data)})


def execution_error(messages: Any) -> dict | None:
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, list) and len(message) >= 2 and message[0] == "execution_error" \
                and isinstance(message[1], dict):
            return message[1]
    return None


def finished_job(entry: HistoryEntry, detail: bool = False) -> dict[str, Any]:
    count, previewable, preview = outputs_summary(entry.outputs)
    job = _pruned({
        "id": entry.prompt_id, "status": HISTORY_STATUS[entry.state], "priority": entry.number,
        "create_time": _ms(entry.created) or _ms(entry.started) or _ms(entry.ended) or 0,
        "execution_start_time": _ms(entry.started), "execution_end_time": _ms(entry.ended),
        "execution_error": execution_error(entry.messages), "outputs_count": count,
        "previewable_outputs_count": previewable, "preview_output": preview,
        "workflow_id": workflow_id_of(entry.extra_data)})
    if detail:
        job["outputs"] = entry.outputs
        job["execution_status"] = {"status_str": entry.status, "completed": entry.completed,
                                   "messages": entry.messages}
        job["workflow"] = {"prompt": entry.prompt, "extra_data": entry.extra_data}
    return job


def _sort_key(sort: str):
    if sort == "duration":
        def key(job: dict) -> float:
            start, end = job.get("execution_start_time"), job.get("execution_end_time")
            return end - start if start and end else 0
        return key
    return lambda job: job.get("create_time") or 0


class JobsApi:
    def __init__(self, state: FrontendState) -> None:
        self.state = state

    @property
    def store(self):
        return self.state.server.store

    # -- list ----------------------------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        statuses = self._statuses(request.query.get("status"))
        sort = SORT_KEYS.get(request.query.get("sort_by", "created_at"))
        if sort is None:
            raise RouteError(400, "invalid_request", f"'sort_by' must be one of {', '.join(SORT_KEYS)}")
        order = request.query.get("sort_order", "desc")
        if order not in ("asc", "desc"):
            raise RouteError(400, "invalid_request", "'sort_order' must be asc or desc")
        limit = query_int(request, "limit", None, minimum=1)
        offset = query_int(request, "offset", 0) or 0
        workflow_id = request.query.get("workflow_id") or None
        jobs, total = await asyncio.get_running_loop().run_in_executor(
            None, self.page, statuses, sort, order == "desc", limit, offset, workflow_id)
        return web.json_response({"jobs": jobs, "pagination": {
            "offset": offset, "limit": limit, "total": total, "has_more": offset + len(jobs) < total}})

    @staticmethod
    def _statuses(raw: str | None) -> list[str]:
        if not raw:
            return list(JOB_STATUSES)
        wanted = [s.strip() for s in raw.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in JOB_STATUSES]
        if unknown:
            raise RouteError(400, "invalid_request", f"unknown job status {', '.join(map(repr, unknown))}; "
                             f"expected {', '.join(JOB_STATUSES)}")
        return wanted

    def page(self, statuses: list[str], sort: str, descending: bool, limit: int | None, offset: int,
             workflow_id: str | None) -> tuple[list[dict], int]:
        """One page of jobs and the number of all jobs matching (runs on a thread: it reads SQLite)."""
        queued: list[dict] = []
        if IN_PROGRESS in statuses:
            queued += [queued_job(job, IN_PROGRESS) for job in self.store.jobs("running")]
        if PENDING in statuses:
            queued += [queued_job(job, PENDING) for job in self.store.jobs("pending")]
        states = [state for state, status in HISTORY_STATUS.items() if status in statuses]
        if workflow_id is not None:  # rare: filter everything in Python
            entries, _ = self.store.history_entries(states, sort=sort, descending=descending)
            jobs = [j for j in queued + [finished_job(e) for e in entries] if j.get("workflow_id") == workflow_id]
            jobs.sort(key=_sort_key(sort), reverse=descending)
            end = None if limit is None else offset + limit
            return jobs[offset:end], len(jobs)
        if not queued:  # history only: SQLite pages it
            entries, total = self.store.history_entries(states, sort=sort, descending=descending, limit=limit,
                                                        offset=offset)
            return [finished_job(e) for e in entries], total
        # queue and history: the page's jobs are among the first offset+limit of each
        entries, history_total = self.store.history_entries(
            states, sort=sort, descending=descending, limit=None if limit is None else offset + limit)
        jobs = sorted(queued + [finished_job(e) for e in entries], key=_sort_key(sort), reverse=descending)
        end = None if limit is None else offset + limit
        return jobs[offset:end], len(queued) + history_total

    # -- one -----------------------------------------------------------------------------------------

    def find(self, prompt_id: str) -> dict[str, Any] | None:
        entry = self.store.history(prompt_id)
        if entry is not None:
            return finished_job(entry, detail=True)
        for state, status in (("running", IN_PROGRESS), ("pending", PENDING)):
            for job in self.store.jobs(state):
                if job.prompt_id == prompt_id:
                    return queued_job(job, status)
        return None

    async def get(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["job_id"]
        job = await asyncio.get_running_loop().run_in_executor(None, self.find, prompt_id)
        if job is None:
            raise RouteError(404, "not_found", f"no job {prompt_id!r} is queued, running or in the history")
        return web.json_response(job)

    # -- cancel --------------------------------------------------------------------------------------

    def cancel_ids(self, prompt_ids: list[str]) -> list[str]:
        """Interrupt the running ones, remove the queued ones; the ids that were one or the other."""
        running = {job.prompt_id for job in self.store.jobs("running")}
        cancelled = [pid for pid in prompt_ids if pid in running and self.state.server.runner.interrupt(pid)]
        rest = [pid for pid in prompt_ids if pid not in running]
        cancelled += self.store.delete_pending(rest) if rest else []
        return cancelled

    async def cancel(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["job_id"]
        loop = asyncio.get_running_loop()
        cancelled = await loop.run_in_executor(None, self.cancel_ids, [prompt_id])
        if not cancelled:
            finished = await loop.run_in_executor(None, self.store.history, prompt_id)
            if finished is None:
                raise RouteError(404, "not_found", f"no job {prompt_id!r} is queued or running")
            raise RouteError(409, "already_finished", f"job {prompt_id!r} has finished already "
                             f"({HISTORY_STATUS[finished.state]})")
        self.state.server.runner.broadcast_status()
        return web.json_response({"cancelled": cancelled})

    async def cancel_many(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or not 1 <= len(ids) <= MAX_CANCEL:
            raise RouteError(400, "invalid_request", f"send {{\"job_ids\": [ids]}} with 1 to {MAX_CANCEL} ids")
        cancelled = await asyncio.get_running_loop().run_in_executor(None, self.cancel_ids, ids)
        self.state.server.runner.broadcast_status()
        return web.json_response({"cancelled": cancelled})
