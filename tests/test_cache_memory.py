"""The cache counts what it really holds (each tensor storage once, Python objects' insides), stays
under its budgets, takes its defaults from the machine and its budgets from the CLI flags; the temp
folder keeps a bounded number of previews (issue 16, point 3)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from nodegraph import Engine, Graph, OutputCache, Paths
from nodegraph.cache import (DEFAULT_CAP, GiB, default_ram_budget, footprint, machine_ram, measure,
                             result_footprint)
from nodegraph.models import ManagerOwned
from nodegraph.node import Input, Node, Output
from nodegraph.types import IMAGE

IMAGE_BYTES = 64 * 64 * 3 * 4


def image(color: float = 0.0) -> torch.Tensor:
    return torch.full((1, 64, 64, 3), color)


# -- what one value holds ----------------------------------------------------------------------------

def test_a_storage_is_counted_once_however_many_views_hold_it():
    t = image()
    ram, vram = measure(([t, t[0], t[:, :32]], {"same": t.view(-1)}))
    assert IMAGE_BYTES <= ram < IMAGE_BYTES + 2000 and vram == 0
    fp = result_footprint(([t], [t[0]]), None)
    assert list(fp.storages.values()) == [(IMAGE_BYTES, False)]


def test_a_view_keeps_its_whole_storage_alive():
    big = torch.zeros(1000, 1000)
    ram, _ = measure(big[:1, :1])
    assert ram >= 4_000_000


@dataclass
class Holder:
    samples: torch.Tensor
    label: str


class Slotted:
    __slots__ = ("data", "extra")

    def __init__(self, data, extra) -> None:
        self.data, self.extra = data, extra


class Model(ManagerOwned):
    def __init__(self) -> None:
        self.weights = torch.zeros(1 << 20)


def test_python_objects_are_counted_with_what_they_hold():
    t = image()
    assert measure(Holder(t, "x" * 1000))[0] >= IMAGE_BYTES + 1000
    assert measure(Slotted(t, [bytes(5000)]))[0] >= IMAGE_BYTES + 5000
    assert measure({"texts": ["a" * 10_000, "b" * 10_000]})[0] >= 20_000
    assert measure(Model()) == (0, 0)  # the model manager owns it: not counted again
    cyclic: list = []
    cyclic.append(cyclic)
    assert measure(cyclic)[0] > 0  # walks each object once


def test_numbers_and_arrays():
    import numpy as np

    assert measure(np.zeros(1000, dtype=np.float64))[0] == 8000
    assert footprint(torch.zeros(0)).totals() == (0, 0)
    assert measure(torch.zeros(2, device="meta")) == (0, 0)


# -- the cache's totals ------------------------------------------------------------------------------

def test_entries_sharing_a_storage_count_it_once_until_the_last_goes():
    cache = OutputCache(ram_budget=1 << 20, vram_budget=0)
    t = image()
    cache.put(b"a", ([t],))
    one = cache.stats().ram_bytes
    cache.put(b"b", ([t[0]],))  # a node that passes (a view of) its input through
    cache.put(b"c", ([t],), {"images": [{"filename": "x.png"}]})
    assert cache.stats().ram_bytes < one + 2000  # containers only, not 2 more images
    cache.put(b"a", ([image(1.0)],))  # replacing an entry releases its storage reference
    assert cache.stats().ram_bytes >= 2 * IMAGE_BYTES
    for key in (b"b", b"c"):
        cache._release(cache._entries.pop(key))
    assert IMAGE_BYTES <= cache.stats().ram_bytes < IMAGE_BYTES + 2000
    cache.clear()
    assert cache.stats().ram_bytes == 0 and cache._storages == {}


def test_a_one_tensor_result_is_counted_as_the_general_walk_counts_it():
    from nodegraph.cache import result_footprint

    big = image()
    for outputs in (([big],), ([big[0, :4]],), ([torch.zeros(3, dtype=torch.float16)],)):
        cache = OutputCache(ram_budget=1 << 30, vram_budget=0)
        assert cache.put(b"k", outputs)  # the one-CPU-tensor path
        fp = result_footprint(outputs, None)
        entry = cache._entries[b"k"]
        assert (entry.ram_bytes, entry.vram_bytes) == fp.totals()
        assert (entry.object_ram, entry.storages) == (fp.ram, tuple(fp.storages))
        assert cache.stats().ram_bytes == fp.totals()[0]
    small = OutputCache(ram_budget=IMAGE_BYTES // 2, vram_budget=0)
    assert not small.put(b"k", ([big],)) and small.stats().rejected == 1 and len(small) == 0


def test_eviction_keeps_the_cache_under_its_budget():
    budget = 10 * IMAGE_BYTES
    cache = OutputCache(ram_budget=budget)
    shared = image(0.5)
    for i in range(60):
        assert cache.put(i.to_bytes(2, "big"), ([image(i), shared],) if i % 3 else ([shared],))
        stats = cache.stats()
        assert stats.ram_bytes <= budget
        held = sum(record[0] for record in cache._storages.values())
        assert held <= stats.ram_bytes  # the storages it counts are the ones it holds
    assert cache.stats().evictions > 0
    assert not cache.put(b"huge", ([torch.zeros(budget // 4 + 1)],))  # alone over the budget
    assert cache.stats().rejected == 1


class PassThrough(Node):
    category = "test"
    image = Input(IMAGE)
    outputs = (Output(IMAGE),)

    def execute(self, image):
        return (image,)


def test_a_chain_of_pass_through_nodes_costs_one_image(tmp_path):
    from nodegraph.registry import default_registry

    registry = default_registry(packs=False)
    registry.register(PassThrough)
    engine = Engine(registry, paths=Paths.under(tmp_path), device="cpu", cache=OutputCache(ram_budget=64 << 20))
    try:
        g = Graph()
        node = g.node("EmptyImage", width=64, height=64, color=1)
        for _ in range(50):
            node = g.node("PassThrough", image=node)
        g.node("PreviewAny", source=g.node("GetImageSize", image=node))
        assert engine.run(g).ok
        stats = engine.cache.stats()
        assert stats.entries == 53
        assert IMAGE_BYTES <= stats.ram_bytes < 2 * IMAGE_BYTES  # 51 entries hold the one image
    finally:
        engine.close()


# -- budgets: defaults and flags ---------------------------------------------------------------------

def test_default_budget_is_a_quarter_of_the_ram_at_most_4_gib():
    assert 0 < machine_ram() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_ram_budget() == min(machine_ram() // 4, DEFAULT_CAP)
    assert OutputCache().ram_budget == default_ram_budget()
    assert OutputCache(ram_budget=0).ram_budget == 0


@pytest.mark.parametrize("command", ["serve", "run"])
def test_cache_flags(command):
    from nodegraph.cli import build_parser, cache_budgets

    extra = ["wf.json"] if command == "run" else []
    parse = build_parser().parse_args
    assert cache_budgets(parse([command, *extra])) == (None, None)
    assert cache_budgets(parse([command, *extra, "--cache-ram", "1.5", "--cache-vram", "0.5"])) == \
        (int(1.5 * GiB), GiB // 2)
    assert cache_budgets(parse([command, *extra, "--cache-none", "--cache-ram", "2"])) == (0, 0)


def test_serve_config_budgets_reach_the_engine(tmp_path):
    from nodegraph.server import ServerConfig
    from nodegraph.server.app import build_engine

    config = ServerConfig(paths=Paths.under(tmp_path), data_dir=tmp_path / "data", device="cpu",
                          cache_ram_bytes=123 << 20, cache_vram_bytes=0)
    engine = build_engine(config)
    try:
        assert (engine.cache.ram_budget, engine.cache.vram_budget) == (123 << 20, 0)
    finally:
        engine.close()


def test_run_with_cache_none_keeps_nothing(tmp_path):
    import json

    from nodegraph.cli import main

    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}))
    report = tmp_path / "report.json"
    assert main(["run", str(workflow), "--cache-none", "--quiet", "--output-dir", str(tmp_path / "out"),
                 "--report", str(report)]) == 0
    cache = json.loads(report.read_text())["cache"]
    assert cache["entries"] == 0 and cache["ram_budget"] == 0 and cache["rejected"] == 2


# -- previews ----------------------------------------------------------------------------------------

def preview_prompt(count: int, color: int) -> dict:
    prompt = {"src": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1,
                                                             "color": color}}}
    for i in range(count):
        prompt[f"p{i}"] = {"class_type": "PreviewImage", "inputs": {"images": ["src", 0]}}
    return prompt


def test_temp_previews_are_bounded_oldest_first(tmp_path, monkeypatch):
    from nodegraph.registry import default_registry
    from nodegraph_nodes.io import files

    monkeypatch.setattr(files, "PREVIEW_MAX_FILES", 12)
    paths = Paths.under(tmp_path)
    paths.temp_dir.mkdir(parents=True, exist_ok=True)
    leftover = paths.temp_dir / "ComfyUI_temp_zzzzz_00001_.png"  # a previous run's preview: oldest
    leftover.write_bytes(b"png")
    os.utime(leftover, (1, 1))
    unrelated = paths.temp_dir / "notes.txt"
    unrelated.write_text("not a preview")
    engine = Engine(default_registry(packs=False), paths=paths, device="cpu")
    try:
        seen: list[str] = []
        for run in range(5):
            result = engine.run(preview_prompt(4, color=run))
            assert result.ok, result.failure
            names = [image["filename"] for ui in result.outputs.values() for image in ui["images"]]
            assert all((paths.temp_dir / name).is_file() for name in names)  # this run's are all there
            seen += names
        on_disk = sorted(p.name for p in paths.temp_dir.glob("*_temp_*.png"))
        assert len(on_disk) == 12 and on_disk == sorted(seen[-12:])  # the newest 12 previews
        assert not leftover.exists() and unrelated.exists()
        bound = files.preview_folder(paths.temp_dir)
        assert bound.removed == 9 and len(bound.files) == 12
        assert bound.bytes == sum(p.stat().st_size for p in paths.temp_dir.glob("*_temp_*.png"))
    finally:
        engine.close()


def test_temp_previews_are_bounded_by_bytes(tmp_path):
    from nodegraph_nodes.io.files import PreviewFolder

    folder = PreviewFolder(tmp_path, max_files=1000, max_bytes=10_000)
    written = []
    for i in range(10):
        path = tmp_path / f"ComfyUI_temp_abcde_{i:05}_.png"
        path.write_bytes(bytes(3000))
        folder.add([(path, 3000)])
        written.append(path)
        assert folder.bytes <= 10_000
    assert [p.exists() for p in written] == [False] * 7 + [True] * 3
    big = tmp_path / "ComfyUI_temp_big_00001_.png"  # one preview over the bound alone is kept
    big.write_bytes(bytes(20_000))
    folder.add([(big, 20_000)])
    assert big.exists() and not any(p.exists() for p in written)


# -- the C heap between jobs -------------------------------------------------------------------------

def test_freed_heap_memory_goes_back_to_the_os():
    from nodegraph.heap import free_heap_bytes, release_free_memory

    if free_heap_bytes() is None:
        pytest.skip("not glibc")
    blocks = [bytearray(100_000) for _ in range(400)]  # ~40 MB in heap-sized chunks
    blocks = blocks[1::2]  # free every other one: free memory in the middle of the heap
    assert free_heap_bytes() > 10_000_000
    assert not release_free_memory(slack=1 << 40)  # under the slack: nothing done
    assert release_free_memory(slack=0)
    del blocks


def test_trim_gate_asks_only_when_memory_outside_the_cache_grew(monkeypatch):
    from nodegraph import heap

    rss = [1000 << 20]
    monkeypatch.setattr(heap, "resident_bytes", lambda: rss[0])
    gate = heap.TrimGate(slack=32 << 20)
    assert gate.due(held=0)  # never asked yet
    gate.checked(held=0)
    assert not gate.due(held=0)
    rss[0] += 20 << 20
    assert not gate.due(held=0)  # grew, but by less than the slack
    rss[0] += 20 << 20
    assert gate.due(held=0)  # 40 MiB more that the cache does not hold: free heap memory possible
    assert not gate.due(held=40 << 20)  # the cache holds the 40 MiB: nothing can sit free
    gate.checked(held=40 << 20)
    assert gate.due(held=0)  # the cache let go of 40 MiB: it may sit free in the heap now
    assert not gate.due(held=30 << 20)
    monkeypatch.setattr(heap.TrimGate, "MAX_INTERVAL", 0.0)
    assert gate.due(held=40 << 20)  # asked again after MAX_INTERVAL whatever the memory did


def test_the_local_runner_releases_memory_after_each_job(tmp_path):
    from nodegraph.queue import Job, JobStore, LocalRunner
    from nodegraph.registry import default_registry

    class Sink:
        def post(self, client_id, message, *, ends_prompt=False): pass
        def post_status(self): pass
        def is_connected(self, client_id): return False
        def client_features(self, client_id): return None

    engine = Engine(default_registry(packs=False), paths=Paths.under(tmp_path), device="cpu")
    released = []
    original = engine.release_memory
    engine.release_memory = lambda slack=None, keep=0: released.append(slack) or original(slack, keep)
    store = JobStore(tmp_path / "q.sqlite3")
    runner = LocalRunner(engine, store, Sink())
    runner._trim_gate.MAX_INTERVAL = 0.0  # the gate asks after every job (see the test above for when not)
    runner.start()
    try:
        for i in range(2):
            store.enqueue(Job(f"p{i}", 0, {"1": {"class_type": "PreviewAny", "inputs": {"source": i}}}, {}, ["1"]))
        runner.notify()
        import time

        deadline = time.monotonic() + 30
        while store.history_count() < 2 or len(released) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        runner.stop()
        store.close()
        engine.close()
    assert len(released) >= 2
