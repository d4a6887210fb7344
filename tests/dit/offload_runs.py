"""The --vram-budget-gb / --lowvram check the DiT suites run on a family's tiny files: a copy of the
models folder with some files in fp16 (as releases ship them), one unbudgeted run that measures the
transformer and each placed model's streaming floor, and budgeted runs that must stream, stay under the
budget and give the unbudgeted image."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from nodegraph.builder import Graph

from tests.helpers.engines import make_engine


def fp16_copy(src: Path, dst: Path, files) -> Path:
    """``src/models`` copied under ``dst`` with the floating-point tensors of ``files`` (paths under
    models/) stored in fp16; ``dst``."""
    shutil.copytree(src / "models", dst / "models", symlinks=True)
    for name in files:
        path = dst / "models" / name
        sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(path)).items()}
        path.unlink()
        save_file(sd, str(path))
    return dst


def loaded_transformer(manager):
    """The model manager's loaded transformer entry."""
    for e in manager._models.values():
        if "transformer" in str(e.key) and e.model is not None:
            return e
    raise AssertionError("no transformer loaded")


@dataclass(frozen=True)
class Unbudgeted:
    """What the unbudgeted run gave and what the budgeted runs are held to."""

    image: torch.Tensor
    #: halfway between the transformer's streaming floor and its whole fp32 size (under that size)
    budget: int
    #: the most a budgeted run may materialise: the budget, or a larger model's floor (a text encoder
    #: whose resident part, its embeddings, exceeds the budget streams at its floor)
    limit: int
    #: the unbudgeted run's materialised peak
    peak: int


def unbudgeted_run(root: Path, tmp_path: Path, registry, graph: Callable[[], Graph]) -> Unbudgeted:
    """Run ``graph()`` with no budget on the models under ``root`` and measure what the budget is."""
    from nodegraph.offload import Placement

    whole = make_engine(root, tmp_path / "whole", registry)
    try:
        image = whole.run(graph()).raise_for_status().value("out")
        models = whole.services["models"]
        peak = models.memory.peak
        transformer = loaded_transformer(models)
        full = sum(p.numel() * 4 for p in transformer.model.parameters())
        # each placed model's smallest footprint: resident part + one streamed block (fp16 → fp32)
        floors = {e.key: Placement(e.model.half(), torch.float32).plan("cpu", None, stream_all=True).peak_bound
                  for e in models._models.values() if e.placed and e.model is not None}
    finally:
        whole.close()
    budget = (floors[transformer.key] + full) // 2
    assert budget < full  # the transformer does not fit the budget
    return Unbudgeted(image, budget, max(budget, *floors.values()), peak)


def budgeted_run(root: Path, tmp_path: Path, registry, graph: Callable[[], Graph], base: Unbudgeted,
                 mode: str) -> int:
    """Run ``graph()`` again with ``mode`` ``budget`` (``base.budget``) or ``lowvram``: the transformer stays
    fp16 on file, under a budget it streams and the peak stays within ``base.limit``, and the image equals
    the unbudgeted one. Returns the manager's materialised bytes at the end of the run."""
    kwargs = {"budget": {"vram_budget": base.budget}, "lowvram": {"low_vram": True}}[mode]
    engine = make_engine(root, tmp_path / mode, registry, **kwargs)
    try:
        out = engine.run(graph()).raise_for_status().value("out")
        manager = engine.services["models"]
        entry = loaded_transformer(manager)
        assert entry.placement is not None and {p.dtype for p in entry.model.parameters()} == {torch.float16}
        if mode == "budget":
            assert entry.placement.plan("cpu", base.budget).streams
            assert 0 < manager.memory.peak <= base.limit
        torch.testing.assert_close(out, base.image, rtol=0, atol=1e-6)
        return manager.memory.current
    finally:
        engine.close()
