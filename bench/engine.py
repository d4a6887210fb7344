"""Engine overhead benchmark: the graph shapes a ComfyUI user would time.

    python bench/engine.py [--repeats 7] [--json out.json]

Shapes: chains of N ImageInvert at 64×64 (N = 10/100/400), 100 independent branches, a full cache-hit
re-run of the 400-node chain, a change at the head vs the tail of a 100-node chain, and 20 mixed ops
at 512×512. For each it prints the wall time, the time spent inside node functions, and the engine's
overhead per node (wall minus node time, divided by the nodes that ran), plus memory figures.
Every figure is the median of ``--repeats`` runs on a fresh cache (except the cache-hit ones).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodegraph import Engine, Graph, OutputCache, Paths  # noqa: E402
from nodegraph.registry import default_registry  # noqa: E402

RAM_BUDGET = 512 << 20
PRESSURE_BUDGET = 8 << 20  # far below the 400-chain's ~20 MiB of intermediate images


@dataclass
class Figure:
    name: str
    nodes_in_graph: int
    nodes_run: int
    wall_ms: float
    node_ms: float
    overhead_us_per_node: float


def chain(n: int, size: int = 64, color: int = 0x336699, tail_sigma: float | None = None) -> Graph:
    g = Graph()
    node = g.node("EmptyImage", width=size, height=size, color=color)
    for _ in range(n - (1 if tail_sigma is not None else 0)):
        node = g.node("ImageInvert", image=node)
    if tail_sigma is not None:
        node = g.node("ImageBlur", image=node, blur_radius=1, sigma=tail_sigma)
    g.node("PreviewAny", source=g.node("GetImageSize", image=node))
    return g


def branches(count: int) -> Graph:
    g = Graph()
    for i in range(count):
        inv = g.node("ImageInvert", image=g.node("EmptyImage", width=64, height=64, color=i))
        g.node("PreviewAny", source=g.node("GetImageSize", image=inv))
    return g


def mixed_512() -> Graph:
    g = Graph()
    base = g.node("EmptyImage", width=512, height=512, color=0x804020)
    x = g.node("ImageAddNoise", image=base, seed=1, strength=0.4)
    x = g.node("ImageBlur", image=x, blur_radius=3, sigma=1.0)
    x = g.node("ImageSharpen", image=x, sharpen_radius=1, sigma=1.0, alpha=0.5)
    x = g.node("ImageFlip", image=x, flip_method="x-axis: vertically")
    x = g.node("ImageRotate", image=x, rotation="90 degrees")
    x = g.node("ImageInvert", image=x)
    x = g.node("ImageScaleBy", image=x, upscale_method="bilinear", scale_by=0.5)
    x = g.node("ImageScale", image=x, upscale_method="bicubic", width=512, height=512, crop="disabled")
    x = g.node("ImageBlend", image1=x, image2=base, blend_factor=0.3, blend_mode="screen")
    x = g.node("ImageCrop", image=x, width=448, height=448, x=32, y=32)
    x = g.node("ImageScale", image=x, upscale_method="area", width=512, height=512, crop="center")
    x = g.node("ImageBlend", image1=x, image2=base, blend_factor=0.5, blend_mode="overlay")
    x = g.node("ImageBlur", image=x, blur_radius=2, sigma=2.0)
    x = g.node("ImageFlip", image=x, flip_method="y-axis: horizontally")
    x = g.node("ImageInvert", image=x)
    x = g.node("ImageBatch", image1=x, image2=base)
    g.node("PreviewAny", source=g.node("GetImageSize", image=x))
    return g  # 20 nodes


class Bench:
    def __init__(self, repeats: int, threads: int, tmp: Path) -> None:
        self.repeats = repeats
        self.registry = default_registry(packs=False)
        self.paths = Paths.under(tmp)
        self.threads = threads
        self.engine = self.fresh_engine()
        self.peak_cache_bytes = 0

    def fresh_engine(self) -> Engine:
        return Engine(self.registry, paths=self.paths, device="cpu", threads=self.threads,
                      cache=OutputCache(ram_budget=RAM_BUDGET))

    def once(self, graph: Graph, clear: bool = True):
        if clear:
            self.engine.cache.clear()
        start = time.perf_counter()
        result = self.engine.run(graph)
        wall = time.perf_counter() - start
        assert result.ok, result.failure
        self.peak_cache_bytes = max(self.peak_cache_bytes, self.engine.cache.stats().ram_bytes)
        return wall, result

    def measure(self, name: str, graph: Graph, clear: bool = True, prepare=None) -> Figure:
        walls, node_times, ran = [], [], 0
        self.once(graph, clear)  # warm-up (imports, allocator)
        for _ in range(self.repeats):
            if prepare:
                prepare()
            wall, result = self.once(graph, clear)
            walls.append(wall)
            node_times.append(sum(result.timings.values()))
            ran = len(result.executed)
        wall = statistics.median(walls)
        node = statistics.median(node_times)
        per_node = (wall - node) / max(ran, 1) * 1e6 if ran else wall * 1e6
        return Figure(name, len(graph), ran, wall * 1e3, node * 1e3, per_node)

    def cache_hit(self, name: str, graph: Graph) -> Figure:
        self.once(graph)
        walls = []
        for _ in range(self.repeats):
            wall, result = self.once(graph, clear=False)
            assert result.executed == []
            walls.append(wall)
        wall = statistics.median(walls)
        return Figure(name, len(graph), 0, wall * 1e3, 0.0, wall / len(graph) * 1e6)

    def under_pressure(self, graph: Graph, budget: int) -> dict:
        """Run with a cache budget smaller than the results: the cache must stay within it."""
        engine = Engine(self.registry, paths=self.paths, device="cpu", threads=self.threads,
                        cache=OutputCache(ram_budget=budget))
        peak = 0
        for _ in range(3):
            result = engine.run(graph)
            assert result.ok, result.failure
            peak = max(peak, engine.cache.stats().ram_bytes)
        stats = engine.cache.stats()
        engine.close()
        return {"budget": budget, "peak": peak, "evictions": stats.evictions, "entries": stats.entries}

    def partial(self, name: str, make) -> Figure:
        """Run ``make(0)``, then ``make(1)``, ``make(2)``… on the warm cache: each changes one input."""
        self.once(make(0))
        walls, node_times, ran = [], [], 0
        for i in range(self.repeats):
            wall, result = self.once(make(i + 1), clear=False)
            walls.append(wall)
            node_times.append(sum(result.timings.values()))
            ran = len(result.executed)
        wall, node = statistics.median(walls), statistics.median(node_times)
        return Figure(name, len(make(0)), ran, wall * 1e3, node * 1e3, (wall - node) / max(ran, 1) * 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="the engine's thread pool")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures: list[Figure] = []
    with TemporaryDirectory() as tmp:
        bench = Bench(args.repeats, args.threads, Path(tmp))
        for n in (10, 100, 400):
            figures.append(bench.measure(f"chain_{n}_invert_64px", chain(n)))
        figures.append(bench.measure("branches_100_independent", branches(100)))
        figures.append(bench.cache_hit("chain_400_full_cache_hit", chain(400)))
        figures.append(bench.partial("chain_100_change_at_head",
                                     lambda v: chain(100, color=0x100000 + v)))
        figures.append(bench.partial("chain_100_change_at_tail",
                                     lambda v: chain(100, tail_sigma=1.0 + 0.01 * v)))
        figures.append(bench.measure("mixed_20_ops_512px", mixed_512()))
        stats = bench.engine.cache.stats()
        bench.engine.close()
        pressure = bench.under_pressure(chain(400), budget=PRESSURE_BUDGET)
    by = {f.name: f for f in figures}
    ratio = by["chain_400_invert_64px"].wall_ms / by["chain_100_invert_64px"].wall_ms
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'shape':28} {'nodes':>6} {'ran':>5} {'wall ms':>9} {'in nodes ms':>12} {'overhead µs/node':>17}")
    for f in figures:
        print(f"{f.name:28} {f.nodes_in_graph:6} {f.nodes_run:5} {f.wall_ms:9.2f} {f.node_ms:12.2f} "
              f"{f.overhead_us_per_node:17.1f}")
    print(f"400-chain / 100-chain wall ratio: {ratio:.2f} (target ≤ 4.5)")
    print(f"overhead per node, 400-chain: {by['chain_400_invert_64px'].overhead_us_per_node:.1f} µs (target ≤ 50)")
    print(f"full cache-hit re-run, 400-chain: {by['chain_400_full_cache_hit'].wall_ms:.2f} ms (target ≤ 5)")
    print(f"cache: peak {bench.peak_cache_bytes / 2**20:.1f} MiB of a {RAM_BUDGET / 2**20:.0f} MiB budget "
          f"({'within' if bench.peak_cache_bytes <= RAM_BUDGET else 'OVER'}), {stats.evictions} evictions; "
          f"peak RSS {peak_rss_mib:.0f} MiB; threads={args.threads}")
    print(f"cache under pressure (400-chain, {pressure['budget'] >> 20} MiB budget): peak "
          f"{pressure['peak'] / 2**20:.2f} MiB, {pressure['evictions']} evictions, "
          f"{'within' if pressure['peak'] <= pressure['budget'] else 'OVER'} budget")
    if args.json:
        args.json.write_text(json.dumps({"figures": [asdict(f) for f in figures], "ratio_400_100": ratio,
                                         "peak_cache_bytes": bench.peak_cache_bytes,
                                         "peak_rss_mib": peak_rss_mib, "pressure": pressure}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
