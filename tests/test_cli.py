"""The `nodegraph` command: run / validate / nodes, exit codes, overrides, reports, PNG round trip,
and bad input that must end in a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nodegraph.cli import main
from nodegraph.pngmeta import encode_png, read_png_text

ROOT = Path(__file__).resolve().parents[1]
BASICS = ROOT / "workflows" / "image_basics.json"


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_run_writes_png_with_embedded_workflow_and_report(tmp_path, capsys):
    report = tmp_path / "report.json"
    code, out, err = run_cli(["run", BASICS, "--output-dir", tmp_path / "out", "--report", report, "--timings"],
                             capsys)
    assert code == 0, err
    saved = tmp_path / "out" / "image_basics_00001_.png"
    assert f"node 6: {saved}" in out and "node 8: 128" in out
    texts = read_png_text(saved)
    assert json.loads(texts["prompt"])["6"]["class_type"] == "SaveImage"
    data = json.loads(report.read_text())
    assert data["status"] == "success" and {n["id"] for n in data["nodes"]} == {str(i) for i in range(1, 9)}
    assert all(n["seconds"] >= 0 for n in data["nodes"])
    assert "ImageBlur" in err and "seconds" in err  # the timing table (--timings)


def test_png_round_trip_reproduces_the_image(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert run_cli(["run", BASICS, "--output-dir", out_dir, "--quiet"], capsys)[0] == 0
    first = out_dir / "image_basics_00001_.png"
    code, out, err = run_cli(["run", first, "--output-dir", out_dir, "--quiet"], capsys)
    assert code == 0, err
    second = out_dir / "image_basics_00002_.png"
    assert np.array_equal(pixels(first), pixels(second))
    assert read_png_text(second)["prompt"] == read_png_text(first)["prompt"]


def test_ui_format_file_and_png_with_only_a_canvas_workflow(tmp_path, capsys):
    ui_path = ROOT / "workflows" / "image_basics.ui.json"
    out_dir = tmp_path / "out"
    assert run_cli(["run", ui_path, "--output-dir", out_dir, "--quiet"], capsys)[0] == 0
    from_ui = out_dir / "image_basics_00001_.png"
    assert json.loads(read_png_text(from_ui)["workflow"])["nodes"]  # canvas workflow embedded
    # a PNG that carries only the canvas workflow (as some tools write) still runs
    canvas_only = tmp_path / "canvas_only.png"
    canvas_only.write_bytes(encode_png(np.zeros((4, 4, 3), np.uint8), {"workflow": ui_path.read_text()}))
    assert run_cli(["run", canvas_only, "--output-dir", out_dir, "--quiet"], capsys)[0] == 0
    assert run_cli(["run", BASICS, "--output-dir", out_dir, "--quiet"], capsys)[0] == 0
    api_png = sorted(out_dir.glob("image_basics_*.png"))
    assert len(api_png) == 3
    assert np.array_equal(pixels(api_png[0]), pixels(api_png[2]))  # UI and API formats agree


def test_set_overrides_by_id_and_title(tmp_path, capsys):
    code, out, err = run_cli(["run", BASICS, "--output-dir", tmp_path, "--quiet",
                              "--set", "5.scale_by=3", "--set", "Save.filename_prefix=sub/renamed"], capsys)
    assert code == 0, err
    assert "node 8: 192" in out
    assert (tmp_path / "sub" / "renamed_00001_.png").exists()


def test_validate_and_nodes_commands(capsys):
    code, out, _ = run_cli(["validate", BASICS], capsys)
    assert code == 0 and "ok: 8 node(s)" in out
    code, out, _ = run_cli(["nodes", "--json"], capsys)
    info = json.loads(out)
    assert info["ImageBlur"]["input"]["required"]["blur_radius"] == ["INT", {"default": 1, "min": 1, "max": 31, "step": 1}]
    code, out, _ = run_cli(["nodes"], capsys)
    assert "SaveImage" in out


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.json"
    path.write_text(text)
    return path


BAD_WORKFLOWS = {
    "malformed_json": ('{"1": {"class_type": "EmptyImage",', "not valid JSON"),
    "top_level_list": ('[1, 2, 3]', "JSON object"),
    "wrong_shape": ('{"1": 5}', "node 1 must be a JSON object"),
    "unknown_class": ('{"1": {"class_type": "MakeMagic", "inputs": {}}}', "no node type 'MakeMagic'"),
    "huge_number": ('{"1": {"class_type": "EmptyImage", "inputs": {"width": 1e300}},'
                    ' "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}', "width"),
    "huge_int": ('{"1": {"class_type": "EmptyImage", "inputs": {"width": 99999999999999999999999999}},'
                 ' "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}', "above its maximum"),
    "nan": ('{"1": {"class_type": "EmptyImage", "inputs": {}},'
            ' "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "sigma": NaN}},'
            ' "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}}', "sigma"),
    "string_for_link": ('{"1": {"class_type": "SaveImage", "inputs": {"images": "picture.png"}}}',
                        "takes a IMAGE from another node"),
    "missing_node": ('{"1": {"class_type": "SaveImage", "inputs": {"images": ["7", 0]}}}',
                     "links to node '7', which is not in the workflow"),
    "missing_output": ('{"1": {"class_type": "EmptyImage", "inputs": {}},'
                       ' "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 4]}}}', "has 1 output(s)"),
    "binary": ("\x00\x01garbage", "neither JSON text nor a PNG"),
}


@pytest.mark.parametrize("case", sorted(BAD_WORKFLOWS))
def test_bad_input_gives_clear_error_and_exit_2(case, tmp_path, capsys):
    text, words = BAD_WORKFLOWS[case]
    code, out, err = run_cli(["run", write(tmp_path, text), "--output-dir", tmp_path, "--quiet"], capsys)
    assert code == 2
    assert words in err
    assert "Traceback" not in err and "Traceback" not in out


def test_missing_file_and_bad_override(tmp_path, capsys):
    code, _, err = run_cli(["run", tmp_path / "nope.json"], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(["run", BASICS, "--set", "nonsense"], capsys)
    assert code == 2 and "NODE.INPUT=VALUE" in err
    code, _, err = run_cli(["run", BASICS, "--set", "99.width=3"], capsys)
    assert code == 2 and "no node with id or title '99'" in err


def test_run_failure_exits_1_with_node_report(tmp_path, capsys):
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "gone.png"}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "gone.png").write_bytes(b"not really a png")
    code, _, err = run_cli(["run", write(tmp_path, json.dumps(api)), "--input-dir", tmp_path / "in",
                            "--output-dir", tmp_path / "out", "--quiet"], capsys)
    assert code == 1
    assert "node 1 (LoadImage) failed" in err and "cannot load image" in err


def test_ctrl_c_interrupts_cleanly(tmp_path):
    """A real process gets SIGINT mid-run: it stops between nodes and exits 130 without a traceback."""
    nodes = {"1": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024}}}
    for i in range(2, 400):
        nodes[str(i)] = {"class_type": "ImageBlur", "inputs": {"image": [str(i - 1), 0], "blur_radius": 15}}
    nodes["400"] = {"class_type": "SaveImage", "inputs": {"images": ["399", 0]}}
    wf = write(tmp_path, json.dumps(nodes))
    proc = subprocess.Popen([sys.executable, "-m", "nodegraph.cli", "run", str(wf), "--output-dir",
                             str(tmp_path / "out"), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline and "node 3 " not in line:   # wait until it is really running
        line = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "ComfyUI_00001_.png").exists()
