"""The ``nodegraph`` command line: run, validate, list nodes, serve, join this machine to a Ray cluster.

Exit codes: 0 success; 1 a node failed while running; 2 the workflow (or a flag) is invalid — errors
are printed per node, never as a traceback; 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from .context import Paths
from .errors import NodegraphError, ValidationFailed, WorkflowFormatError
from .model_folders import extra_model_folders
from .progress import ProgressPrinter, format_timing_report, library_progress_silenced, report_dict, summary_line
from .types import STRING

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodegraph", description="Run node-graph workflows.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a workflow (.json in API or UI format, or a .png made by us or ComfyUI)")
    run.add_argument("workflow", type=Path)
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input; NODE is a node id or title, VALUE is JSON or plain text")
    run.add_argument("--prompt", metavar="TEXT",
                     help="set the text of the workflow's node titled 'Prompt' (its first text widget), e.g. "
                          "the design loop's instruction")
    _add_engine_options(run)
    run.add_argument("--report", type=Path, help="write a JSON report (timings, outputs, errors) here")
    run.add_argument("--timings", action="store_true", help="print the per-node timing table after the run")
    run.add_argument("--quiet", action="store_true",
                     help="no progress output (libraries' progress bars included); results and errors still print")
    run.add_argument("--nodes-module", action="append", default=[], metavar="MODULE",
                     help="import MODULE and register its node classes (local or test node packs)")
    _add_custom_nodes_options(run)

    validate = sub.add_parser("validate", help="check a workflow without running it")
    validate.add_argument("workflow", type=Path)
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE")
    validate.add_argument("--prompt", metavar="TEXT", help="as for run")
    validate.add_argument("--models-dir", type=Path, default=None)
    _add_model_paths_option(validate)
    validate.add_argument("--input-dir", type=Path, default=None)
    _add_custom_nodes_options(validate)

    nodes = sub.add_parser("nodes", help="list the available node classes")
    nodes.add_argument("--json", action="store_true", help="print ComfyUI's /object_info shape")
    _add_custom_nodes_options(nodes)
    _add_serve_parser(sub)
    return parser


def _add_serve_parser(sub) -> None:
    serve = sub.add_parser("serve", help="run the ComfyUI-compatible HTTP/WebSocket server")
    serve.add_argument("--host", default="127.0.0.1",
                       help="bind address (default 127.0.0.1; any other needs a token)")
    serve.add_argument("--port", type=int, default=8188, help="port (default 8188; 0 picks a free one)")
    serve.add_argument("--models-dir", type=Path, default=None)
    _add_model_paths_option(serve)
    serve.add_argument("--output-dir", type=Path, default=Path("outputs"))
    serve.add_argument("--input-dir", type=Path, default=None)
    serve.add_argument("--data-dir", type=Path, default=Path("data"),
                       help="where the job queue and history (SQLite) live (default ./data)")
    serve.add_argument("--auth-token", default=None,
                       help="require this token (Authorization: Bearer, or ?token=); generated and printed "
                            "when binding a non-loopback address without one")
    _add_threads_option(serve)
    _add_cache_options(serve)
    _add_memory_options(serve)
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    serve.add_argument("--max-upload-mb", type=float, default=100, help="upload size cap (default 100 MiB)")
    serve.add_argument("--max-queue", type=int, default=10_000, help="queued prompts cap (default 10000)")
    serve.add_argument("--max-prompt-nodes", type=int, default=10_000,
                       help="nodes one prompt may hold (default 10000)")
    serve.add_argument("--sync-commits", action="store_true",
                       help="flush each job-queue write to the disk before answering (default: writes survive "
                            "a server crash at once and reach the disk within 0.2 s)")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="also accept requests from this browser origin, e.g. http://myhost:3000")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also accept this Host header name (e.g. a reverse proxy's)")
    serve.add_argument("--nodes-module", action="append", default=[], metavar="MODULE",
                       help="import MODULE and register its node classes (local or test node packs)")
    _add_custom_nodes_options(serve)
    serve.add_argument("--frontend", choices=("builtin", "comfyui"), default="builtin",
                       help="the page at /: 'builtin' (default: nodegraph's canvas; ComfyUI's frontend, when "
                            "installed, at /comfyui/) or 'comfyui' (ComfyUI's official frontend, pip install "
                            "'nodegraph[frontend]'; nodegraph's canvas at /builtin/)")
    serve.add_argument("--ray", dest="ray_address", default=None, metavar="auto|ADDRESS",
                       help="run jobs on a Ray cluster (pip install 'nodegraph[ray]'): 'auto' joins the cluster "
                            "on this machine or starts a local one; or a head address such as 10.0.0.5:6379")
    serve.add_argument("--ray-actors", type=int, default=None, metavar="N",
                       help="engine actors to start (default: one per GPU of the cluster, 1 without GPUs)")
    serve.add_argument("--ray-affinity-wait", type=float, default=0.0, metavar="SECONDS",
                       help="how long a job waits for the busy actor that holds its models before an idle "
                            "actor loads them (default 0: never leave an actor idle)")
    serve.add_argument("--ray-workers", dest="ray_actors", type=int, action=DeprecatedAlias, new="--ray-actors",
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    # 'worker' is the old name of 'join' (main() warns when it is used)
    join = sub.add_parser("join", aliases=["worker"],
                          help="join this machine to the Ray cluster of a 'serve --ray' server "
                               "(runs 'ray start --address ... --block')")
    join.add_argument("--address", required=True, help="the head's address, e.g. 10.0.0.5:6379")
    join.add_argument("--models-dir", type=Path, default=None,
                      help="this machine's models folder (default: $NODEGRAPH_MODELS, else the server's path)")
    join.add_argument("--input-dir", type=Path, default=None, help="this machine's inputs folder")
    join.add_argument("--num-gpus", type=int, default=None, help="GPUs to offer (default: all)")
    join.add_argument("--num-cpus", type=int, default=None, help="CPUs to offer (default: all)")
    join.add_argument("--dry-run", action="store_true", help="print the command instead of running it")


class DeprecatedAlias(argparse.Action):
    """An old flag kept working: stores into the new flag's ``dest`` and warns (on stderr) to use ``new``."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_custom_nodes_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--custom-nodes-dir", dest="custom_nodes_dirs", action="append", default=[], type=Path,
                   metavar="DIR",
                   help="load ComfyUI custom node packs from this folder (repeatable; default: "
                        "$NODEGRAPH_CUSTOM_NODES, else ./custom_nodes). Packs are code: name only folders you trust")
    p.add_argument("--disable-custom-nodes", action="store_true", help="load no custom node packs")
    p.add_argument("--disable-custom-node", dest="disabled_custom_nodes", action="append", default=[],
                   metavar="PACK", help="do not load this pack (its folder or file name; repeatable)")


