"""The scale-out command line: ``serve`` without ``--ray`` never imports Ray; ``nodegraph worker``
builds the ``ray start`` command with this machine's folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nodegraph.cli import build_parser, worker_command

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


def test_serve_ray_flags_reach_the_config():
    args = build_parser().parse_args(["serve", "--ray", "10.0.0.5:6379", "--ray-workers", "4",
                                      "--ray-affinity-wait", "2.5"])
    assert (args.ray_address, args.ray_workers, args.ray_affinity_wait) == ("10.0.0.5:6379", 4, 2.5)
    args = build_parser().parse_args(["serve"])
    assert args.ray_address is None


def test_worker_command_joins_the_head_with_this_machines_folders(tmp_path):
    args = build_parser().parse_args(["worker", "--address", "10.0.0.5:6379", "--models-dir",
                                      str(tmp_path / "models"), "--num-gpus", "2"])
    command, env = worker_command(args)
    assert command[1:] == ["-m", "ray.scripts.scripts", "start", "--address=10.0.0.5:6379", "--block",
                           "--num-gpus=2"]
    assert env["NODEGRAPH_MODELS"] == str((tmp_path / "models").resolve())
    assert "NODEGRAPH_INPUT_DIR" not in env or env["NODEGRAPH_INPUT_DIR"] == os.environ.get("NODEGRAPH_INPUT_DIR")
