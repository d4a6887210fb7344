"""The durable job queue and history: one SQLite file (WAL), every write committed before it returns.

A job is ``pending`` → ``running`` → gone from ``jobs`` and present in ``history``; the last step is one
transaction, so a job completes exactly once. After a crash, :meth:`JobStore.recover` puts the job
that was running back in the queue (its ``attempts`` count says it was interrupted); a job that keeps
killing the server is given up after ``max_attempts`` and recorded as an error.

Writes go through one writer thread that commits whatever is waiting in a single transaction (group
commit): twenty clients queueing at once cost one disk flush, not twenty, and each caller still
returns only after its write is on disk. Each write runs in its own savepoint, so one refused write
(queue full, duplicate id) does not undo the others. Readers use their own connections (WAL).

Prompts and outputs are stored as JSON text and, where the API returns them unchanged, spliced into
responses as text (``GET /queue`` stays cheap with thousands of queued prompts).
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs TEXT NOT NULL,
    client_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_order ON jobs (state, number, seq);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    outputs TEXT NOT NULL,
    status TEXT NOT NULL,
    completed INTEGER NOT NULL,
    messages TEXT NOT NULL,
    meta TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

#: ``extra_data`` keys never written to disk or history (ComfyUI strips these too).
SECRET_EXTRA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _number_text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(float(number))


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


@dataclass
class HistoryEntry:
    """A finished prompt, in ComfyUI's history shape (see :meth:`to_comfy`)."""

    prompt_id: str
    number: float
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    outputs: dict[str, dict] = field(default_factory=dict)
    status: str = "success"
    completed: bool = True
    messages: list[list] = field(default_factory=list)
    meta: dict[str, dict] = field(default_factory=dict)
    attempts: int = 1

    def to_comfy(self) -> dict[str, Any]:
        return {"prompt": [self.number, self.prompt_id, self.prompt, self.extra_data,
                           self.outputs_to_execute],
                "outputs": self.outputs,
                "status": {"status_str": self.status, "completed": self.completed,
                           "messages": self.messages},
                "meta": self.meta}


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


class DuplicatePrompt(Exception):
    """A prompt with this id is queued or in history already."""