def custom_node_settings(args: argparse.Namespace):
    """Which custom node packs the flags ask for (:class:`nodegraph.comfy_compat.CustomNodeSettings`)."""
    from .comfy_compat import CustomNodeSettings

    return CustomNodeSettings.default(getattr(args, "custom_nodes_dirs", ()),
                                      enabled=not getattr(args, "disable_custom_nodes", False),
                                      disabled=getattr(args, "disabled_custom_nodes", ()))


def load_custom_node_packs(args: argparse.Namespace, registry, paths: Paths, device: str | None = None) -> None:
    """Load the custom node packs the flags name into ``registry``; a pack that fails is a warning."""
    from .comfy_compat import load_custom_nodes

    load_custom_nodes(registry, custom_node_settings(args), paths=paths, device=device)


def _add_model_paths_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extra-model-paths-config", dest="extra_model_paths", action="append", nargs="+",
                   default=[], type=Path, metavar="PATH",
                   help="also read models from the folders this ComfyUI extra_model_paths.yaml names (an existing "
                        "ComfyUI install's); repeatable. ./extra_model_paths.yaml is read when present")


def _add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=2, help="nodes the engine runs at once (default 2)")
    p.add_argument("--workers", dest="threads", type=int, action=DeprecatedAlias, new="--threads",
                   default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    """The output cache's budgets (ComfyUI's flag names; ``--cache-ram`` is a budget here, not
    ComfyUI's free-RAM headroom)."""
    p.add_argument("--cache-ram", type=float, default=None, metavar="GiB",
                   help="keep at most this much of node results in RAM (default: a quarter of the RAM, at most 4)")
    p.add_argument("--cache-vram", type=float, default=None, metavar="GiB",
                   help="keep at most this much of node results in GPU memory (default: a quarter of it, at most 4)")
    p.add_argument("--cache-none", action="store_true",
                   help="keep no node results between prompts (least memory; every prompt runs in full)")


def cache_budgets(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """``(ram, vram)`` cache budgets in bytes from the flags; ``None`` = the machine's default."""
    if getattr(args, "cache_none", False):
        return 0, 0
    ram, vram = getattr(args, "cache_ram", None), getattr(args, "cache_vram", None)
    for name, value in (("--cache-ram", ram), ("--cache-vram", vram)):
        if value is not None and value < 0:
            raise NodegraphError(f"{name} must be 0 or more (GiB)")
    return (None if ram is None else int(ram * 1024**3)), (None if vram is None else int(vram * 1024**3))


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", type=Path, default=None,
                   help="write the outputs here (default: a new folder per run, "
                        "outputs/<YYYY-MM-DD_HHMMSS>_<workflow-name>/)")
    p.add_argument("--input-dir", type=Path, default=None)
    p.add_argument("--models-dir", type=Path, default=None)
    _add_model_paths_option(p)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    _add_threads_option(p)
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickle model files (.ckpt .pt .bin .pth); they can run code, trust them first")
    _add_memory_options(p)
    _add_cache_options(p)


def _add_memory_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lowvram", action="store_true",
                   help="move each model back to the CPU after use; big models (SD3/Flux transformers and text "
                        "encoders) stream block by block (docs/models.md)")
    p.add_argument("--vram-budget-gb", type=float, default=None,
                   help="keep at most this much model weight on the GPU (on the CPU: weights cast to the compute "
                        "dtype); a big model that does not fit keeps what fits and streams the rest per block")


