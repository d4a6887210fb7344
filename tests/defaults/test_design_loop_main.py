"""The main job: ``nodegraph run workflows/design_loop.json`` on the built-in models (SmolLM2, the shapes-world
generator and captioner, Open-NSFW, Real-ESRGAN), with ``--prompt``: every round prints its prompt, caption
and score, the PNGs (workflow embedded) land in the output folder, and the canvas twin is the same workflow."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
from PIL import Image

from nodegraph.cli import apply_prompt, main
from nodegraph.errors import WorkflowFormatError
from nodegraph.registry import default_registry
from nodegraph.workflow.loader import load_workflow_file
from nodegraph_nodes.shapes.text import parse_spec, scene_match

from tests.defaults.default_llm_fixtures import OFFLINE, llm_cache  # noqa: F401 - fixture

WORKFLOWS = pathlib.Path(__file__).resolve().parents[2] / "workflows"
DESIGN_LOOP = WORKFLOWS / "design_loop.json"


def test_design_loop_runs_on_the_defaults_and_reports_every_round(llm_cache, tmp_path, monkeypatch, capsys):
    paths, _ = llm_cache
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("NODEGRAPH_CACHE_DIR", str(paths.cache_dir))  # the converted LLM of this session
    out = tmp_path / "outputs"
    request = "a small yellow star to the left of a big purple box on black"
    code = main(["run", str(DESIGN_LOOP), "--prompt", request, "--set", "loop.rounds=2", "--output-dir", str(out),
                 "--models-dir", str(tmp_path / "models"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]

    # round 1 and the final image printed their score, prompt and caption once, as they finished, on
    # stdout; round 2 either ran (its score) or says why not (round 1 met the request); stderr has the
    # progress and a one-line summary, no timing table (that needs --timings)
    for label in ("round 1: score", "final: score"):
        assert captured.out.count(label) == 1, captured.out[-3000:]
        assert label not in captured.err
    assert captured.out.count("round 2: score") + captured.out.count("round 2: not run — round 1 met") == 1
    assert "node(s) ran" in captured.err and not re.search(r"^\s*node\s+class\s+seconds", captured.err, re.M)
    prompts = [line.split("prompt:", 1)[1].strip() for line in captured.out.splitlines() if "prompt:" in line]
    ran = 1 + captured.out.count("round 2: score")
    assert len(prompts) == ran + 1  # each round run, and the final
    first = parse_spec(prompts[0])  # the rewrite: a caption in the generator's grammar, of the request
    assert scene_match(parse_spec(request), first).score == 1.0 and first.background == "black"
    for prompt in prompts[1:]:  # critiques ask for the same scene (reworded, perhaps with emphasis)
        assert scene_match(parse_spec(request), parse_spec(prompt)).score == 1.0
    scores = [float(m) for m in re.findall(r"round \d: score ([0-9.]+)", captured.out)]
    final = float(re.search(r"final: score ([0-9.]+)", captured.out).group(1))
    assert final == max(scores) >= scores[0]  # the best round's picture is the result

    # the PNGs: one per round run (the size the workflow asks for) and the upscaled final one (×4), with
    # the workflow embedded
    api = json.loads(DESIGN_LOOP.read_text())
    size = (api["latent"]["inputs"]["width"], api["latent"]["inputs"]["height"])
    rounds = sorted((out / "design_loop").glob("round_*.png"))
    finals = sorted((out / "design_loop").glob("final_*.png"))
    assert len(rounds) == ran and len(finals) == 1
    assert str(finals[0]) in captured.out  # the CLI says where the image is
    with Image.open(rounds[0]) as im:
        assert im.size == size
    with Image.open(finals[0]) as im:
        assert im.size == (4 * size[0], 4 * size[1])
        embedded = json.loads(im.text["prompt"])
    assert embedded["instruction"]["inputs"]["value"] == request
    assert load_workflow_file(finals[0], default_registry()).api["loop"]["class_type"] == "Repeat"


def test_prompt_flag_sets_the_node_titled_prompt_in_both_formats():
    registry = default_registry()
    for name in ("design_loop.json", "design_loop.ui.json"):
        api = load_workflow_file(WORKFLOWS / name, registry).api
        target = apply_prompt(api, registry, "a green circle at the top")
        node_id, input_name = target.rsplit(".", 1)
        assert api[node_id]["inputs"][input_name] == "a green circle at the top"
        assert api[node_id]["class_type"] == "PrimitiveStringMultiline" and input_name == "value"
    api = json.loads(DESIGN_LOOP.read_text())
    with pytest.raises(WorkflowFormatError, match="titled 'Prompt'"):
        apply_prompt(json.loads((WORKFLOWS / "image_basics.json").read_text()), registry, "x")
    with pytest.raises(WorkflowFormatError, match="empty"):
        apply_prompt(api, registry, "  ")
