"""Default models benchmark: the built-in upscalers (Real-ESRGAN, ncnn on the CPU) and the built-in
safety model (Open-NSFW, ONNX Runtime on the CPU).

    python bench/default_models.py [--repeats 3] [--threads N] [--models all|x4]

For each built-in upscaler: load time (file read + ncnn setup + the 16 px scale probe) and the median
time of one 64→256 px upscale (×2/×3 models give 128/192 px) of a shapes-world scene, untiled and in
32 px tiles with 8 px overlap, plus its edge strength (mean luminance gradient magnitude) against a
bicubic upscale of the same scene. For Open-NSFW: load time and the median time of one safety check
of a single 64 px image and of a batch of 8. Threads: torch's thread count unless ``--threads``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nodegraph_nodes.shapes.render import render_scene  # noqa: E402
from nodegraph_nodes.shapes.world import scene_for_seed  # noqa: E402
from nodegraph import Paths  # noqa: E402
from nodegraph_nodes.safety import open_nsfw  # noqa: E402
from nodegraph_nodes.upscale.ncnn_upscaler import BUILTIN_UPSCALERS, NcnnUpscaler, default_threads, resolve  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def edge_strength(image: torch.Tensor) -> float:
    y = image[..., :3].mean(-1)
    gx, gy = y[:-1, 1:] - y[:-1, :-1], y[1:, :-1] - y[:-1, :-1]
    return float(torch.sqrt(gx * gx + gy * gy).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", choices=["all", "x4"], default="all")
    args = parser.parse_args()
    threads = args.threads or default_threads()
    print(f"threads {threads}; load average {os.getloadavg()[0]:.2f}; repeats {args.repeats} (medians)")
    image = torch.from_numpy(render_scene(scene_for_seed(3)).copy()).float() / 255.0

    print(f"\n{'upscaler':40s} {'load s':>7s} {'64px→':>6s} {'untiled s':>10s} {'tiled 32/8 s':>13s} "
          f"{'edges ×bicubic':>15s}")
    paths = Paths.under(Path("/nonexistent-models-root"))
    names = list(BUILTIN_UPSCALERS) if args.models == "all" else [n for n in BUILTIN_UPSCALERS if "x4" in n]
    for name in names:
        start = time.perf_counter()
        model = NcnnUpscaler.load(resolve(paths, name), threads)
        load = time.perf_counter() - start
        untiled, out = timed(lambda: model.upscale(image), args.repeats)
        tiled, _ = timed(lambda: model.upscale(image, 32, 8), args.repeats)
        bicubic = F.interpolate(image.permute(2, 0, 1)[None], scale_factor=model.scale, mode="bicubic",
                                align_corners=False).clamp(0, 1)[0].permute(1, 2, 0)
        ratio = edge_strength(out) / edge_strength(bicubic)
        print(f"{name:40s} {load:7.2f} {out.shape[0]:6d} {untiled:10.3f} {tiled:13.3f} {ratio:15.2f}")

    print(f"\n{'safety':40s} {'load s':>7s} {'1 image s':>10s} {'8 images s':>11s}")
    start = time.perf_counter()
    nsfw = open_nsfw.OpenNsfw.load(threads=threads)
    load = time.perf_counter() - start
    one, _ = timed(lambda: nsfw.probabilities(image[None]), max(args.repeats, 5))
    eight, _ = timed(lambda: nsfw.probabilities(image[None].expand(8, -1, -1, -1)), max(args.repeats, 5))
    print(f"{'open-nsfw (built-in)':40s} {load:7.2f} {one:10.4f} {eight:11.4f}")


if __name__ == "__main__":
    main()
