"""Does the design loop improve pictures for real? ``workflows/design_loop.json`` over 20 shapes-world instructions.

    nice -n 5 python bench/design_loop.py [--count 20] [--rounds 3] [--seed 22] [--size PX] [--threads N]

The instructions are drawn from the shapes grammar with a fixed seed: scenes from
:func:`~nodegraph_nodes.shapes.world.sample_scene` (even: one object, odd: two), each said in free wording by
:func:`~nodegraph_nodes.shapes.captions.paraphrase` (synonyms, word order, size or background sometimes
left out). Each runs through the shipped workflow as it is — PromptRewrite (SmolLM2), then the ``Repeat``
of DesignRound → generate → SafetyCheck → DesignScore → PromptCritique → DesignUpdate, then DesignResult —
in one engine (models loaded once), base noise seed ``1000 + i``. Per instruction it prints each round's
score and verdict, the seed, the prompt (and negative prompt), and for every round after one whose
picture was wrong: whether the critique changed the prompt and how much the picture changed (share of
pixels that moved by more than 25/255 in some channel, and the mean absolute difference). Then:

- rounds that differ where the critique found an error (prompt and picture);
- final score ≥ round 1's (every instruction), and the mean final score (target ≥ 0.95);
- how many instructions were met, and in which round (early stop).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instructions(count: int, seed: int) -> list[str]:
    """``count`` instructions in the shapes grammar's free wording (seeded; even: one object, odd: two)."""
    from nodegraph_nodes.shapes.captions import paraphrase
    from nodegraph_nodes.shapes.world import sample_scene

    rng = random.Random(seed)
    return [paraphrase(sample_scene(rng, two_objects=bool(i % 2)), rng, canonical_share=0.0) for i in range(count)]


#: A pixel counts as changed when a channel moves by more than this (0..1); a picture "differs" from
#: the round before when at least CHANGED_SHARE of its pixels changed.
PIXEL_STEP, CHANGED_SHARE = 0.1, 0.005


