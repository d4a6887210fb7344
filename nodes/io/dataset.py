"""DatasetExport: images and captions → PNG files plus a ``metadata.jsonl`` (Hugging Face ``imagefolder``
layout: one ``{"file_name": …, "text": …}`` line per image), written inside the output folder only.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from nodegraph.node import Input, Node, NodeResult
from nodegraph.pngmeta import encode_png
from nodegraph.types import IMAGE, STRING

from nodegraph.user_files import resolve_inside
from nodegraph_nodes.io.files import write_new_file
from nodegraph.value_checks import check_image


class DatasetExport(Node):
    """Write images and their captions as a dataset (PNG + metadata.jsonl) into a folder of the output directory."""

    category = "image/dataset"
    output_node = True
    takes_lists = True
    images = Input(IMAGE)
    captions = Input(STRING, force_input=True)
    folder = Input(STRING, default="dataset", tooltip="A folder inside the output directory.")
    filename_prefix = Input(STRING, default="img")
    outputs = ()

    @classmethod
    def validate_inputs(cls, folder=None, filename_prefix=None, **_: Any) -> bool | str:
        for name, value in (("folder", folder), ("filename_prefix", filename_prefix)):
            if isinstance(value, str):
                if not value.strip():
                    return f"input '{name}' is empty"
                if value.startswith(("/", "\\")) or ".." in value.replace("\\", "/").split("/"):
                    return f"input '{name}' must stay inside the output folder (no absolute paths or '..')"
        return True

    def execute(self, images, captions, folder, filename_prefix) -> NodeResult:
        folder, prefix = folder[0], filename_prefix[0]
        if "/" in prefix or "\\" in prefix:
            raise ValueError("input 'filename_prefix' must be a plain name, without folders")
        batches = [check_image(b, "images") for b in images]
        frames = [b[i] for b in batches for i in range(b.shape[0])]
        texts = [str(c) for c in captions]
        if len(texts) not in (1, len(frames)):
            raise ValueError(f"input 'captions' has {len(texts)} caption(s) for {len(frames)} image(s); give one "
                             "caption per image (or one for all)")
        if len(texts) == 1:
            texts = texts * len(frames)
        base = self.ctx.paths.output_dir
        target = resolve_inside(base, folder, "output folder")
        target.mkdir(parents=True, exist_ok=True)
        if not target.resolve().is_relative_to(base.resolve()):
            raise ValueError(f"input 'folder' {folder!r} leads outside the output folder")
        records = []
        counter = 1
        for frame, text in zip(frames, texts):
            data = encode_png(frame, {}, 4)
            name, counter = write_new_file(target, prefix, counter, data)
            counter += 1
            records.append({"file_name": name, "text": text})
        with open(target / "metadata.jsonl", "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        rel = target.resolve().relative_to(base.resolve()).as_posix()
        return NodeResult(ui={"text": [f"wrote {len(records)} image(s) and captions to {rel}/metadata.jsonl"],
                              "images": [{"filename": r["file_name"], "subfolder": rel, "type": "output"}
                                         for r in records]})
