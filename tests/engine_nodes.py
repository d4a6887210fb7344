"""Small node classes used by the engine tests (numbers and sleeps instead of images)."""

from __future__ import annotations

import threading
import time

from nodegraph.builder import Graph
from nodegraph.node import Input, Node, NodeResult, Output
from nodegraph.types import ANY, BOOLEAN, COMBO, FLOAT, INT, STRING


class CallLog:
    """Records which node ids ran, across threads."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.spans: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def add(self, node_id: str, start: float | None = None, end: float | None = None) -> None:
        with self.lock:
            self.calls.append(node_id)
            if start is not None:
                self.spans[node_id] = (start, end)


LOG = CallLog()


class Number(Node):
    category = "test"
    value = Input(INT, default=0, min=-1000, max=1000)
    outputs = (Output(INT, "value"),)

    def execute(self, value):
        LOG.add(self.ctx.node_id)
        return (value,)


class Add(Node):
    category = "test"
    a = Input(INT, force_input=True)
    b = Input(INT, default=1)
    outputs = (Output(INT),)

    def execute(self, a, b):
        LOG.add(self.ctx.node_id)
        return (a + b,)


class Scale(Node):
    category = "test"
    x = Input(INT, force_input=True)
    factor = Input(FLOAT, default=1.0, min=0.0, max=10.0)
    mode = Input(COMBO, choices=["floor", "round"], default="floor")
    outputs = (Output(FLOAT),)

    def execute(self, x, factor, mode):
        LOG.add(self.ctx.node_id)
        return (x * factor,)


class Text(Node):
    category = "test"
    text = Input(STRING, default="")
    flag = Input(BOOLEAN, default=False, optional=True)
    outputs = (Output(STRING),)

    def execute(self, text, flag=False):
        return (text.upper() if flag else text,)


class Sink(Node):
    """Output node: shows whatever it gets."""
    category = "test"
    output_node = True
    value = Input(ANY)

    def execute(self, value):
        LOG.add(self.ctx.node_id)
        return NodeResult(ui={"value": [value]})


class Sleep(Node):
    """Sleeps, then passes its input on; reports progress and honours interruption."""
    category = "test"
    value = Input(INT, force_input=True)
    seconds = Input(FLOAT, default=0.2, min=0.0, max=60.0)
    outputs = (Output(INT),)

    def execute(self, value, seconds):
        start = time.perf_counter()
        steps = 20
        for i in range(steps):
            self.ctx.progress(i, steps)
            time.sleep(seconds / steps)
        self.ctx.progress(steps, steps)
        LOG.add(self.ctx.node_id, start, time.perf_counter())
        return (value,)


class Fail(Node):
    category = "test"
    value = Input(INT, force_input=True)
    message = Input(STRING, default="boom")
    outputs = (Output(INT),)

    def execute(self, value, message):
        raise RuntimeError(message)


class Big(Node):
    """Makes a byte blob of the given size (for cache-budget tests)."""
    category = "test"
    kib = Input(INT, default=1, min=0, max=1 << 20)
    seed = Input(INT, default=0)
    outputs = (Output("BLOB"),)

    def execute(self, kib, seed):
        LOG.add(self.ctx.node_id)
        return (bytearray(kib * 1024),)


class BlobSize(Node):
    category = "test"
    blob = Input("BLOB")
    outputs = (Output(INT),)

    def execute(self, blob):
        return (len(blob),)


class Range(Node):
    """A list output: 0..count-1 (each downstream node runs once per item)."""
    category = "test"
    count = Input(INT, default=3, min=0, max=100)
    outputs = (Output(INT, is_list=True),)

    def execute(self, count):
        return (list(range(count)),)


class Total(Node):
    """Takes whole lists (ComfyUI INPUT_IS_LIST)."""
    category = "test"
    takes_lists = True
    values = Input(INT, force_input=True)
    outputs = (Output(INT),)

    def execute(self, values):
        return ([sum(values)],) if False else (sum(values),)


class RepeatAdd(Node):
    """Expands at run time into a chain of ``times`` Add nodes (a loop, unrolled)."""
    category = "test"
    value = Input(INT, force_input=True)
    times = Input(INT, default=3, min=1, max=50)
    outputs = (Output(INT),)

    def execute(self, value, times):
        g = Graph()
        current = g.node("Number", value=value)
        for _ in range(times):
            current = g.node("Add", a=current, b=1)
        return NodeResult(outputs=(current.out(0),), expand=g)


class Random(Node):
    """Never cacheable."""
    category = "test"
    cacheable = False
    outputs = (Output(INT),)

    def execute(self):
        LOG.add(self.ctx.node_id)
        import random
        return (random.randint(0, 1 << 30),)


class NeedsPositive(Node):
    category = "test"
    value = Input(INT, default=1)
    outputs = (Output(INT),)

    @classmethod
    def validate_inputs(cls, value):
        return True if value > 0 else f"value must be positive, got {value}"

    def execute(self, value):
        return (value,)


TEST_NODES = [Number, Add, Scale, Text, Sink, Sleep, Fail, Big, BlobSize, Range, Total, RepeatAdd, Random,
              NeedsPositive]
