"""Model-free stand-ins used by the language-and-vision tests (a 'generator' that paints a prompt)."""

from __future__ import annotations

import hashlib

import torch

from nodegraph.node import Input, Node, NodeResult, Output
from nodegraph.types import ANY, IMAGE, INT, STRING

CALLS: list[str] = []


class FakeGenerate(Node):
    """Stand-in for txt2img: a deterministic image whose colours and pattern come from the prompt's hash."""

    category = "test"
    prompt = Input(STRING, force_input=True)
    size = Input(INT, default=32, min=8, max=256)
    outputs = (Output(IMAGE),)

    def execute(self, prompt, size=32):
        CALLS.append(f"FakeGenerate:{prompt[:40]}")
        digest = hashlib.sha256(prompt.encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        base = torch.tensor([digest[0], digest[1], digest[2]], dtype=torch.float32) / 255.0
        img = (0.6 * base.view(1, 1, 1, 3) + 0.4 * torch.rand(1, size, size, 3, generator=g)).clamp(0, 1)
        return (img,)


class Collect(Node):
    """Output node: shows whatever it gets (lists whole)."""

    category = "test"
    output_node = True
    takes_lists = True
    value = Input(ANY)

    def execute(self, value):
        return NodeResult(ui={"value": [repr(v)[:200] if not isinstance(v, (str, int, float)) else v for v in value]})



class BadImage(Node):
    """An 'image' in the wrong layout ([B,C,H,W])."""

    category = "test"
    outputs = (Output(IMAGE),)

    def execute(self):
        return (torch.rand(1, 3, 32, 32),)


class FakeConditioning(Node):
    """CONDITIONING without a text encoder: [[tensor(batch, 77, width), {pooled_output}]]."""

    category = "test"
    width = Input(INT, default=32, min=8, max=2048)
    batch = Input(INT, default=1, min=1, max=8)
    outputs = (Output("CONDITIONING"),)

    def execute(self, width=32, batch=1):
        g = torch.Generator().manual_seed(width)
        return ([[torch.randn(batch, 77, width, generator=g), {"pooled_output": torch.randn(batch, 32, generator=g)}]],)


VL_TEST_NODES = [FakeGenerate, Collect, BadImage, FakeConditioning]
