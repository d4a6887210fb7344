"""The scale-out command line: ``serve`` without ``--ray`` never imports Ray; ``serve --ray`` hands the
server the Ray runner; ``nodegraph join`` builds the ``ray start`` command with this machine's folders;
the old names (``--ray-workers``, ``nodegraph worker``, ``--workers``) still work and warn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodegraph.cli import build_parser, join_command, main, pick_runner

ROOT = Path(__file__).resolve().parents[2]


def test_server_without_ray_flag_does_not_import_ray(tmp_path):
    code = ("import sys\n"
            "from nodegraph.context import Paths\n"
            "from nodegraph.server import ServerConfig, create_app\n"
            f"create_app(ServerConfig(port=0, paths=Paths.under({str(tmp_path)!r}), "
            f"data_dir=Paths.under({str(tmp_path)!r}).output_dir / 'data', device='cpu'))\n"
            "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_serve_ray_flags_make_the_ray_runner():
    pytest.importorskip("ray")  # the [ray] extra; scripts/test installs it
    from nodegraph.cluster import RayRunner, RaySettings

    args = build_parser().parse_args(["serve", "--ray", "10.0.0.5:6379", "--ray-actors", "4",
                                      "--ray-affinity-wait", "2.5", "--nodes-module", "tests.cluster.cluster_nodes",
                                      "--device", "cpu"])
    factory = pick_runner(args)
    assert factory.func is RayRunner
    assert factory.keywords["settings"] == RaySettings(address="10.0.0.5:6379", actors=4, affinity_wait=2.5,
                                                       node_modules=("tests.cluster.cluster_nodes",), device="cpu")
    assert pick_runner(build_parser().parse_args(["serve"])) is None  # the local runner


def test_serve_refuses_zero_actors(capsys):
    pytest.importorskip("ray")
    assert main(["serve", "--ray", "auto", "--ray-actors", "0", "--port", "0"]) == 2
    assert "error: --ray-actors must be 1 or more" in capsys.readouterr().err


def test_old_flag_and_command_names_still_work_and_warn(capsys):
    args = build_parser().parse_args(["serve", "--ray", "auto", "--ray-workers", "3", "--workers", "5"])
    assert (args.ray_actors, args.threads) == (3, 5)
    err = capsys.readouterr().err
    assert "warning: --ray-workers is deprecated; use --ray-actors" in err
    assert "warning: --workers is deprecated; use --threads" in err
    args = build_parser().parse_args(["serve", "--threads", "3"])
    assert (args.ray_actors, args.threads) == (None, 3) and capsys.readouterr().err == ""
    assert main(["worker", "--address", "10.0.0.5:6379", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "warning: 'nodegraph worker' is deprecated; use 'nodegraph join'" in out.err
    assert "--address=10.0.0.5:6379" in out.out


def test_join_command_joins_the_head_with_this_machines_folders(tmp_path):
    args = build_parser().parse_args(["join", "--address", "10.0.0.5:6379", "--models-dir",
                                      str(tmp_path / "models"), "--num-gpus", "2"])
    command, env = join_command(args)
    assert command[1:] == ["-m", "ray.scripts.scripts", "start", "--address=10.0.0.5:6379", "--block",
                           "--num-gpus=2"]
    assert env["NODEGRAPH_MODELS"] == str((tmp_path / "models").resolve())
    assert "NODEGRAPH_INPUT_DIR" not in env or env["NODEGRAPH_INPUT_DIR"] == os.environ.get("NODEGRAPH_INPUT_DIR")
