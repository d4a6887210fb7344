"""The job queue: the durable store, the runner protocol, and the runner that uses this process's engine.

Modules, one job each: ``store`` (SQLite queue and history), ``protocol`` (:class:`JobRunner`,
:class:`EventSink`, :class:`RunnerFactory`), ``messages`` (ComfyUI's WebSocket messages),
``reporter`` (one job's events as messages), ``run_status`` (success / error / interrupted /
cancelled, and ComfyUI's ``status_str``), ``schema`` (the SQLite tables and their migration), ``base``
(the attempt/finish/history logic every runner shares) and ``local`` (:class:`LocalRunner`). The Ray
runner (``nodegraph.cluster``) implements the same protocol on the same base. This package imports
neither the server nor Ray.
"""

from __future__ import annotations

from .base import RunnerBase, output_meta
from .local import LocalRunner
from .protocol import EventSink, JobRunner, Message, RunnerFactory
from .reporter import RunReporter
from .run_status import RUN_STATES
from .store import DuplicatePrompt, HistoryEntry, Job, JobStore, QueueFull

__all__ = ["DuplicatePrompt", "EventSink", "HistoryEntry", "Job", "JobRunner", "JobStore", "LocalRunner",
           "Message", "QueueFull", "RUN_STATES", "RunReporter", "RunnerBase", "RunnerFactory", "output_meta"]