def picture_change(a, b) -> tuple[float, float]:
    """``(mean absolute difference in 0..255 units, share of pixels changed by > 25/255)``; the
    pictures are compared at the smaller one's size."""
    import torch

    a, b = a.float()[:1], b.float()[:1]
    if a.shape != b.shape:
        b = torch.nn.functional.interpolate(b.permute(0, 3, 1, 2), size=a.shape[1:3], mode="area").permute(0, 2, 3, 1)
    diff = (a - b).abs()
    return float(diff.mean()) * 255, float((diff.amax(-1) > PIXEL_STEP).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=None, help="the workflow's own count by default")
    parser.add_argument("--seed", type=int, default=22, help="seed of the instruction sample")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--size", type=int, default=None,
                        help="picture size in pixels (default: the workflow's 'latent' node, as a user runs it)")
    parser.add_argument("--workflow", type=Path, default=ROOT / "workflows" / "design_loop.json")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-instruction results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from nodegraph import Engine, Paths

    api = json.loads(args.workflow.read_text())
    if args.rounds:
        api["loop"]["inputs"]["rounds"] = args.rounds
    rounds = api["loop"]["inputs"]["rounds"]
    if args.size:
        api["latent"]["inputs"]["width"] = api["latent"]["inputs"]["height"] = args.size
    size = api["latent"]["inputs"]["width"], api["latent"]["inputs"]["height"]
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"workflow: {args.workflow.relative_to(ROOT) if args.workflow.is_relative_to(ROOT) else args.workflow}, "
          f"{rounds} rounds, {size[0]}x{size[1]} pictures; {args.count} instructions (sample seed {args.seed})\n")

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(paths=Paths(output_dir=Path(tmp) / "out", temp_dir=Path(tmp) / "temp"), device="cpu")
        try:
            for i, text in enumerate(instructions(args.count, args.seed)):
                graph = json.loads(json.dumps(api))
                graph["instruction"]["inputs"]["value"] = text
                graph["start"]["inputs"]["seed"] = 1000 + i
                t0 = time.perf_counter()
                run = engine.run(graph, targets=["show"])
                seconds = time.perf_counter() - t0
                if run.failure is not None:
                    print(f"[{i + 1}] {text}\n  FAILED: {run.failure.exception_type}: {run.failure.exception_message}")
                    return 1
                state = run.value("loop", 0)
                results.append(report(i, text, state, seconds))
        finally:
            engine.close()

    print(summary(results, rounds))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def report(i: int, text: str, state: dict, seconds: float) -> dict:
    """Print one instruction's rounds; return its figures."""
    recs = state["rounds"]
    best = recs[state["best"]]
    print(f"[{i + 1:2}] {text}   ({seconds:.1f} s)")
    after_error = []
    for k, r in enumerate(recs):
        verdict = "met" if r["met"] else f"wrong: {r['judge'].split('wrong: ', 1)[-1]}"
        print(f"     round {r['round']}: {r['score']:.3f}  seed {r['seed']:<16} {verdict}")
        print(f"       prompt:  {r['prompt']}" + (f"   (negative: {r['negative']})" if r.get("negative") else ""))
        if not r["met"] and k + 1 < len(recs):
            nxt = recs[k + 1]
            found = r["revised_prompt"] != r["prompt"]
            change, share = picture_change(r["image"], nxt["image"])
            entry = {"critique_found_error": found, "prompt_differs": nxt["prompt"] != r["prompt"],
                     "seed_differs": nxt["seed"] != r["seed"], "picture_change": change, "pixels_changed": share}
            after_error.append(entry)
            print(f"       critique: {r['critique'] or '(none)'}")
            print(f"       → round {nxt['round']}: prompt {'rewritten' if entry['prompt_differs'] else 'kept'}, "
                  f"own seed, {share:.1%} of the pixels changed (mean {change:.1f}/255)")
    stop = next((r["round"] for r in recs if r["met"]), None)
    print(f"     final: round {best['round']}'s picture, {best['score']:.3f} (round 1: {recs[0]['score']:.3f})"
          + (f"; met in round {stop}, stopped" if stop else "; not met") + "\n")
    return {"instruction": text, "scores": [r["score"] for r in recs], "met_round": stop, "final": best["score"],
            "first": recs[0]["score"], "after_error": after_error, "seconds": seconds}


def summary(results: list[dict], rounds: int) -> str:
    pairs = [e for r in results for e in r["after_error"]]
    found = [e for e in pairs if e["critique_found_error"]]
    differ = [e for e in found if e["prompt_differs"] and e["seed_differs"] and e["pixels_changed"] >= CHANGED_SHARE]
    not_worse = sum(r["final"] >= r["first"] for r in results)
    mean_final = statistics.mean(r["final"] for r in results)
    mean_first = statistics.mean(r["first"] for r in results)
    met = [r["met_round"] for r in results if r["met_round"]]
    lines = [
        "summary",
        f"  rounds after a wrong picture: {len(pairs)}; the critique found the error in {len(found)}; of those, "
        f"{len(differ)} differ (prompt rewritten, own seed, >= {CHANGED_SHARE:.1%} of the pixels changed; median "
        f"{statistics.median([e['pixels_changed'] for e in found]) if found else 0:.1%} changed)",
        f"  final score >= round 1's: {not_worse}/{len(results)}",
        f"  mean score: round 1 {mean_first:.3f} -> final {mean_final:.3f} (target >= 0.95: "
        f"{'met' if mean_final >= 0.95 else 'NOT met'})",
        f"  request met: {len(met)}/{len(results)} (round 1: {met.count(1)}, round 2: {met.count(2)}, "
        f"round 3+: {sum(m >= 3 for m in met)}); rounds run: {sum(len(r['scores']) for r in results)} of "
        f"{len(results) * rounds} possible (early stop)",
        f"  seconds per instruction: median {statistics.median(r['seconds'] for r in results):.1f}",
        f"  load average after: {os.getloadavg()[0]:.2f}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
