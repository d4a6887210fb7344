"""Make the README's Getting-started pictures: run the design loop as a user does and lay out what it made.

    python docs/design_loop_pictures.py [--prompt TEXT] [--out docs/design_loop.png]

Runs ``nodegraph run workflows/design_loop.json`` (a fresh process, the built-in models), then draws one
strip: each round's 64×64 image (shown ×3, nearest) and the final upscaled 256×256 image, each with its
score and the prompt it was made from. Also writes the run's printed rounds next to the picture
(``.txt``). Rerun it whenever the built-in models change.
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
REPORT = re.compile(r"^node \S+: (round \d+|final): score ([0-9.]+)")  # what the CLI prints on stdout


def run_design_loop(prompt: str | None, out: Path) -> str:
    cmd = [sys.executable, "-m", "nodegraph.cli", "run", str(ROOT / "workflows" / "design_loop.json"),
           "--output-dir", str(out)]
    if prompt:
        cmd += ["--prompt", prompt]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the design loop failed:\n{done.stderr[-3000:]}")
    return done.stdout


def rounds_of(log: str) -> list[dict]:
    """[{label, score, prompt, caption}] in order, from the lines the CLI printed."""
    items: list[dict] = []
    for line in log.splitlines():
        m = REPORT.match(line)
        if m:
            items.append({"label": m.group(1), "score": float(m.group(2)), "prompt": "", "caption": ""})
        elif items and line.strip().startswith(("prompt:", "caption:")):
            key, _, value = line.strip().partition(":")
            items[-1][key] = value.strip()
    return items


def draw_strip(images: list[Path], items: list[dict], path: Path) -> None:
    tile, pad, text_h = 256, 12, 140
    sheet = Image.new("RGB", (pad + len(images) * (tile + pad), pad + tile + text_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (image_path, item) in enumerate(zip(images, items)):
        with Image.open(image_path) as im:
            im = im.convert("RGB").resize((tile, tile), Image.NEAREST)
        x = pad + i * (tile + pad)
        sheet.paste(im, (x, pad))
        lines = ([f"{item['label']}: score {item['score']:.2f}"] + textwrap.wrap(f"prompt: {item['prompt']}", 42)[:4]
                 + textwrap.wrap(f"caption: {item['caption']}", 42)[:3])
        for j, line in enumerate(lines):
            draw.text((x, pad + tile + 6 + j * 16), line, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "design_loop.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = run_design_loop(args.prompt, Path(tmp))
        folder = Path(tmp) / "design_loop"
        images = sorted(folder.glob("round_*.png")) + sorted(folder.glob("final_*.png"))
        items = rounds_of(log)
        if len(items) != len(images):
            sys.exit(f"found {len(images)} images but {len(items)} reports in the output:\n{log[-2000:]}")
        draw_strip(images, items, args.out)
    transcript = "\n".join(f"{it['label']}: score {it['score']:.2f}\n  prompt:  {it['prompt']}\n  caption: {it['caption']}"
                           for it in items)
    args.out.with_suffix(".txt").write_text(transcript + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.txt')}")


if __name__ == "__main__":
    main()
