"""MoGe-2 (nodes/image/moge*.py) on a tiny random MoGe-2 in the official checkpoint layout
(tests/helpers/tiny_moge.py): the network and the official ``infer`` post-processing agree with Microsoft's
code run on the same weights (recorded in tests/data/moge_official/, see its README); LoadMoGeModel →
MoGeInference → MoGeRender run as a graph; ComfyUI's MoGe templates validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nodegraph.registry import default_registry
from nodegraph_nodes.image import moge_geometry as geo
from nodegraph_nodes.image.moge import num_tokens
from nodegraph_nodes.image.moge_net import MoGeFileError, detect_config, load_moge
from tests.helpers.engines import make_engine
from tests.helpers.tiny_moge import save_tiny_moge, tiny_moge_image, tiny_moge_state_dict

OFFICIAL = Path(__file__).parent / "data" / "moge_official" / "tiny_v2.safetensors"
#: the official run's infer() arguments per recorded prefix
CASES = {"auto": dict(fov_x=None, force_projection=True, apply_mask=True),
         "fov60": dict(fov_x=60.0, force_projection=True, apply_mask=True),
         "nomask": dict(fov_x=None, force_projection=False, apply_mask=False)}
CKPT = "moge_2_vitl_normal_fp16.safetensors"


def _close(got: torch.Tensor, want: torch.Tensor, name: str, rtol: float = 1e-4) -> None:
    got, want = got.float(), want.float()
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite), f"{name}: inf pixels differ"
    scale = max(want[finite].abs().max().item(), 1.0) if finite.any() else 1.0
    err = (got[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
    assert err <= rtol * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"


@pytest.fixture(scope="module")
def official():
    return load_file(str(OFFICIAL))


@pytest.fixture(scope="module")
def net():
    return load_moge(tiny_moge_state_dict(0))


def test_config_is_read_from_the_weights():
    cfg = detect_config(tiny_moge_state_dict(0))
    assert (cfg.hidden_size, cfg.num_layers, cfg.pretrain_grid, cfg.intermediate_layers) == (64, 4, 8, [0, 1, 2, 3])
    assert sorted(cfg.heads) == ["mask", "normal", "points"] and cfg.scale_dims == [64, 32, 1]
    assert cfg.neck.resamplers == ["conv_transpose"] * 4 and cfg.neck.dim_in == [34, 2, 2, 2, 2]


def test_network_matches_official_forward(net, official):
    with torch.no_grad():
        raw = net(tiny_moge_image().movedim(-1, 1), 48)
    assert set(raw) == {"points", "normal", "mask", "metric_scale"}
    for key, value in raw.items():
        _close(value, official["raw_" + key], key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_postprocess_matches_official_infer(official, case):
    raw = {k: official["raw_" + k] for k in ("points", "normal", "mask", "metric_scale")}
    out = geo.postprocess(raw, **CASES[case])
    assert set(out) == {"points", "depth", "intrinsics", "mask", "normal"}
    for key, value in out.items():
        want = official[f"{case}_{key}"]
        if key == "mask":
            assert torch.equal(value, want.bool())
        else:
            _close(value, want, f"{case} {key}")
    if CASES[case]["apply_mask"]:
        assert torch.isinf(out["depth"][~out["mask"]]).all() and (~out["mask"]).any()


def _transformers_style(sd: dict) -> dict:
    """The tiny file with its backbone in the names ComfyUI's DINOv2 port loads (embeddings.*, encoder.layer.N.…,
    query / key / value apart), written here independently of the loader's tables."""
    import re

    top = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
           "mask_token": "embeddings.mask_token", "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias", "norm.weight": "layernorm.weight",
           "norm.bias": "layernorm.bias"}
    out = {}
    for key, value in sd.items():
        rel = key[len("encoder.backbone."):] if key.startswith("encoder.backbone.") else None
        if rel is None:
            out[key] = value
        elif rel in top:
            out["encoder.backbone." + top[rel]] = value
        else:
            i, sub = re.match(r"blocks\.(\d+)\.(.*)", rel).groups()
            base = f"encoder.backbone.encoder.layer.{i}."
            if sub.startswith("attn.qkv."):
                for part, t in zip(("query", "key", "value"), value.chunk(3)):
                    out[f"{base}attention.attention.{part}.{sub.rsplit('.', 1)[1]}"] = t
            else:
                sub = (sub.replace("attn.proj.", "attention.output.dense.").replace("ls1.gamma", "layer_scale1.lambda1")
                       .replace("ls2.gamma", "layer_scale2.lambda1"))
                out[base + sub] = value
    return out


