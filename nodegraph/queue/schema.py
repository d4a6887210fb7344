"""The job store's SQLite schema, and the migration that brings a file written by an older nodegraph to it.

Version 1 (``PRAGMA user_version`` 0, before run records): ``jobs`` and ``history`` without run times,
run status or workflow names. Version 2 adds

* ``jobs.started`` (when the current attempt was claimed) and ``jobs.workflow_name``;
* ``history.state`` (the run status: ``success``, ``error``, ``interrupted`` or ``cancelled``, see
  :mod:`nodegraph.queue.run_status`), ``history.workflow_name``, ``history.created`` (queued at) and
  ``history.started``; ``history.finished`` (already there) is the end time.

:func:`migrate` adds the missing columns and fills them for the rows already there (the status from
the entry's ComfyUI status and messages, the start time from its ``execution_start`` message, the
name from its ``extra_data``), in one transaction, so an old store opens with its history intact.
Times are seconds since the epoch (``time.time()``); the API shows milliseconds, as ComfyUI does.
"""

from __future__ import annotations

import json
import sqlite3

from .run_status import state_from_comfy, workflow_name_of

VERSION = 2

#: version 1's tables, as they were: a later version changes them only through :data:`ADDED_COLUMNS`
#: (a fresh file is built the way an old one is migrated)
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

#: Columns version 2 adds, per table (``ALTER TABLE … ADD COLUMN`` clauses; a fresh file gets them the
#: same way, so old and new files end up with one shape).
ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "jobs": (("started", "REAL"), ("workflow_name", "TEXT")),
    "history": (("state", "TEXT"), ("workflow_name", "TEXT"), ("created", "REAL"), ("started", "REAL")),
}


def migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring an older file's tables to :data:`VERSION` (one transaction)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > VERSION:
            raise RuntimeError(f"the job store was written by a newer nodegraph (schema {version}; this one "
                               f"knows {VERSION}); upgrade nodegraph or use another --data-dir")
        for statement in _statements(SCHEMA):
            conn.execute(statement)
        for table, columns in ADDED_COLUMNS.items():
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        conn.execute("CREATE INDEX IF NOT EXISTS history_state ON history (state, seq)")
        # entries without a run status: written before version 2, or by an older nodegraph opened on
        # this file since (found through the index, so a current file costs nothing here)
        _fill_history(conn)
        if version < VERSION:
            _fill_jobs(conn)
        conn.execute(f"PRAGMA user_version={VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _fill_history(conn: sqlite3.Connection) -> None:
    """Run status, start time and workflow name of entries that have no run status yet."""
    rows = conn.execute("SELECT seq, status, messages, extra_data FROM history WHERE state IS NULL").fetchall()
    for seq, status, messages_text, extra_text in rows:
        messages = _loads(messages_text, [])
        started = None
        for message in messages if isinstance(messages, list) else ():
            if (isinstance(message, list) and len(message) >= 2 and message[0] == "execution_start"
                    and isinstance(message[1], dict) and isinstance(message[1].get("timestamp"), (int, float))):
                started = message[1]["timestamp"] / 1000.0
        conn.execute("UPDATE history SET state=?, started=?, workflow_name=? WHERE seq=?",
                     (state_from_comfy(status, messages), started, workflow_name_of(_loads(extra_text, {})), seq))


def _fill_jobs(conn: sqlite3.Connection) -> None:
    """Workflow names of jobs queued before version 2."""
    rows = conn.execute("SELECT seq, extra_data FROM jobs WHERE workflow_name IS NULL").fetchall()
    for seq, extra_text in rows:
        name = workflow_name_of(_loads(extra_text, {}))
        if name is not None:
            conn.execute("UPDATE jobs SET workflow_name=? WHERE seq=?", (name, seq))


def _loads(text: str, default):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default
