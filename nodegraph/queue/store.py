"""The durable job queue and history: one SQLite file (WAL), every write committed before it returns.

A job is ``pending`` → ``running`` → gone from ``jobs`` and present in ``history``; the last step is one
transaction, so a job completes exactly once. After a crash, :meth:`JobStore.recover` puts the job
that was running back in the queue (its ``attempts`` count says it was interrupted); a job that keeps
killing the server is given up after ``max_attempts`` and recorded as an error.

Writes share one connection. A write that finds the connection free and nothing waiting commits on
the caller's own thread (a job's claim and end: no hand-off to another thread and back); writes that
arrive while another commits wait for the writer thread, which commits whatever is waiting in a single
transaction (group commit): twenty clients queueing at once cost one commit, not twenty. Each caller
returns only after its write is committed. Each write runs in its own savepoint, so one refused write
(queue full, duplicate id) does not undo the others. Readers use their own connections (WAL).

When a commit reaches the disk: by default (``sync_commits=False``) a commit is in the WAL file when
the call returns — a crash or kill of the server loses nothing — and a syncer thread flushes the WAL
to the disk within :data:`SYNC_DELAY` seconds, off the request path (a disk flush takes milliseconds,
three per prompt would dominate a small prompt's latency); only a power failure or an OS crash can
lose the last moments' commits, after which a job runs again or a queued prompt is gone. With
``sync_commits=True`` (``serve --sync-commits``) every commit is flushed before it returns.

Prompts and outputs are stored as JSON text and, where the API returns them unchanged, spliced into
responses as text (``GET /queue`` stays cheap with thousands of queued prompts).

Each job and history entry also carries its run record: when it was queued, started and ended, its
workflow's name and, in history, its run status (``success`` / ``error`` / ``interrupted`` /
``cancelled``; :mod:`nodegraph.queue.run_status` says how that meets ComfyUI's ``status_str``). A job
deleted from the queue before it ran is kept in history as ``cancelled`` (left out of ``GET /history``
unless asked for). The schema and the migration of older files are in :mod:`nodegraph.queue.schema`.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import jsontext
from ..fsync import fsync_path
from .run_status import CANCELLED, check_state, comfy_status_str, workflow_name_of
from .schema import migrate

#: batched durability: commits reach the disk (the WAL is flushed) at most this long after they return
SYNC_DELAY = 0.2

#: ``extra_data`` keys never written to disk or history (ComfyUI strips these too).
SECRET_EXTRA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


_dumps = jsontext.dumps  # compact, UTF-8 (orjson where installed)
_loads = jsontext.loads


def _number_text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def _ms(seconds: float | None) -> int | None:
    """Seconds since the epoch → milliseconds (ComfyUI's timestamps), ``None`` kept."""
    return None if seconds is None else int(round(seconds * 1000))


def run_record(state: str, workflow_name: str | None, created: float | None, started: float | None,
               ended: float | None, attempts: int) -> dict[str, Any]:
    """The ``nodegraph`` block of a history entry: our run status next to ComfyUI's ``status_str``, the
    workflow's name, and the times in milliseconds since the epoch (``duration_ms`` = end − start;
    ``None`` where unknown, e.g. the start of a cancelled job, which never started)."""
    start, end = _ms(started), _ms(ended)
    return {"status": state, "workflow_name": workflow_name, "create_time": _ms(created), "start_time": start,
            "end_time": end, "duration_ms": None if start is None or end is None else max(end - start, 0),
            "attempts": attempts}


@dataclass
class Job:
    """A queued prompt, as ``GET /queue`` lists it: ``[number, prompt_id, prompt, extra_data, outputs]``."""

    prompt_id: str
    number: float
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    client_id: str | None = None
    state: str = "pending"
    attempts: int = 0
    #: when it was queued and when its current attempt was claimed (seconds since the epoch)
    created: float | None = None
    started: float | None = None
    #: the workflow's name, from ``extra_data`` (:func:`~nodegraph.queue.run_status.workflow_name_of`)
    workflow_name: str | None = None


@dataclass
class HistoryEntry:
    """A finished prompt, in ComfyUI's history shape plus our run record (see :meth:`to_comfy`).

    ``state`` is the run status (success / error / interrupted / cancelled); ``status`` and
    ``completed`` are ComfyUI's ``status_str`` and ``completed``, derived from it."""

    prompt_id: str
    number: float
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    outputs: dict[str, dict] = field(default_factory=dict)
    state: str = "success"
    messages: list[list] = field(default_factory=list)
    meta: dict[str, dict] = field(default_factory=dict)
    attempts: int = 1
    workflow_name: str | None = None
    #: queued, started and ended (seconds since the epoch); an ``ended`` of ``None`` becomes the time
    #: :meth:`JobStore.finish` stores the entry
    created: float | None = None
    started: float | None = None
    ended: float | None = None

    def __post_init__(self) -> None:
        check_state(self.state)

    @property
    def status(self) -> str:
        """ComfyUI's ``status_str``: ``"success"`` or ``"error"``."""
        return comfy_status_str(self.state)

    @property
    def completed(self) -> bool:
        return self.state == "success"

    def run_record(self) -> dict[str, Any]:
        return run_record(self.state, self.workflow_name, self.created, self.started, self.ended, self.attempts)

    def to_comfy(self) -> dict[str, Any]:
        """``GET /history``'s entry: ComfyUI's keys, and our run record under ``nodegraph``."""
        return {"prompt": [self.number, self.prompt_id, self.prompt, self.extra_data,
                           self.outputs_to_execute],
                "outputs": self.outputs,
                "status": {"status_str": self.status, "completed": self.completed,
                           "messages": self.messages},
                "meta": self.meta,
                "nodegraph": self.run_record()}


_JOB_COLUMNS = ("prompt_id, number, prompt, extra_data, outputs, client_id, state, attempts, created, started, "
                "workflow_name")


_HISTORY_COLUMNS = ("prompt_id, number, prompt, extra_data, outputs_to_execute, outputs, status, completed, "
                    "messages, meta, attempts, state, workflow_name, created, started, finished")


def _job(row: tuple, known: Callable[[str], dict | None] | None = None) -> Job:
    """A :class:`Job` from a row of :data:`_JOB_COLUMNS`; ``known(prompt_id)``: the prompt already
    parsed, if the caller has it (its text is then not decoded)."""
    prompt = known(row[0]) if known is not None else None
    return Job(row[0], row[1], _loads(row[2]) if prompt is None else prompt, _loads(row[3]), _loads(row[4]),
               row[5], row[6], row[7],
               row[8], row[9], row[10])


def _history_entry(row: tuple) -> HistoryEntry:
    """A :class:`HistoryEntry` from a row of :data:`_HISTORY_COLUMNS`."""
    (pid, number, prompt, extra, to_exec, outputs, _status, _completed, messages, meta, attempts, state,
     name, created, started, ended) = row
    return HistoryEntry(pid, number, _loads(prompt), _loads(extra), _loads(to_exec),
                        _loads(outputs), state, _loads(messages), _loads(meta), attempts,
                        name, created, started, ended)


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


class DuplicatePrompt(Exception):
    """A prompt with this id is queued or in history already."""


class JobStore:
    """Queue and history in one SQLite file. Safe to use from several threads (a connection each)."""

    def __init__(self, path: str | Path, max_attempts: int = 3, *, sync_commits: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self.sync_commits = sync_commits
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        migrate(self._conn())
        self._syncer = None if sync_commits else _WalSyncer(Path(f"{self.path}-wal"))
        self._writer = _Writer(self._connect, self._syncer)

    # -- connections ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.sync_commits else 'NORMAL'}")
        with self._lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's reading connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _write(self, fn):
        """Run ``fn(conn)`` in the writer's next transaction; return its result once committed."""
        return self._writer.call(fn)

    def close(self) -> None:
        self._writer.stop()
        if self._syncer is not None:
            self._syncer.stop()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()

    # -- queue ------------------------------------------------------------------------------------

    def enqueue(self, job: Job, *, number: float | None = None, front: bool = False,
                max_queue: int | None = None, prompt_text: str | None = None) -> Job:
        """Add a job; its number is ``number``, or the next counter value (negated when ``front``).
        ``prompt_text``: the prompt's JSON text when the caller has it already."""
        extra = {k: v for k, v in job.extra_data.items() if k not in SECRET_EXTRA_KEYS}
        if prompt_text is None:
            prompt_text = _dumps(job.prompt)
        outputs_text, extra_text = _dumps(job.outputs_to_execute), _dumps(extra)
        name, created = workflow_name_of(extra), time.time()

        def write(conn: sqlite3.Connection) -> float:
            if max_queue is not None:
                (count,) = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
                if count >= max_queue:
                    raise QueueFull(f"the queue holds {count} prompts (limit {max_queue}); "
                                    "wait for some to finish or cancel some")
            if conn.execute("SELECT 1 FROM jobs WHERE prompt_id=? UNION ALL "
                            "SELECT 1 FROM history WHERE prompt_id=? AND state IS NOT 'cancelled'",
                            (job.prompt_id, job.prompt_id)).fetchone():
                raise DuplicatePrompt(f"a prompt with id {job.prompt_id!r} was submitted already")
            # a cancelled prompt may be queued again under its id: its cancelled entry goes
            conn.execute("DELETE FROM history WHERE prompt_id=? AND state='cancelled'", (job.prompt_id,))
            value = number
            if value is None:
                counter = self._next_counter(conn)
                value = -counter if front else counter
            value = int(value) if float(value).is_integer() else float(value)
            conn.execute("INSERT INTO jobs (prompt_id, number, prompt, extra_data, outputs, client_id, "
                         "state, attempts, created, workflow_name) VALUES (?,?,?,?,?,?, 'pending', 0, ?, ?)",
                         (job.prompt_id, value, prompt_text, extra_text, outputs_text, job.client_id,
                          created, name))
            return value

        job.number = self._write(write)
        job.extra_data, job.created, job.workflow_name = extra, created, name
        return job

    def bump_counter(self) -> int:
        """Advance the counter without queueing (ComfyUI counts failed submissions too)."""
        return self._write(self._next_counter)

    @staticmethod
    def _next_counter(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM counters WHERE name='number'").fetchone()
        value = row[0] if row else 0
        conn.execute("INSERT INTO counters (name, value) VALUES ('number', ?) "
                     "ON CONFLICT(name) DO UPDATE SET value=excluded.value", (value + 1,))
        return value

    def claim_next(self, known: Callable[[str], dict | None] | None = None) -> Job | None:
        """Mark the first pending job (lowest number) running and return it; ``None`` when empty.
        ``known(prompt_id)``: the prompt as the caller parsed it already, or ``None``."""
        return self._claim("state='pending' ORDER BY number, seq LIMIT 1", (), known)

    def claim(self, prompt_id: str) -> Job | None:
        """Mark one pending job running and return it; ``None`` if it is no longer pending (cancelled,
        or claimed already). A runner that picks jobs out of order (the Ray runner's actor affinity)
        uses it."""
        return self._claim("prompt_id=? AND state='pending'", (prompt_id,))

    def _claim(self, where: str, params: tuple, known: Callable[[str], dict | None] | None = None) -> Job | None:
        def write(conn: sqlite3.Connection):
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where}", params).fetchone()
            if row is not None:
                started = time.time()
                conn.execute("UPDATE jobs SET state='running', attempts=attempts+1, started=? WHERE prompt_id=?",
                             (started, row[0]))
                row = row[:6] + ("running", row[7] + 1) + row[8:9] + (started,) + row[10:]
            return row

        row = self._write(write)
        return None if row is None else _job(row, known)

    def requeue(self, prompt_id: str) -> bool:
        """Put a running job back in the queue (graceful shutdown); it keeps its number."""
        return self._write(lambda conn: conn.execute(
            "UPDATE jobs SET state='pending', started=NULL WHERE prompt_id=? AND state='running'",
            (prompt_id,)).rowcount == 1)

    def recover(self) -> list[str]:
        """At start-up: jobs left ``running`` by a crash go back to ``pending``; returns their ids."""
        def write(conn: sqlite3.Connection) -> list[str]:
            ids = [r[0] for r in conn.execute("SELECT prompt_id FROM jobs WHERE state='running'")]
            conn.execute("UPDATE jobs SET state='pending', started=NULL WHERE state='running'")
            return ids

        return self._write(write)

    def finish(self, entry: HistoryEntry) -> bool:
        """Move a running job to history in one transaction; ``False`` if it was not running.

        The entry's ``created`` and ``workflow_name``, when not given, are the queued job's; ``ended``,
        when not given, is now. The prompt, its ``extra_data`` and outputs to execute are the queued job's,
        copied in SQL rather than encoded again (a big prompt's JSON is written once, when it is queued)."""
        if entry.ended is None:
            entry.ended = time.time()
        record = (entry.number, _dumps(entry.outputs), entry.status, int(entry.completed), _dumps(entry.messages),
                  _dumps(entry.meta), entry.attempts, entry.ended, entry.state, entry.workflow_name,
                  entry.created, entry.started, entry.prompt_id)

        def write(conn: sqlite3.Connection) -> bool:
            moved = conn.execute(
                "INSERT INTO history (prompt_id, number, prompt, extra_data, outputs_to_execute, outputs, status, "
                "completed, messages, meta, attempts, finished, state, workflow_name, created, started) "
                "SELECT prompt_id, ?, prompt, extra_data, outputs, ?, ?, ?, ?, ?, ?, ?, ?, "
                "COALESCE(?, workflow_name), COALESCE(?, created), ? FROM jobs "
                "WHERE prompt_id=? AND state='running'", record).rowcount
            if not moved:
                return False
            conn.execute("DELETE FROM jobs WHERE prompt_id=?", (entry.prompt_id,))
            return True

        return self._write(write)

    def delete_pending(self, prompt_ids: Iterable[str]) -> list[str]:
        """Cancel queued (not running) jobs; returns the ids that were removed. Each is kept in history
        as ``cancelled`` (not shown by ``GET /history`` unless asked for)."""
        ids = [str(p) for p in prompt_ids]
        return self._write(lambda conn: [pid for pid in ids
                                         if self._cancel(conn, "prompt_id=? AND state='pending'", (pid,))])

    def clear_pending(self) -> int:
        """Cancel every queued (not running) job; returns how many (kept in history as ``cancelled``)."""
        return self._write(lambda conn: self._cancel(conn, "state='pending'", ()))

    @staticmethod
    def _cancel(conn: sqlite3.Connection, where: str, params: tuple) -> int:
        """Move the queued jobs matching ``where`` to history as cancelled; returns how many."""
        conn.execute("INSERT INTO history (prompt_id, number, prompt, extra_data, outputs_to_execute, outputs, "
                     "status, completed, messages, meta, attempts, finished, state, workflow_name, created, "
                     "started) SELECT prompt_id, number, prompt, extra_data, outputs, '{}', ?, 0, '[]', '{}', "
                     f"attempts, ?, '{CANCELLED}', workflow_name, created, NULL FROM jobs WHERE {where} "
                     "ORDER BY number, seq", (comfy_status_str(CANCELLED), time.time(), *params))
        return conn.execute(f"DELETE FROM jobs WHERE {where}", params).rowcount

    def counts(self) -> tuple[int, int]:
        """``(running, pending)``."""
        rows = dict(self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return rows.get("running", 0), rows.get("pending", 0)

    def jobs(self, state: str, limit: int | None = None) -> list[Job]:
        """Jobs in ``state`` in queue order (the first ``limit`` of them when given)."""
        rows = self._conn().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state=? ORDER BY number, seq LIMIT ?",
            (state, -1 if limit is None else limit)).fetchall()
        return [_job(r) for r in rows]

    def queue_json(self) -> str:
        """``GET /queue``'s body, spliced from the stored JSON texts without re-encoding them."""
        rows = self._conn().execute("SELECT state, number, prompt_id, prompt, extra_data, outputs FROM jobs "
                                    "ORDER BY number, seq").fetchall()
        running, pending = [], []
        for state, number, pid, prompt, extra, outputs in rows:
            item = f"[{_number_text(number)},{_dumps(pid)},{prompt},{extra},{outputs}]"
            (running if state == "running" else pending).append(item)
        return f'{{"queue_running":[{",".join(running)}],"queue_pending":[{",".join(pending)}]}}'

    # -- history ----------------------------------------------------------------------------------

    def history_json(self, max_items: int | None = None, offset: int = -1, prompt_id: str | None = None,
                     include_cancelled: bool = False) -> str:
        """``{id: entry}`` in completion order, as ``GET /history`` pages it (ComfyUI's rules).

        Each entry has ComfyUI's keys and our run record under ``nodegraph``
        (:meth:`HistoryEntry.to_comfy`). Cancelled jobs are left out unless ``include_cancelled``."""
        where = "" if include_cancelled else "state IS NOT 'cancelled'"
        conn = self._conn()
        if prompt_id is not None:
            rows = conn.execute(f"SELECT {_HISTORY_COLUMNS} FROM history WHERE prompt_id=?"
                                + (f" AND {where}" if where else ""), (prompt_id,)).fetchall()
        else:
            where = f"WHERE {where}" if where else ""
            if offset is not None and offset >= 0:
                limit = max_items if max_items is not None else -1
                rows = conn.execute(f"SELECT {_HISTORY_COLUMNS} FROM history {where} ORDER BY seq LIMIT ? OFFSET ?",
                                    (limit, offset)).fetchall()
            elif max_items is not None:
                rows = conn.execute(f"SELECT * FROM (SELECT seq, {_HISTORY_COLUMNS} FROM history {where} "
                                    "ORDER BY seq DESC LIMIT ?) ORDER BY seq", (max_items,)).fetchall()
                rows = [r[1:] for r in rows]
            else:
                rows = conn.execute(f"SELECT {_HISTORY_COLUMNS} FROM history {where} ORDER BY seq").fetchall()
        items = []
        for (pid, number, prompt, extra, to_exec, outputs, status, completed, messages, meta, attempts, state,
             name, created, started, ended) in rows:
            record = _dumps(run_record(state, name, created, started, ended, attempts))
            items.append(
                f'{_dumps(pid)}:{{"prompt":[{_number_text(number)},{_dumps(pid)},{prompt},{extra},{to_exec}],'
                f'"outputs":{outputs},"status":{{"status_str":{_dumps(status)},'
                f'"completed":{"true" if completed else "false"},"messages":{messages}}},"meta":{meta},'
                f'"nodegraph":{record}}}')
        return "{" + ",".join(items) + "}"

    def history(self, prompt_id: str) -> HistoryEntry | None:
        """One history entry (cancelled ones too), or ``None``."""
        row = self._conn().execute(f"SELECT {_HISTORY_COLUMNS} FROM history WHERE prompt_id=?",
                                   (prompt_id,)).fetchone()
        return None if row is None else _history_entry(row)

    def history_entries(self, states: Iterable[str], *, sort: str = "created", descending: bool = True,
                        limit: int | None = None, offset: int = 0) -> tuple[list[HistoryEntry], int]:
        """A page of the history entries whose run status is in ``states``, and how many there are.

        ``sort``: ``"created"`` (when the prompt was queued; the start, else the end, where that is
        unknown) or ``"duration"`` (end − start; 0 when unknown). ComfyUI's ``/api/jobs`` pages this way."""
        states = [check_state(s) for s in states]
        if not states:
            return [], 0
        keys = {"created": "COALESCE(created, started, finished)", "duration": "COALESCE(finished - started, 0)"}
        if sort not in keys:
            raise ValueError(f"unknown sort {sort!r}; expected one of {', '.join(keys)}")
        where = f"state IN ({','.join('?' * len(states))})"
        direction = "DESC" if descending else "ASC"
        conn = self._conn()
        (total,) = conn.execute(f"SELECT COUNT(*) FROM history WHERE {where}", states).fetchone()
        rows = conn.execute(f"SELECT {_HISTORY_COLUMNS} FROM history WHERE {where} "
                            f"ORDER BY {keys[sort]} {direction}, seq {direction} LIMIT ? OFFSET ?",
                            (*states, -1 if limit is None else limit, max(offset, 0))).fetchall()
        return [_history_entry(row) for row in rows], total

    def history_count(self, include_cancelled: bool = False) -> int:
        where = "" if include_cancelled else " WHERE state IS NOT 'cancelled'"
        return self._conn().execute("SELECT COUNT(*) FROM history" + where).fetchone()[0]

    def delete_history(self, prompt_ids: Iterable[str]) -> int:
        ids = [str(p) for p in prompt_ids]
        return self._write(lambda conn: sum(
            conn.execute("DELETE FROM history WHERE prompt_id=?", (pid,)).rowcount for pid in ids))

    def clear_history(self) -> int:
        return self._write(lambda conn: conn.execute("DELETE FROM history").rowcount)


class _Writer:
    """The writing connection: writes queued while another is being committed wait for the writer
    thread, which commits them in one transaction per batch; a write that finds nothing queued and
    the connection free is committed on the caller's thread (no hand-off to the writer and back:
    two thread wake-ups on the path of every job's claim and end)."""

    def __init__(self, connect, syncer: "_WalSyncer | None" = None) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._connect = connect
        self._syncer = syncer
        #: held by whichever thread commits on the connection
        self._busy = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._main, name="nodegraph-db-writer", daemon=True)
        self._thread.start()

    def call(self, fn):
        if not self._thread.is_alive():
            raise RuntimeError("the job store is closed")
        future: Future = Future()
        conn = self._conn
        if conn is not None and self._queue.empty() and self._busy.acquire(blocking=False):
            try:
                if self._queue.empty():
                    self._commit(conn, [(fn, future)])
            finally:
                self._busy.release()
            if future.done():
                if self._syncer is not None:
                    self._syncer.committed()
                return future.result()
        self._queue.put((fn, future))
        return future.result()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def _main(self) -> None:
        conn = self._conn = self._connect()
        running = True
        while running:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                running = False
                batch = [item for item in batch if item is not None]
            if batch:
                with self._busy:
                    self._commit(conn, batch)
                if self._syncer is not None:
                    self._syncer.committed()
        self._conn = None

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: list) -> None:
        outcomes = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future in batch:
                conn.execute("SAVEPOINT one")
                try:
                    outcomes.append((future, fn(conn), None))
                    conn.execute("RELEASE one")
                except Exception as exc:  # this write is refused; the others stand
                    conn.execute("ROLLBACK TO one")
                    conn.execute("RELEASE one")
                    outcomes.append((future, None, exc))
            conn.execute("COMMIT")
        except Exception as exc:  # the transaction itself failed: nothing was written
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, future in batch:
                future.set_exception(exc)
            return
        for future, result, error in outcomes:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)


class _WalSyncer:
    """Flushes the WAL file to the disk within :data:`SYNC_DELAY` of a commit, on its own thread (the
    batched durability of :class:`JobStore`); one flush covers every commit made before it."""

    def __init__(self, wal: Path) -> None:
        self.wal = wal
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="nodegraph-db-sync", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        self._dirty.set()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._thread.join(30)

    def _main(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            self._stop.wait(SYNC_DELAY)  # the commits of the next moments share this flush
            self._dirty.clear()
            self.sync()

    def sync(self) -> None:
        fsync_path(self.wal)  # a log checkpointed and removed has nothing left to flush
