#!/usr/bin/env python3
"""Write ComfyUI's node specs (issue 18's node lists) as facts: tests/data/comfy_node_specs.json.

Usage::

    python scripts/comfy_node_specs.py --comfy /path/to/ComfyUI [--out tests/data/comfy_node_specs.json]

``--comfy`` is a ComfyUI checkout (a work tree; ``git archive`` or ``git show`` out of a bare mirror
will do). The script imports that ComfyUI in this process, loads its built-in extra nodes (no custom
nodes, no API nodes) and reads each listed class's ``/object_info`` entry the way ComfyUI's server
builds it: ``GET_NODE_INFO_V1()`` for V3 (``define_schema``) nodes, ``INPUT_TYPES()`` /
``RETURN_TYPES`` for classic ones. Python packages ComfyUI imports but whose code never runs while
describing a node (torchvision, av, kornia, sentencepiece, torchaudio, alembic, sqlalchemy…) are
stubbed when they are not installed (``--no-stubs`` turns that off).

What is written is facts only, in a normalised form that ``tests/test_comfy_node_specs.py`` compares
with ``nodegraph nodes --json``: per node its build point, required and optional inputs in declared
order (type, default, min/max/step, combo options), output types and names in order. Combos that list
files (model folders, input images) come out empty in a bare checkout and are written with empty
``options``: the test compares options only where ComfyUI's list is fixed.

Nodes issue 18 names that this ComfyUI does not have are listed in the output's ``absent`` field; the
test takes their facts from ``tests/data/comfy_node_specs_newer.json`` (written out by hand from a
newer ComfyUI, each with the commit it was read at).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "comfy_node_specs.json"

#: Issue 18's Build points 1-6 (point 1's "Sampler… option nodes" taken as every SAMPLER-making node of
#: ComfyUI's custom-sampling category; SamplerSEEDS2 and SamplerLCMUpscale named by the session brief).
BUILD_POINTS: dict[str, list[str]] = {
    "1 sigma-space sampling core": [
        "SamplerCustom", "SamplerCustomAdvanced", "KSamplerSelect", "RandomNoise", "DisableNoise", "AddNoise",
        "BasicScheduler", "KarrasScheduler", "ExponentialScheduler", "PolyexponentialScheduler",
        "BetaSamplingScheduler", "SDTurboScheduler", "AlignYourStepsScheduler", "LaplaceScheduler",
        "ManualSigmas", "SplitSigmas", "SplitSigmasDenoise", "FlipSigmas", "SetFirstSigma", "CFGGuider",
        "BasicGuider", "DualCFGGuider", "CFGNorm", "CFGZeroStar", "RescaleCFG",
        "SamplerEulerAncestral", "SamplerEulerAncestralCFGPP", "SamplerEulerCFGpp", "SamplerLMS",
        "SamplerDPMPP_3M_SDE", "SamplerDPMPP_2M_SDE", "SamplerDPMPP_SDE", "SamplerDPMPP_2S_Ancestral",
        "SamplerDPMAdaptative", "SamplerER_SDE", "SamplerSASolver", "SamplerLCM", "SamplerLCMUpscale",
        "SamplerSEEDS2",
    ],
    "2 KSampler composition": ["KSampler", "KSamplerAdvanced"],
    "3 model sampling patches": [
        "ModelSamplingDiscrete", "ModelSamplingContinuousEDM", "ModelSamplingContinuousV", "ModelSamplingSD3",
        "ModelSamplingAuraFlow", "ModelSamplingFlux",
    ],
    "4 speed patches": [
        "TorchCompileModel", "EasyCache", "FreeU", "FreeU_V2", "PerturbedAttentionGuidance",
        "SelfAttentionGuidance", "DifferentialDiffusion", "ModelAttentionBackend",
    ],
    "5 ControlNet and inpainting": [
        "ControlNetLoader", "DiffControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced",
        "SetUnionControlNetType", "InpaintModelConditioning", "InstructPixToPixConditioning", "Canny",
    ],
    "6 everyday utility nodes": [
        "ComfySwitchNode", "ComfyMathExpression", "ComfyNumberConvert", "CustomCombo", "ResolutionSelector",
        "SeedNode", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveInt", "PrimitiveFloat",
        "PrimitiveBoolean", "StringConcatenate", "StringReplace", "StringContains", "StringLength",
        "StringSubstring", "StringTrim", "RegexExtract", "RegexMatch", "RegexReplace", "JsonExtractString",
        "CreateList", "GetItemFromList",
        "ResizeImageMaskNode", "ResizeAndPadImage", "ImageScaleToMaxDimension", "ImageStitch",
        "ImageFromBatch", "BatchImagesNode", "RepeatImageBatch", "RebatchImages", "ImageCompare",
        "ImageCropV2", "ImageCropToMask", "ImageRemoveAlpha", "ColorTransfer", "SaveImageAdvanced",
        "LoadImageOutput",
        "LoadImageMask", "MaskToImage", "ImageToMask", "SolidMask", "InvertMask", "CropMask", "FeatherMask",
        "GrowMask", "ThresholdMask", "MaskComposite", "ImageCompositeMasked", "JoinImageWithAlpha",
        "SplitImageWithAlpha", "MaskPreview",
        "LatentComposite", "LatentCompositeMasked", "LatentBlend", "LatentAdd", "LatentSubtract",
        "LatentMultiply", "LatentInterpolate", "LatentBatch", "LatentCrop", "LatentFlip", "LatentRotate",
        "LatentCut", "LatentCutToBatch", "LatentApplyOperationCFG", "LatentOperationTonemapReinhard",
        "StartLoop", "EndLoop",
    ],
}

STUBBED = ("torchvision", "av", "kornia", "sentencepiece", "torchaudio", "alembic", "sqlalchemy",
           "comfy_kitchen", "spandrel_extra_arches")


class _Stub(types.ModuleType):
    """A module whose every attribute is another stub (for imports whose code never runs here)."""

    __path__: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{self.__name__}.{name}"
        return sys.modules.setdefault(full, _Stub(full))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _Stub(f"{self.__name__}()")

    def __mro_entries__(self, bases: tuple) -> tuple:
        return (object,)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


def install_stubs() -> list[str]:
    missing = {name for name in STUBBED if importlib.util.find_spec(name) is None}
    if missing:
        sys.meta_path.insert(0, _StubFinder(missing))
    return sorted(missing)


def load_comfy(checkout: Path) -> dict[str, Any]:
    """Import ComfyUI from ``checkout`` and return its NODE_CLASS_MAPPINGS (core + comfy_extras)."""
    os.chdir(checkout)
    sys.path.insert(0, str(checkout))
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options  # noqa: E402  (ComfyUI's own modules, from the checkout)

    comfy.options.enable_args_parsing()
    import utils.install_util  # noqa: F401  (ComfyUI's utils package before anything shadows it)
    import server  # noqa: F401
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    return nodes.NODE_CLASS_MAPPINGS


def object_info(cls: type) -> dict[str, Any]:
    """The parts of ComfyUI's /object_info entry that the facts need."""
    if hasattr(cls, "GET_NODE_INFO_V1"):
        info = cls.GET_NODE_INFO_V1()
        return {"input": info["input"], "input_order": info.get("input_order"), "output": list(info["output"]),
                "output_name": list(info.get("output_name") or info["output"]),
                "category": info.get("category"), "output_node": bool(info.get("output_node"))}
    inputs = cls.INPUT_TYPES()
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
            "output": list(cls.RETURN_TYPES), "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "category": getattr(cls, "CATEGORY", "sd"), "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}


