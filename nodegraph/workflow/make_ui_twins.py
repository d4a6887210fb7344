"""Write the canvas twin ``NAME.ui.json`` of every API workflow ``NAME.json`` in a folder.

    python -m nodegraph.workflow.make_ui_twins [workflows/]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..registry import default_registry
from .api_to_ui import api_to_ui


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:] or ["workflows"])[0])
    registry = default_registry()
    for path in sorted(folder.glob("*.json")):
        if path.name.endswith(".ui.json"):
            continue
        twin = path.with_name(path.name[: -len(".json")] + ".ui.json")
        if twin.exists():
            continue  # hand-made canvas files are kept
        twin.write_text(json.dumps(api_to_ui(json.loads(path.read_text()), registry), indent=1) + "\n")
        print(f"wrote {twin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
