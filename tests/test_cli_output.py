"""What ``nodegraph run`` prints and where it writes: each output node's results once, the timing table
only with ``--timings``, a progress total that counts the nodes a loop adds, a new folder per run, and
``--quiet`` silencing the progress bars libraries draw (tqdm) while results and errors still print."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from nodegraph.builder import Graph
from nodegraph.cli import main
from nodegraph.events import EventRecorder, NodesQueued
from nodegraph.progress import ProgressPrinter
from nodegraph.run_folder import create_run_folder, workflow_name

from tests.cli_test_nodes import BAR_LABEL

ROOT = Path(__file__).resolve().parents[1]
BASICS = ROOT / "workflows" / "image_basics.json"
TABLE_HEADER = re.compile(r"^\s*node\s+class\s+seconds\s*$", re.M)
RUN_FOLDER = re.compile(r"^\d{4}-\d\d-\d\d_\d{6}_image_basics(-\d+)?$")

# A design-loop-shaped workflow from cheap built-in nodes: each round shows its text and saves a picture
# (its colour from the round index, so no round is a cache hit of another), the final text is shown too.
ROUND_BODY = {
    "value": {"class_type": "LoopInput", "inputs": {"name": "value"}},
    "index": {"class_type": "LoopInput", "inputs": {"name": "index"}},
    "grow": {"class_type": "StringConcat", "inputs": {"a": ["value", 0], "b": "x", "separator": "-"}},
    "show": {"class_type": "ShowText", "inputs": {"text": ["grow", 0]}},
    "canvas": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                      "color": ["index", 0]}},
    "save": {"class_type": "SaveImage", "inputs": {"images": ["canvas", 0], "filename_prefix": "loop/round"}},
    "next": {"class_type": "LoopOutput", "inputs": {"value": ["grow", 0]}},
}
LOOP_WORKFLOW = {
    "start": {"class_type": "PrimitiveString", "inputs": {"value": "s"}},
    "loop": {"class_type": "Repeat", "inputs": {"initial": ["start", 0], "rounds": 3,
                                                "body": json.dumps(ROUND_BODY)}},
    "show": {"class_type": "ShowText", "inputs": {"text": ["loop", 0]}},
}


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def loop_file(tmp_path) -> Path:
    path = tmp_path / "loop.json"
    path.write_text(json.dumps(LOOP_WORKFLOW))
    return path


def run_loop(loop_file, tmp_path, capsys, *flags):
    report = tmp_path / "report.json"
    code, out, err = run_cli(["run", loop_file, "--output-dir", tmp_path / "out", "--report", report, *flags],
                             capsys)
    assert code == 0, err
    return out, err, json.loads(report.read_text())


def test_each_output_printed_once_and_no_timing_table_by_default(loop_file, tmp_path, capsys):
    out, err, report = run_loop(loop_file, tmp_path, capsys)
    out_dir = tmp_path / "out"
    expected = ["node loop.0.r1.show: s-x", "node loop.0.r2.show: s-x-x", "node loop.0.r3.show: s-x-x-x",
                "node show: s-x-x-x"]
    lines = out.splitlines()
    for line in expected:
        assert lines.count(line) == 1, out
        assert line not in err
    # the rounds' pictures (saved concurrently, so in any order): each round's node once, each file once
    saves = sorted(line.split(": ", 1) for line in lines if ".save: " in line)
    assert [node for node, _ in saves] == [f"node loop.0.r{r}.save" for r in (1, 2, 3)], out
    assert sorted(path for _, path in saves) == [str(out_dir / "loop" / f"round_0000{r}_.png") for r in (1, 2, 3)]
    assert len(lines) == len(set(lines)) == len(expected) + 3, out   # nothing else, nothing twice
    assert not TABLE_HEADER.search(err)
    assert f"{len(report['nodes'])} node(s) ran" in err           # the one-line summary instead
    assert all(node["seconds"] is not None for node in report["nodes"])  # timings are in the report


def test_timings_flag_prints_the_per_node_table(loop_file, tmp_path, capsys):
    out, err, report = run_loop(loop_file, tmp_path, capsys, "--timings", "--quiet")
    assert TABLE_HEADER.search(err)
    rows = {line.split()[0] for line in err.splitlines()[1:] if line.strip() and "node(s) ran" not in line}
    assert rows == {node["id"] for node in report["nodes"] if not node["cached"]}
    assert "node loop.0.r3.show: s-x-x-x" in out


def test_progress_total_counts_the_nodes_a_loop_adds(loop_file, tmp_path, capsys):
    out, err, report = run_loop(loop_file, tmp_path, capsys)
    executed = [node["id"] for node in report["nodes"] if not node["cached"]]
    counts = [tuple(map(int, m.groups())) for m in re.finditer(r"\] (\d+)/(\d+) node ", err)]
    assert len(counts) == len(executed)                        # one log line per executed node
    assert counts[-1] == (len(executed), len(executed))        # ends at total == executed nodes
    totals = [total for _, total in counts]
    assert totals == sorted(totals) and totals[0] < totals[-1]  # it grew when the loop expanded
    assert len(executed) > len(LOOP_WORKFLOW)


def test_terminal_bar_counts_queued_nodes_and_steps(engine):
    """On a terminal: one bar redrawn in place, advancing inside a node's steps."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    printer = ProgressPrinter(stream)
    printer.REDRAW_SECONDS = 0.0
    g = Graph()
    slow = g.node("Sleep", value=g.node("Number", value=3), seconds=0.05)
    g.node("Sink", value=slow)
    recorder = EventRecorder()
    result = engine.run(g, listeners=[printer, recorder])
    printer.close()
    assert result.ok
    frames = stream.getvalue().split("\r\x1b[K")
    assert "3/3" in frames[-1] and "[" + "#" * printer.width + "]" in frames[-1]
    steps = [f for f in frames if f"node {slow.id} (Sleep) step" in f]
    one_node = printer.width // 3  # the Number node done: 1/3 of the bar
    assert steps and any(one_node < f.split("]")[0].count("#") < 2 * one_node for f in steps)
    assert sum(len(e.node_ids) for e in recorder.of(NodesQueued)) == len(result.executed) == 3