def vram_budget_bytes(args: argparse.Namespace) -> int | None:
    budget = getattr(args, "vram_budget_gb", None)
    if budget is not None and budget < 0:
        raise NodegraphError("--vram-budget-gb must be 0 or more")
    return None if budget is None else int(budget * 1024**3)


def model_manager(args: argparse.Namespace):
    """The engine's model manager as the flags configure it (device resolved like the engine does)."""
    from .context import pick_device
    from .models import ModelManager

    return ModelManager(pick_device(args.device), allow_pickle=getattr(args, "allow_pickle", False),
                        low_vram=getattr(args, "lowvram", False), vram_budget=vram_budget_bytes(args))


def _paths(args: argparse.Namespace) -> Paths:
    import os

    output = getattr(args, "output_dir", None) or Path("outputs")
    inputs = args.input_dir or Path(os.environ.get("NODEGRAPH_INPUT_DIR", "inputs"))
    models = args.models_dir or Path(os.environ.get("NODEGRAPH_MODELS", "models"))
    extra = extra_model_folders(path for paths in getattr(args, "extra_model_paths", []) for path in paths)
    return Paths(output_dir=output, input_dir=inputs, temp_dir=output / "temp", models_dir=models,
                 extra_model_dirs=extra)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``NODE.INPUT=VALUE`` → (node, input, value); VALUE is JSON when it parses, else text."""
    target, sep, raw = text.partition("=")
    node, dot, name = target.rpartition(".")
    if not sep or not dot or not node or not name:
        raise WorkflowFormatError(f"--set {text!r}: write it as NODE.INPUT=VALUE, e.g. --set 3.seed=42")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return node, name, value


def apply_overrides(api: dict[str, Any], overrides: Sequence[str]) -> None:
    for text in overrides:
        node, name, value = parse_override(text)
        node_id = node if node in api else _find_by_title(api, node)
        if node_id is None:
            raise WorkflowFormatError(f"--set {text!r}: no node with id or title {node!r} in the workflow")
        inputs = api[node_id].setdefault("inputs", {})
        inputs[name] = {"__value__": value} if isinstance(value, list) else value


#: The title that marks a workflow's prompt node, the one ``--prompt`` sets.
PROMPT_TITLE = "Prompt"


def apply_prompt(api: dict[str, Any], registry, text: str) -> str:
    """Set the text of the node titled ``Prompt`` (its first STRING widget); returns ``node.input``."""
    hits = [nid for nid, n in api.items() if isinstance(n, dict) and isinstance(n.get("_meta"), dict)
            and str(n["_meta"].get("title", "")).strip().lower() == PROMPT_TITLE.lower()]
    if len(hits) != 1:
        raise WorkflowFormatError(
            f"--prompt: the workflow has {'no' if not hits else len(hits)} node(s) titled {PROMPT_TITLE!r}; "
            f"title exactly one text node {PROMPT_TITLE!r}, or use --set NODE.INPUT=VALUE")
    node = api[hits[0]]
    cls = registry.get(node.get("class_type"))
    names = [name for name, spec in (cls.INPUTS.items() if cls else ()) if spec.type == STRING and not spec.force_input]
    if not names:
        raise WorkflowFormatError(f"--prompt: node {hits[0]} ({node.get('class_type')}) titled {PROMPT_TITLE!r} "
                                  "has no text input to set")
    if not isinstance(text, str) or not text.strip():
        raise WorkflowFormatError("--prompt: the text is empty")
    node.setdefault("inputs", {})[names[0]] = text
    return f"{hits[0]}.{names[0]}"


def _find_by_title(api: dict[str, Any], title: str) -> str | None:
    hits = [nid for nid, n in api.items()
            if isinstance(n, dict) and isinstance(n.get("_meta"), dict) and n["_meta"].get("title") == title]
    return hits[0] if len(hits) == 1 else None


def _load(args: argparse.Namespace, registry) -> tuple[dict, dict]:
    from .assets import find_workflow
    from .workflow.loader import load_workflow_file

    # a shipped workflow by name (design_loop.json, workflows/design_loop.json) works outside a clone
    loaded = load_workflow_file(find_workflow(args.workflow), registry)
    apply_overrides(loaded.api, args.overrides)
    if getattr(args, "prompt", None) is not None:
        apply_prompt(loaded.api, registry, args.prompt)
    extra = {"extra_pnginfo": {"workflow": loaded.ui}} if loaded.ui is not None else {}
    return loaded.api, extra


def print_validation_errors(errors: ValidationFailed, stream=None) -> None:
    stream = stream or sys.stderr
    print(f"error: the workflow is invalid ({len(errors.errors)} problem(s)):", file=stream)
    for e in errors.errors:
        where = f"[node {e.node_id}{'.' + e.input_name if e.input_name else ''}] " if e.node_id else ""
        print(f"  {where}{e.kind}: {e.message}", file=stream)


def cmd_nodes(args: argparse.Namespace) -> int:
    from .registry import default_registry

    registry = default_registry()
    load_custom_node_packs(args, registry, Paths())
    if args.json:
        json.dump(registry.object_info(), sys.stdout, indent=1, default=str)
        print()
    else:
        packs = {name: pack.name for pack in registry.custom_packs for name in pack.nodes}
        for name in registry.names():
            cls = registry[name]
            pack = f"  [custom_nodes/{packs[name]}]" if name in packs else ""
            print(f"{name:32} {cls.category:28} {cls.display_name or ''}{pack}")
    for problem in registry.load_errors:
        print(f"warning: node pack {problem.source} failed to load: {problem.message}", file=sys.stderr)
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from .registry import default_registry
    from .validation import validate

    registry = default_registry()
    paths = _paths(args)
    load_custom_node_packs(args, registry, paths)
    for problem in registry.load_errors:
        print(f"warning: node pack {problem.source} failed to load: {problem.message}", file=sys.stderr)
    api, _ = _load(args, registry)
    plan = validate(api, registry, paths=paths)
    print(f"ok: {len(plan.nodes)} node(s) to run for {len(plan.outputs)} output(s)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    if args.quiet:
        with library_progress_silenced():
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    import importlib
    from dataclasses import replace

    from .cache import OutputCache
    from .executor import Engine
    from .registry import default_registry
    from .run_folder import create_run_folder, remove_if_empty

    registry = default_registry()
    for name in args.nodes_module:
        try:
            registry.add_module(importlib.import_module(name))
        except ImportError as exc:
            print(f"error: --nodes-module {name}: {exc}", file=sys.stderr)
            return EXIT_INVALID
    paths = _paths(args)
    run_folder = None
    if args.output_dir is None:  # a new folder per run (see nodegraph.run_folder)
        try:
            run_folder = create_run_folder(paths.output_dir, args.workflow)
        except OSError as exc:
            print(f"error: cannot create a run folder under {paths.output_dir}: {exc}", file=sys.stderr)
            return EXIT_INVALID
        paths = replace(paths, output_dir=run_folder, temp_dir=run_folder / "temp")
    try:
        engine = Engine(registry, paths=paths, device=args.device, threads=args.threads,
                        services={"models": model_manager(args)}, cache=OutputCache(*cache_budgets(args)))
    except (ValueError, NodegraphError) as exc:
        if run_folder is not None:
            remove_if_empty(run_folder)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        load_custom_node_packs(args, engine.registry, engine.paths, engine.device)
        for problem in engine.registry.load_errors:
            print(f"warning: node pack {problem.source} failed to load: {problem.message}", file=sys.stderr)
        api, extra = _load(args, engine.registry)
        plan = engine.validate(api)
        return _execute(args, engine, plan, extra, run_folder)
    finally:
        engine.close()
        if run_folder is not None:
            remove_if_empty(run_folder)


def _execute(args: argparse.Namespace, engine, plan, extra: dict, run_folder: Path | None) -> int:
    printer = ProgressPrinter(sys.stderr, total=len(plan.nodes), enabled=not args.quiet, out=sys.stdout,
                              output_dir=engine.paths.output_dir, temp_dir=engine.paths.temp_dir)
    previous = signal.getsignal(signal.SIGINT)
    interrupts = 0

    def on_sigint(signum, frame):  # first Ctrl-C: clean interrupt; second: stop now
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            raise KeyboardInterrupt
        print("\ninterrupting… (Ctrl-C again to abort)", file=sys.stderr)
        engine.interrupt()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        result = engine.execute(plan, extra_data=extra, listeners=[printer])
    finally:
        signal.signal(signal.SIGINT, previous)
    printer.close()
    for node_id, ui in result.outputs.items():  # output nodes whose finish the listener did not see
        printer.print_outputs(node_id, ui)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        report = report_dict(result, plan)
        report["cache"] = engine.cache.stats().to_dict()
        report["output_dir"] = str(engine.paths.output_dir)
        args.report.write_text(json.dumps(report, indent=1, default=str))
    if args.timings:
        print(format_timing_report(result, plan), file=sys.stderr)
    elif not args.quiet:
        print(summary_line(result), file=sys.stderr)
    if run_folder is not None and any(p.is_file() for p in run_folder.rglob("*")):
        print(f"run folder: {run_folder}")
    if result.failure is not None:
        f = result.failure
        print(f"error: node {f.node_id} ({f.class_type}) failed: {f.exception_type}: {f.exception_message}",
              file=sys.stderr)
        for name, values in f.inputs.items():
            print(f"  input {name}: {', '.join(values)}", file=sys.stderr)
        return EXIT_FAILED
    if result.status == "interrupted":
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def pick_runner(args: argparse.Namespace):
    """Where ``serve`` runs jobs: ``None`` (the local runner, this process's engine) or, with ``--ray``,
    the Ray runner's factory (Ray imported only when the server starts it)."""
    if args.ray_address is None:
        return None
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise NodegraphError("--ray needs Ray: pip install 'nodegraph[ray]'")
    if args.ray_actors is not None and args.ray_actors < 1:
        raise NodegraphError("--ray-actors must be 1 or more")
    from .cluster import RaySettings, ray_runner

    return ray_runner(RaySettings(address=args.ray_address, actors=args.ray_actors,
                                  affinity_wait=args.ray_affinity_wait, node_modules=tuple(args.nodes_module),
                                  device=None if args.device == "auto" else args.device))


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from .server import ServerConfig, serve_forever

    cache_ram, cache_vram = cache_budgets(args)
    config = ServerConfig(host=args.host, port=args.port, paths=_paths(args), data_dir=args.data_dir,
                          auth_token=args.auth_token, threads=args.threads,
                          device=None if args.device == "auto" else args.device,
                          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_queue=args.max_queue,
                          max_prompt_nodes=args.max_prompt_nodes,
                          cache_ram_bytes=cache_ram, cache_vram_bytes=cache_vram, sync_commits=args.sync_commits,
                          low_vram=args.lowvram, vram_budget_bytes=vram_budget_bytes(args),
                          allowed_origins=tuple(o.rstrip("/") for o in args.allow_origin),
                          allowed_hosts=tuple(args.allow_host), nodes_modules=tuple(args.nodes_module),
                          frontend=args.frontend, **_custom_nodes_config(args))
    make_runner = pick_runner(args)
    config, generated = config.resolved()
    if generated:
        print(f"auth token (required on every request): {config.auth_token}", flush=True)
    try:
        asyncio.run(serve_forever(config, make_runner=make_runner))
    except (ValueError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _custom_nodes_config(args: argparse.Namespace) -> dict[str, Any]:
    """``ServerConfig``'s custom node fields from the flags (no folders with --disable-custom-nodes)."""
    settings = custom_node_settings(args)
    return {"custom_nodes_dirs": settings.dirs if settings.enabled else (),
            "disabled_custom_nodes": tuple(sorted(settings.disabled))}


def join_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``ray start`` command line and environment that join this machine to the cluster (as a Ray
    worker node: its GPUs then host engine actors)."""
    import os

    command = [sys.executable, "-m", "ray.scripts.scripts", "start", f"--address={args.address}", "--block"]
    if args.num_gpus is not None:
        command.append(f"--num-gpus={args.num_gpus}")
    if args.num_cpus is not None:
        command.append(f"--num-cpus={args.num_cpus}")
    env = dict(os.environ)
    if args.models_dir is not None:
        env["NODEGRAPH_MODELS"] = str(args.models_dir.resolve())
    if args.input_dir is not None:
        env["NODEGRAPH_INPUT_DIR"] = str(args.input_dir.resolve())
    return command, env


def cmd_join(args: argparse.Namespace) -> int:
    import importlib.util
    import shlex
    import subprocess

    command, env = join_command(args)
    if args.dry_run:
        shown = [f"{k}={shlex.quote(env[k])}" for k in ("NODEGRAPH_MODELS", "NODEGRAPH_INPUT_DIR") if k in env]
        print(" ".join(shown + [shlex.quote(part) for part in command]))
        return EXIT_OK
    if importlib.util.find_spec("ray") is None:
        print("error: 'nodegraph join' needs Ray: pip install 'nodegraph[ray]'", file=sys.stderr)
        return EXIT_INVALID
    return subprocess.call(command, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command == "serve":  # this process is the server: its heap on huge pages
        from .heap import exec_with_heap_tunables

        exec_with_heap_tunables()
    if args.command == "worker":
        print("warning: 'nodegraph worker' is deprecated; use 'nodegraph join'", file=sys.stderr)
    handlers = {"run": cmd_run, "validate": cmd_validate, "nodes": cmd_nodes, "serve": cmd_serve,
                "join": cmd_join, "worker": cmd_join}
    try:
        return handlers[args.command](args)
    except ValidationFailed as exc:
        print_validation_errors(exc)
        return EXIT_INVALID
    except (WorkflowFormatError, NodegraphError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
