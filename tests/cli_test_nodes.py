"""Node classes for the CLI output tests, loaded with ``nodegraph run --nodes-module tests.cli_test_nodes``."""

from __future__ import annotations

from nodegraph.node import Input, Node, NodeResult, Output
from nodegraph.types import COMBO, INT, STRING

#: the description of the bars LibraryProgressBar draws (what the tests look for on stderr)
BAR_LABEL = "library-bar-under-test"


class LibraryProgressBar(Node):
    """Draws a tqdm progress bar the way libraries do (plain ``tqdm.auto`` or huggingface_hub's tqdm),
    then shows how many steps it counted."""

    category = "test"
    output_node = True
    library = Input(COMBO, choices=["tqdm", "huggingface_hub"], default="tqdm")
    steps = Input(INT, default=5, min=1, max=1000)
    outputs = (Output(STRING),)

    def execute(self, library, steps) -> NodeResult:
        if library == "huggingface_hub":
            from huggingface_hub.utils import tqdm
        else:
            from tqdm.auto import tqdm
        counted = sum(1 for _ in tqdm(range(steps), desc=BAR_LABEL, mininterval=0))
        text = f"counted {counted} steps"
        return NodeResult(outputs=(text,), ui={"text": [text]})