def test_two_runs_write_into_two_run_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    printed = []
    for _ in range(2):
        code, out, err = run_cli(["run", BASICS, "--quiet"], capsys)
        assert code == 0, err
        printed += [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("run folder: ")]
    folders = sorted((tmp_path / "outputs").iterdir())
    assert len(folders) == 2 and all(RUN_FOLDER.match(f.name) for f in folders), folders
    assert sorted(printed) == [str(Path("outputs") / f.name) for f in folders]
    for folder in folders:  # numbering starts again in each run's folder
        assert [p.name for p in folder.iterdir()] == ["image_basics_00001_.png"]


def test_explicit_output_dir_is_used_as_is(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["run", BASICS, "--quiet", "--output-dir", "mine"], capsys)
    assert code == 0
    assert (tmp_path / "mine" / "image_basics_00001_.png").is_file()
    assert "run folder:" not in out and not (tmp_path / "outputs").exists()


def test_a_run_that_fails_validation_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"class_type": "NoSuchNode", "inputs": {}}}))
    assert run_cli(["run", bad], capsys)[0] == 2
    assert not any((tmp_path / "outputs").iterdir())


def test_run_folder_names():
    assert workflow_name("workflows/design_loop.ui.json") == "design_loop"
    assert workflow_name("x/My Flow (2).json") == "My_Flow_2"
    assert workflow_name("shot_00001_.png") == "shot_00001"
    assert workflow_name(".json") == "json"


def test_run_folders_in_the_same_second_are_distinct(tmp_path):
    now = datetime(2025, 3, 4, 5, 6, 7)
    first = create_run_folder(tmp_path, "flow.json", now)
    second = create_run_folder(tmp_path, "flow.json", now)
    assert first.name == "2025-03-04_050607_flow" and second.name == "2025-03-04_050607_flow-2"


def test_quiet_silences_library_progress_bars(tmp_path, capsys):
    wf = tmp_path / "bars.json"
    wf.write_text(json.dumps({"1": {"class_type": "LibraryProgressBar", "inputs": {"library": "tqdm"}},
                              "2": {"class_type": "LibraryProgressBar",
                                    "inputs": {"library": "huggingface_hub", "steps": 4}}}))
    common = ["run", wf, "--nodes-module", "tests.cli_test_nodes", "--output-dir", tmp_path / "out"]

    code, out, err = run_cli(common, capsys)
    assert code == 0, err
    assert err.count(BAR_LABEL) >= 2          # both bars drawn without --quiet

    code, out, err = run_cli([*common, "--quiet"], capsys)
    assert code == 0, err
    assert BAR_LABEL not in err and err == ""  # nothing on stderr at all
    assert "node 1: counted 5 steps" in out and "node 2: counted 4 steps" in out  # results still print

    code, out, err = run_cli(common, capsys)    # and the switch is undone after the run
    assert code == 0 and err.count(BAR_LABEL) >= 2


def test_quiet_keeps_errors(tmp_path, capsys):
    wf = tmp_path / "fail.json"
    wf.write_text(json.dumps({"1": {"class_type": "LoadImage", "inputs": {"image": "gone.png"}},
                              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "gone.png").write_bytes(b"not a png")
    code, _, err = run_cli(["run", wf, "--quiet", "--input-dir", tmp_path / "in", "--output-dir",
                            tmp_path / "out"], capsys)
    assert code == 1 and "node 1 (LoadImage) failed" in err
