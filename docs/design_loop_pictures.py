"""Make the README's Getting-started pictures: run the design loop as a user does and lay out what it made.

    python docs/design_loop_pictures.py [--prompt TEXT] [--seed N] [--size PX] [--out docs/design_loop.png]

Runs ``nodegraph run workflows/design_loop.json`` (a fresh process, the built-in models; ``--seed`` sets
the loop's base noise seed, ``start.seed``), then draws one strip: each round that ran (its picture
enlarged, nearest) with its score, its seed, the prompt (and negative prompt) it was drawn from and what the judge
and the critique found, then the final picture (the best round's, upscaled ×4) and a line for each round that
did not run. Also writes the run's printed rounds next to the picture (``.txt``). Rerun it whenever the
built-in models change.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
#: what the CLI prints on stdout for a round, the final result, or a round that did not run
REPORT = re.compile(r"^node \S+: (round \d+|final): score ([0-9.]+) \((.*)\)\s*$")
NOT_RUN = re.compile(r"^node \S+: (round \d+: not run .*)$")
FIELDS = ("prompt", "negative", "caption", "seed", "critique", "next")


def run_design_loop(prompt: str | None, seed: int | None, out: Path, size: int | None = None) -> str:
    cmd = [sys.executable, "-m", "nodegraph.cli", "run", str(ROOT / "workflows" / "design_loop.json"),
           "--output-dir", str(out)]
    if prompt:
        cmd += ["--prompt", prompt]
    if seed is not None:
        cmd += ["--set", f"start.seed={seed}"]
    if size is not None:
        cmd += ["--set", f"latent.width={size}", "--set", f"latent.height={size}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the design loop failed:\n{done.stderr[-3000:]}")
    return done.stdout


def rounds_of(log: str) -> tuple[list[dict], list[str]]:
    """([{label, score, why, prompt, caption, seed, critique, next}] in order, [lines of rounds not run])."""
    items: list[dict] = []
    skipped: list[str] = []
    for line in log.splitlines():
        m = REPORT.match(line)
        if m:
            items.append({"label": m.group(1), "score": float(m.group(2)), "why": m.group(3),
                          **{k: "" for k in FIELDS}})
            continue
        m = NOT_RUN.match(line)
        if m:
            skipped.append(m.group(1))
            continue
        key, _, value = line.strip().partition(":")
        if items and key in FIELDS and value:
            items[-1][key] = value.strip()
    return items, skipped


def draw_strip(images: list[Path], items: list[dict], skipped: list[str], path: Path) -> None:
    tile, pad, text_h = 256, 12, 252
    sheet = Image.new("RGB", (pad + len(images) * (tile + pad), pad + tile + text_h + 18 * len(skipped)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (image_path, item) in enumerate(zip(images, items)):
        with Image.open(image_path) as im:
            im = im.convert("RGB").resize((tile, tile), Image.NEAREST)
        x = pad + i * (tile + pad)
        sheet.paste(im, (x, pad))
        head = f"{item['label']}: score {item['score']:.2f}" + (f"  (seed {item['seed']})" if item["seed"] else "")
        lines = [head] + textwrap.wrap(item["why"], 42)[:3] + textwrap.wrap(f"prompt: {item['prompt']}", 42)[:3]
        if item["negative"]:
            lines.append(f"negative prompt: {item['negative']}")
        if item["critique"]:
            lines += textwrap.wrap(f"critique: {item['critique']}", 42)[:3]
            lines += textwrap.wrap(f"next: {item['next']}", 42)[:3]
        for j, line in enumerate(lines[:14]):
            draw.text((x, pad + tile + 6 + j * 17), line, fill="black", font=font)
    for j, line in enumerate(skipped):
        draw.text((pad, pad + tile + text_h + j * 18), line.replace("\u2014", "-"), fill=(90, 90, 90), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--seed", type=int, default=None, help="the loop's base noise seed (start.seed)")
    parser.add_argument("--size", type=int, default=None, help="picture size (default: the workflow's)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "design_loop.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = run_design_loop(args.prompt, args.seed, Path(tmp), args.size)
        folder = Path(tmp) / "design_loop"
        images = sorted(folder.glob("round_*.png")) + sorted(folder.glob("final_*.png"))
        items, skipped = rounds_of(log)
        if len(items) != len(images):
            sys.exit(f"found {len(images)} images but {len(items)} reports in the output:\n{log[-2000:]}")
        draw_strip(images, items, skipped, args.out)
    command = "nodegraph run workflows/design_loop.json" + (f' --prompt "{args.prompt}"' if args.prompt else "") + (
        f" --set start.seed={args.seed}" if args.seed is not None else "") + (
        f" --set latent.width={args.size} --set latent.height={args.size}" if args.size else "")
    transcript = [f"$ {command}"]
    for it in items:
        transcript.append(f"{it['label']}: score {it['score']:.2f} ({it['why']})")
        transcript += [f"  {k + ':':9} {it[k]}" for k in FIELDS if it[k]]
    transcript += skipped
    args.out.with_suffix(".txt").write_text("\n".join(transcript) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.txt')}")


if __name__ == "__main__":
    main()
