"""Train the shapes-world captioner from a seed: ``python -m training.shapes.train_captioner``.

Renders fresh scenes every step (the world is procedural, so there is no fixed data set to overfit),
and writes ``weights/captioner.safetensors``. A few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nodegraph_nodes.shapes.captioner import HEADS, WEIGHTS, ShapesCaptioner, decode, scene_targets
from nodegraph_nodes.shapes.captions import canonical_caption
from nodegraph_nodes.shapes.render import render_batch
from nodegraph_nodes.shapes.world import sample_scene


def batch(rng: random.Random, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], list]:
    scenes = [sample_scene(rng) for _ in range(size)]
    images = torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 255.0
    targets = [scene_targets(s) for s in scenes]
    return images, {h: torch.tensor([t[h] for t in targets]) for h in HEADS}, scenes


def exact_caption_rate(model: ShapesCaptioner, seed: int, count: int = 1000) -> float:
    rng = random.Random(seed)
    model.eval()
    right = 0
    with torch.no_grad():
        for _ in range(count // 100):
            images, _, scenes = batch(rng, 100)
            preds = decode(model(images))
            right += sum(p.caption == canonical_caption(s.normalized()) for p, s in zip(preds, scenes))
    model.train()
    return right / count


def train(steps: int, seed: int, out: Path, batch_size: int = 64) -> float:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = ShapesCaptioner()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    start = time.time()
    for step in range(1, steps + 1):
        images, targets, _ = batch(rng, batch_size)
        logits = model(images)
        loss = sum(loss_fn(logits[h], targets[h]) for h in HEADS if (targets[h] != -100).any())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps:
            print(f"step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    accuracy = exact_caption_rate(model, seed + 10_000)
    print(f"exact captions on 1000 fresh renders: {accuracy:.3f}")
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={"seed": str(seed), "steps": str(steps), "exact_captions": f"{accuracy:.4f}"})
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    np.random.seed(args.seed)
    train(args.steps, args.seed, args.out)


if __name__ == "__main__":
    main()
