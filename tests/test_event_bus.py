"""The event bus's per-node entry points: direct calls for listeners that take them, events for the rest."""

from __future__ import annotations

from nodegraph.events import EventBus, EventRecorder, NodeFinished, NodeStarted


class DirectListener:
    """Takes the two per-node events as calls; everything else as events."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.events: list = []

    def __call__(self, event) -> None:
        self.events.append(event)

    def on_node_started(self, *args) -> None:
        self.calls.append(("started",) + args)

    def on_node_finished(self, *args) -> None:
        self.calls.append(("finished",) + args)


def test_direct_listeners_get_the_fields_and_plain_listeners_the_same_events():
    bus = EventBus()
    direct, recorder = DirectListener(), EventRecorder()
    bus.subscribe(direct)
    unsubscribe = bus.subscribe(recorder)
    bus.node_started("p", "7", "ImageInvert", "3")
    bus.node_finished("p", "7", "ImageInvert", "3", 0.25, False, {"images": []}, True)

    assert direct.calls == [("started", "p", "7", "ImageInvert", "3"),
                            ("finished", "p", "7", "ImageInvert", "3", 0.25, False, {"images": []}, True)]
    assert direct.events == []
    assert recorder.events == [NodeStarted("p", "7", "ImageInvert", "3"),
                               NodeFinished("p", "7", "ImageInvert", "3", 0.25, False, {"images": []}, True)]

    unsubscribe()
    bus.node_started("p", "8", "ImageInvert", "8")
    assert len(recorder.events) == 2 and direct.calls[-1] == ("started", "p", "8", "ImageInvert", "8")
    assert bus.active


def test_a_run_reports_every_node_to_both_kinds_of_listener():
    from nodegraph import Engine, Graph

    engine = Engine()
    g = Graph()
    image = g.node("EmptyImage", width=8, height=8)
    g.node("PreviewAny", source=g.node("GetImageSize", image=g.node("ImageInvert", image=image.out(0)).out(0)).out(0))
    direct, recorder = DirectListener(), EventRecorder()
    result = engine.run(g, listeners=[direct, recorder])
    assert result.ok
    started = [c[2] for c in direct.calls if c[0] == "started"]
    finished = [c[2] for c in direct.calls if c[0] == "finished"]
    assert started == [e.node_id for e in recorder.of(NodeStarted)] and len(started) == 4
    assert finished == [e.node_id for e in recorder.of(NodeFinished)] == started
    assert not any(isinstance(e, (NodeStarted, NodeFinished)) for e in direct.events)
