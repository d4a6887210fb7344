"""The ready workflows run end to end with tiny models (names swapped for the tiny ones, small sizes)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from nodegraph.workflow.loader import load_workflow_file  # noqa: F401 - the file loader is what users run

from tests.vision_language.vl_helpers import run_ok, shrink

WORKFLOWS = pathlib.Path(__file__).resolve().parents[2] / "workflows"
def load(name):
    return shrink(json.loads((WORKFLOWS / name).read_text()))


def test_rewrite_then_generate(vl_engine, tiny_sd):
    r = run_ok(vl_engine, load("rewrite_then_generate.json"))
    assert r.outputs["save"]["images"][0]["filename"].startswith("rewrite_then_generate")
    assert "photograph" in r.outputs["show"]["text"][0]


def test_caption_and_vqa(vl_engine):
    from PIL import Image
    Image.new("RGB", (40, 40), (200, 80, 20)).save(vl_engine.paths.input_dir / "example.png")
    r = run_ok(vl_engine, load("caption_and_vqa.json"))
    assert r.outputs["show_caption"]["text"][0] and r.outputs["show_answer"]["text"][0]


# design_loop.json runs on the built-in models (SmolLM2, shapes world): tests/defaults/test_design_loop_main.py


def test_variations_ranked(vl_engine, tiny_sd):
    r = run_ok(vl_engine, load("variations_ranked.json"))
    best = r.outputs["best_prompt"]["text"]
    assert len(best) == 1 and "fox" in best[0]
    assert len(r.values["decode"][0]) == 4 and len(r.outputs["save"]["images"]) == 1
