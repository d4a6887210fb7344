"""The run reporter's WebSocket rules without a server: what a client gets depends on what it
announced, and a node's preview always goes right after one of its progress messages."""

from __future__ import annotations

import struct
import threading

import torch

from nodegraph.events import NodeFinished, NodeImage, NodePreview, NodeProgress, NodeStarted
from nodegraph.queue import Job
from nodegraph.queue.messages import ClientFeatures
from nodegraph.queue.reporter import RunReporter


class RecordingSink:
    """An event sink for one connected client with the given features (``None``: not connected)."""

    def __init__(self, features: ClientFeatures | None) -> None:
        self.features = features
        self.sent: list = []
        self.lock = threading.Lock()

    def post(self, client_id, message, *, ends_prompt=False) -> None:
        with self.lock:
            self.sent.append(message)

    def post_status(self) -> None:
        pass

    def is_connected(self, client_id: str) -> bool:
        return self.features is not None

    def client_features(self, client_id: str):
        return self.features

    def kinds(self) -> list[str]:
        import json

        return ["<frame>" if isinstance(m, bytes) else json.loads(m)["type"] for m in self.sent]


def reporter(features, extra_data=None) -> tuple[RunReporter, RecordingSink]:
    sink = RecordingSink(features)
    return RunReporter(Job("p", 0, {}, extra_data or {}, [], "c"), sink), sink


def preview(node: str, value: float) -> NodePreview:
    return NodePreview("p", node, torch.full((4, 4, 3), value))


def test_a_preview_waits_for_the_next_progress_and_the_latest_wins():
    report, sink = reporter(ClientFeatures(previews=True))
    report(NodeStarted("p", "1", "K", "1"))
    report(preview("1", 0.1))
    report(preview("1", 0.9))  # replaces the first: one frame per progress, as ComfyUI
    assert sink.kinds() == ["execution_cached", "executing"]
    report(NodeProgress("p", "1", 1, 2))
    assert sink.kinds()[-2:] == ["progress", "<frame>"]
    report(preview("1", 0.5))
    report(NodeFinished("p", "1", "K", "1"))  # the node ended first: its last preview is dropped
    report(NodeProgress("p", "1", 2, 2))
    assert sink.kinds().count("<frame>") == 1 and "node_finished" not in sink.kinds()


def test_nothing_for_clients_that_did_not_ask_or_are_gone():
    for features in (ClientFeatures(), None):
        report, sink = reporter(features)
        report(preview("1", 0.5))
        report(NodeProgress("p", "1", 1, 1))
        report(NodeFinished("p", "1", "K", "1"))
        assert "<frame>" not in sink.kinds() and "node_finished" not in sink.kinds()


def test_images_sent_as_results_need_no_preview_request():
    report, sink = reporter(ClientFeatures(), {"preview_method": "none"})
    report(NodeImage("p", "9", b"\x89PNG-bytes", "PNG"))
    assert sink.sent == [struct.pack(">II", 1, 2) + b"\x89PNG-bytes"]
    report, sink = reporter(None)
    report(NodeImage("p", "9", b"\x89PNG-bytes", "PNG"))
    assert sink.sent == []