class JobStore:
    """Queue and history in one SQLite file. Safe to use from several threads (a connection each)."""

    def __init__(self, path: str | Path, max_attempts: int = 3) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().executescript(SCHEMA)
        self._writer = _Writer(self._connect)

    # -- connections ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
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
                max_queue: int | None = None) -> Job:
        """Add a job; its number is ``number``, or the next counter value (negated when ``front``)."""
        extra = {k: v for k, v in job.extra_data.items() if k not in SECRET_EXTRA_KEYS}
        prompt_text, outputs_text, extra_text = _dumps(job.prompt), _dumps(job.outputs_to_execute), _dumps(extra)

        def write(conn: sqlite3.Connection) -> float:
            if max_queue is not None:
                (count,) = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
                if count >= max_queue:
                    raise QueueFull(f"the queue holds {count} prompts (limit {max_queue}); "
                                    "wait for some to finish or cancel some")
            if conn.execute("SELECT 1 FROM jobs WHERE prompt_id=? UNION ALL "
                            "SELECT 1 FROM history WHERE prompt_id=?",
                            (job.prompt_id, job.prompt_id)).fetchone():
                raise DuplicatePrompt(f"a prompt with id {job.prompt_id!r} was submitted already")
            value = number
            if value is None:
                counter = self._next_counter(conn)
                value = -counter if front else counter
            value = int(value) if float(value).is_integer() else float(value)
            conn.execute("INSERT INTO jobs (prompt_id, number, prompt, extra_data, outputs, client_id, "
                         "state, attempts, created) VALUES (?,?,?,?,?,?, 'pending', 0, ?)",
                         (job.prompt_id, value, prompt_text, extra_text, outputs_text, job.client_id,
                          time.time()))
            return value

        job.number = self._write(write)
        job.extra_data = extra
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

    def claim_next(self) -> Job | None:
        """Mark the first pending job (lowest number) running and return it; ``None`` when empty."""
        return self._claim("state='pending' ORDER BY number, seq LIMIT 1", ())

    def claim(self, prompt_id: str) -> Job | None:
        """Mark one pending job running and return it; ``None`` if it is no longer pending (cancelled,
        or claimed already). A runner that picks jobs out of order (the Ray runner's actor affinity)
        uses it."""
        return self._claim("prompt_id=? AND state='pending'", (prompt_id,))

    def _claim(self, where: str, params: tuple) -> Job | None:
        def write(conn: sqlite3.Connection):
            row = conn.execute("SELECT prompt_id, number, prompt, extra_data, outputs, client_id, attempts "
                               f"FROM jobs WHERE {where}", params).fetchone()
            if row is not None:
                conn.execute("UPDATE jobs SET state='running', attempts=attempts+1 WHERE prompt_id=?",
                             (row[0],))
            return row

        row = self._write(write)
        if row is None:
            return None
        return Job(row[0], row[1], json.loads(row[2]), json.loads(row[3]), json.loads(row[4]), row[5],
                   "running", row[6] + 1)

    def requeue(self, prompt_id: str) -> bool:
        """Put a running job back in the queue (graceful shutdown); it keeps its number."""
        return self._write(lambda conn: conn.execute(
            "UPDATE jobs SET state='pending' WHERE prompt_id=? AND state='running'", (prompt_id,)).rowcount == 1)

    def recover(self) -> list[str]:
        """At start-up: jobs left ``running`` by a crash go back to ``pending``; returns their ids."""
        def write(conn: sqlite3.Connection) -> list[str]:
            ids = [r[0] for r in conn.execute("SELECT prompt_id FROM jobs WHERE state='running'")]
            conn.execute("UPDATE jobs SET state='pending' WHERE state='running'")
            return ids

        return self._write(write)

    def finish(self, entry: HistoryEntry) -> bool:
        """Move a running job to history in one transaction; ``False`` if it was not running."""
        values = (entry.prompt_id, entry.number, _dumps(entry.prompt), _dumps(entry.extra_data),
                  _dumps(entry.outputs_to_execute), _dumps(entry.outputs), entry.status, int(entry.completed),
                  _dumps(entry.messages), _dumps(entry.meta), entry.attempts, time.time())

        def write(conn: sqlite3.Connection) -> bool:
            if conn.execute("DELETE FROM jobs WHERE prompt_id=? AND state='running'",
                            (entry.prompt_id,)).rowcount != 1:
                return False
            conn.execute("INSERT INTO history (prompt_id, number, prompt, extra_data, outputs_to_execute, "
                         "outputs, status, completed, messages, meta, attempts, finished) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", values)
            return True

        return self._write(write)

    def delete_pending(self, prompt_ids: Iterable[str]) -> list[str]:
        """Cancel queued (not running) jobs; returns the ids that were removed."""
        ids = [str(p) for p in prompt_ids]
        return self._write(lambda conn: [pid for pid in ids if conn.execute(
            "DELETE FROM jobs WHERE prompt_id=? AND state='pending'", (pid,)).rowcount])

    def clear_pending(self) -> int:
        return self._write(lambda conn: conn.execute("DELETE FROM jobs WHERE state='pending'").rowcount)

    def counts(self) -> tuple[int, int]:
        """``(running, pending)``."""
        rows = dict(self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return rows.get("running", 0), rows.get("pending", 0)

    def jobs(self, state: str, limit: int | None = None) -> list[Job]:
        """Jobs in ``state`` in queue order (the first ``limit`` of them when given)."""
        rows = self._conn().execute(
            "SELECT prompt_id, number, prompt, extra_data, outputs, client_id, state, attempts FROM jobs "
            "WHERE state=? ORDER BY number, seq LIMIT ?", (state, -1 if limit is None else limit)).fetchall()
        return [Job(r[0], r[1], json.loads(r[2]), json.loads(r[3]), json.loads(r[4]), r[5], r[6], r[7])
                for r in rows]

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

    def history_json(self, max_items: int | None = None, offset: int = -1,
                     prompt_id: str | None = None) -> str:
        """``{id: entry}`` in completion order, as ``GET /history`` pages it (ComfyUI's rules)."""
        cols = ("prompt_id, number, prompt, extra_data, outputs_to_execute, outputs, status, completed, "
                "messages, meta")
        conn = self._conn()
        if prompt_id is not None:
            rows = conn.execute(f"SELECT {cols} FROM history WHERE prompt_id=?", (prompt_id,)).fetchall()
        elif offset is not None and offset >= 0:
            limit = max_items if max_items is not None else -1
            rows = conn.execute(f"SELECT {cols} FROM history ORDER BY seq LIMIT ? OFFSET ?",
                                (limit, offset)).fetchall()
        elif max_items is not None:
            rows = conn.execute(f"SELECT * FROM (SELECT seq, {cols} FROM history ORDER BY seq DESC LIMIT ?) "
                                "ORDER BY seq", (max_items,)).fetchall()
            rows = [r[1:] for r in rows]
        else:
            rows = conn.execute(f"SELECT {cols} FROM history ORDER BY seq").fetchall()
        items = []
        for pid, number, prompt, extra, to_exec, outputs, status, completed, messages, meta in rows:
            items.append(
                f'{_dumps(pid)}:{{"prompt":[{_number_text(number)},{_dumps(pid)},{prompt},{extra},{to_exec}],'
                f'"outputs":{outputs},"status":{{"status_str":{_dumps(status)},'
                f'"completed":{"true" if completed else "false"},"messages":{messages}}},"meta":{meta}}}')
        return "{" + ",".join(items) + "}"

    def history(self, prompt_id: str) -> HistoryEntry | None:
        row = self._conn().execute(
            "SELECT prompt_id, number, prompt, extra_data, outputs_to_execute, outputs, status, completed, "
            "messages, meta, attempts FROM history WHERE prompt_id=?", (prompt_id,)).fetchone()
        if row is None:
            return None
        return HistoryEntry(row[0], row[1], json.loads(row[2]), json.loads(row[3]), json.loads(row[4]),
                            json.loads(row[5]), row[6], bool(row[7]), json.loads(row[8]),
                            json.loads(row[9]), row[10])

    def history_count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM history").fetchone()[0]

    def delete_history(self, prompt_ids: Iterable[str]) -> int:
        ids = [str(p) for p in prompt_ids]
        return self._write(lambda conn: sum(
            conn.execute("DELETE FROM history WHERE prompt_id=?", (pid,)).rowcount for pid in ids))

    def clear_history(self) -> int:
        return self._write(lambda conn: conn.execute("DELETE FROM history").rowcount)


class _Writer:
    """One thread owning the writing connection: runs queued writes in one transaction per batch."""

    def __init__(self, connect) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._connect = connect
        self._thread = threading.Thread(target=self._main, name="nodegraph-db-writer", daemon=True)
        self._thread.start()

    def call(self, fn):
        if not self._thread.is_alive():
            raise RuntimeError("the job store is closed")
        future: Future = Future()
        self._queue.put((fn, future))
        return future.result()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def _main(self) -> None:
        conn = self._connect()
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
                self._commit(conn, batch)

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