def test_transformers_style_backbone_names_load_the_same_model(net):
    other = load_moge(_transformers_style(tiny_moge_state_dict(0)))
    image = tiny_moge_image().movedim(-1, 1)
    with torch.no_grad():
        a, b = net(image, 48), other(image, 48)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_swiglu_backbone_is_refused_naming_the_file():
    sd = tiny_moge_state_dict(0)
    sd = {k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3."): v for k, v in sd.items()}
    with pytest.raises(MoGeFileError, match="moge_3_vitg_fp16.safetensors.*SwiGLU"):
        load_moge(sd, "moge_3_vitg_fp16.safetensors")


def test_moge1_and_foreign_files_are_refused():
    with pytest.raises(MoGeFileError, match="MoGe-1"):
        detect_config({"backbone.cls_token": torch.zeros(1, 1, 8)}, "old.safetensors")
    with pytest.raises(MoGeFileError, match="x.safetensors"):
        detect_config({"foo": torch.zeros(1)}, "x.safetensors")


def test_graph_loads_infers_and_renders(tmp_path, net):
    from PIL import Image
    import numpy as np

    save_tiny_moge(tmp_path / "models" / "geometry_estimation", CKPT)
    (tmp_path / "input").mkdir()
    image = tiny_moge_image(height=28, width=42)
    Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(tmp_path / "input" / "in.png")
    engine = make_engine(tmp_path, tmp_path, default_registry(packs=False))
    modes = ["depth", "depth_colored", "normal_opengl", "normal_directx", "mask"]
    api = {"1": {"class_type": "LoadMoGeModel", "inputs": {"model_name": CKPT}},
           "2": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
           "3": {"class_type": "MoGeInference", "inputs": {
               "moge_model": ["1", 0], "image": ["2", 0], "resolution_level": 0, "fov_x_degrees": 0.0,
               "batch_size": 1, "force_projection": True, "apply_mask": True, "refine_steps": 0}}}
    for i, mode in enumerate(modes):
        api[str(10 + i)] = {"class_type": "MoGeRender", "inputs": {"moge_geometry": ["3", 0], "output": mode}}
        api[str(20 + i)] = {"class_type": "PreviewImage", "inputs": {"images": [str(10 + i), 0]}}
    try:
        result = engine.run(api).raise_for_status()
        geometry = result.values["3"][0][0]
        renders = {mode: result.values[str(10 + i)][0][0] for i, mode in enumerate(modes)}
    finally:
        engine.close()
    pixels = torch.from_numpy(np.array(Image.open(tmp_path / "input" / "in.png"))).float()[None] / 255
    with torch.no_grad():
        want = geo.postprocess(net(pixels.movedim(-1, 1), num_tokens(0)), None, True, True)
    for key in ("points", "depth", "intrinsics", "normal"):
        _close(getattr(geometry, key), want[key], key)
    assert torch.equal(geometry.mask, want["mask"])
    for img in renders.values():
        assert img.shape == (1, 28, 42, 3) and 0 <= img.min() and img.max() <= 1
    mask = geometry.mask[0]
    assert torch.equal(renders["mask"][0, ..., 0], mask.float())
    depth = renders["depth"][0, ..., 0]
    assert (depth[~mask] == 0).all()
    near, far = geometry.depth[0][mask].argmin(), geometry.depth[0][mask].argmax()
    assert depth[mask][near] > depth[mask][far]  # disparity: nearer is brighter
    gl, dx = renders["normal_opengl"][0], renders["normal_directx"][0]
    assert torch.allclose(gl[..., 1], 1 - dx[..., 1], atol=1e-6) and torch.equal(gl[..., ::2], dx[..., ::2])
    n = geometry.normal[0]
    assert torch.allclose(dx, (n * torch.tensor([1.0, 1.0, -1.0]) * 0.5 + 0.5).clamp(0, 1))


MOGE_TEMPLATES = ("utility_moge_depth_estimation", "utility_moge3_geometry_estimation", "video_ltx2_3_ic_lora")


def test_moge_templates_validate_with_file_errors_only():
    from tests.helpers.package_templates import check_templates, package_templates

    paths = package_templates(lambda n: n[:-len(".json")] in MOGE_TEMPLATES)
    assert len(paths) == len(MOGE_TEMPLATES)
    check = check_templates(paths, default_registry(packs=False))
    check.assert_missing(set())
    assert sorted(check.clean) == sorted(n + ".json" for n in MOGE_TEMPLATES)


def test_depth_estimation_template_runs_end_to_end(tmp_path):
    """utility_moge_depth_estimation as saved (resolution level 2 → 0 to keep the tiny run short)."""
    import json

    import numpy as np
    from PIL import Image

    from nodegraph.workflow.loader import load_workflow_data
    from tests.helpers.package_templates import package_templates

    registry = default_registry(packs=False)
    (path,) = package_templates(lambda n: n == "utility_moge_depth_estimation.json")
    api = load_workflow_data(json.loads(path.read_text()), registry).api
    save_tiny_moge(tmp_path / "models" / "geometry_estimation", CKPT)
    (tmp_path / "input").mkdir()
    image = tiny_moge_image(seed=3, height=30, width=40)
    Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(tmp_path / "input" / "alien_world.png")
    inference = next(i for i, n in api.items() if n["class_type"] == "MoGeInference")
    api[inference]["inputs"]["resolution_level"] = 0
    engine = make_engine(tmp_path, tmp_path, registry)
    try:
        result = engine.run(api).raise_for_status()
    finally:
        engine.close()
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"LoadMoGeModel", "MoGeInference", "MoGeRender", "ImageToMask", "PreviewImage", "MaskPreview"} <= kinds
    geometry = result.values[inference][0][0]
    renders = {api[i]["inputs"]["output"]: result.values[i][0][0] for i in api if api[i]["class_type"] == "MoGeRender"}
    assert set(renders) == {"depth", "depth_colored", "mask"}
    assert all(r.shape == (1, 30, 40, 3) for r in renders.values())
    to_mask = next(i for i in api if api[i]["class_type"] == "ImageToMask")
    assert torch.equal(result.values[to_mask][0][0], geometry.mask.float())
    finite = geometry.mask[0]
    assert finite.any() and torch.isfinite(geometry.depth[0][finite]).all()