SPEC_KEYS = ("default", "min", "max", "step")


def normalise_input(spec: Any) -> dict[str, Any]:
    """``[TYPE or [options], {opts}]`` (classic) or ``["COMBO", {"options": …}]`` (V3) → one record."""
    kind, opts = (spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}) \
        if isinstance(spec, (list, tuple)) else (spec, {})
    out: dict[str, Any] = {}
    if isinstance(kind, (list, tuple)):
        out["type"], out["options"] = "COMBO", list(kind)
    elif kind == "COMBO":
        out["type"], out["options"] = "COMBO", list(opts.get("options") or [])
    else:
        out["type"] = str(kind)
    for key in SPEC_KEYS:
        if key in opts and opts[key] is not None:
            out[key] = opts[key]
    for flag in ("image_upload", "multiline", "force_input", "forceInput", "lazy", "control_after_generate"):
        if opts.get(flag):
            out["force_input" if flag == "forceInput" else flag] = opts[flag]
    return out


def normalise(info: dict[str, Any]) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    order = info.get("input_order") or {}
    for section in ("required", "optional"):
        given = info["input"].get(section) or {}
        names = order.get(section) or list(given)
        sections[section] = {name: normalise_input(given[name]) for name in names}
    return {**sections, "outputs": info["output"], "output_names": info["output_name"],
            "category": info["category"], "output_node": info["output_node"]}


def checkout_commit(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git work tree)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy", type=Path, required=True, help="a ComfyUI checkout (work tree)")
    parser.add_argument("--commit", help="the checkout's commit, when it is not a git work tree")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-stubs", action="store_true", help="do not stub missing optional packages")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    checkout = args.comfy.resolve()
    stubbed = [] if args.no_stubs else install_stubs()
    mapping = load_comfy(checkout)
    found = re.search(r'__version__\s*=\s*"([^"]+)"', (checkout / "comfyui_version.py").read_text())
    facts: dict[str, Any] = {}
    absent: list[str] = []
    for point, names in BUILD_POINTS.items():
        for name in names:
            cls = mapping.get(name)
            if cls is None:
                absent.append(name)
                continue
            facts[name] = {"build_point": point, **normalise(object_info(cls))}
    document = {
        "comment": "ComfyUI's node specs for issue 18's node lists (facts: names, types, defaults, order). "
                   "Written by scripts/comfy_node_specs.py; do not edit by hand.",
        "comfyui_version": found.group(1) if found else None,
        "comfyui_commit": args.commit or checkout_commit(checkout),
        "stubbed_packages": stubbed,
        "absent": absent,
        "nodes": facts,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    print(f"{len(facts)} node(s) written to {out}; absent from this ComfyUI: {', '.join(absent) or 'none'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
