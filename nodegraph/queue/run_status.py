"""A finished job's run status and workflow name, and how they meet ComfyUI's history shape.

**Run status** (our own, four distinct states):

* ``success`` — the prompt ran to the end;
* ``error`` — a node failed, the prompt failed validation where it was about to run, the runner
  crashed, or the job was given up after too many attempts;
* ``interrupted`` — ``POST /interrupt`` stopped it while it ran;
* ``cancelled`` — it was deleted from the queue before it ran (``POST /queue {"delete": [...]}`` or
  ``{"clear": true}``).

**ComfyUI's history** has only ``status.status_str`` ``"success"`` or ``"error"`` (with ``completed``);
ComfyUI records an interrupt as ``"error"`` with an ``execution_interrupted`` message, and keeps no
history for a prompt deleted from the queue. Clients check ``status_str == "success"`` or
``completed``, so ``status_str`` keeps ComfyUI's two values (:func:`comfy_status_str`: everything but
``success`` is ``"error"``, ``completed`` is true only for ``success``) and our status goes next to it,
in the entry's own ``nodegraph`` block (see :meth:`HistoryEntry.run_record
<nodegraph.queue.store.HistoryEntry.run_record>`). Cancelled entries are kept in the store but left
out of ``GET /history`` unless ``include_cancelled`` is asked for (our canvas asks; ComfyUI clients
never see an entry for a prompt that never ran).

**Workflow name** (:func:`workflow_name_of`): ``extra_data.workflow_name`` (our canvas sends the file
name it opened), else a ``name``/``title`` of the UI workflow in ``extra_data.extra_pnginfo.workflow``
(top level or in its ``extra``), else none.
"""

from __future__ import annotations

from typing import Any

SUCCESS, ERROR, INTERRUPTED, CANCELLED = "success", "error", "interrupted", "cancelled"
#: the run statuses of finished jobs, in the order the docs list them
RUN_STATES = (SUCCESS, ERROR, INTERRUPTED, CANCELLED)
#: how long a workflow name may be (longer ones are cut)
MAX_NAME = 200


def check_state(state: str) -> str:
    if state not in RUN_STATES:
        raise ValueError(f"unknown run status {state!r}; expected one of {', '.join(RUN_STATES)}")
    return state


def comfy_status_str(state: str) -> str:
    """ComfyUI's ``status_str`` for a run status: ``"success"`` or ``"error"``."""
    return SUCCESS if check_state(state) == SUCCESS else ERROR


def state_from_comfy(status_str: str, messages: Any) -> str:
    """The run status of an entry that has only ComfyUI's fields (one written before run statuses)."""
    if status_str == SUCCESS:
        return SUCCESS
    if isinstance(messages, list) and any(isinstance(m, list) and m and m[0] == "execution_interrupted"
                                          for m in messages):
        return INTERRUPTED
    return ERROR


def workflow_name_of(extra_data: Any) -> str | None:
    """The workflow's name from a prompt's ``extra_data`` (see the module docstring), or ``None``."""
    if not isinstance(extra_data, dict):
        return None
    name = _text(extra_data.get("workflow_name"))
    if name is None:
        pnginfo = extra_data.get("extra_pnginfo")
        workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
        if isinstance(workflow, dict):
            extra = workflow.get("extra")
            for holder in (workflow, extra if isinstance(extra, dict) else {}):
                name = _text(holder.get("name")) or _text(holder.get("title"))
                if name is not None:
                    break
    return name


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    value = " ".join(value.split())
    return value[:MAX_NAME] if value else None
