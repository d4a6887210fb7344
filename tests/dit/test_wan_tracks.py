"""Trajectory-conditioned Wan I2V (issue 21): the track nodes (GenerateTracks, WanMoveTracksFromCoords,
WanMoveConcatTrack) give the paths ComfyUI's do; WanMoveTrackToVideo (Wan-Move) and WanTrackToVideo (ATI) put the
start latent's features where the tracks go and leave the rest as WanImageToVideo makes it; ComfyUI's official
``video_wanmove_480p`` and ``video_wan_ati`` templates run on tiny Wan 2.1 I2V files under their file names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from nodegraph_nodes.dit.qwen_image import WAN21
from nodegraph_nodes.dit.wan_ati import ati_tracks
from nodegraph_nodes.dit.wan_tracks import generate_path, parse_json_tracks, visibility_of

from tests.dit.template_runs import package_template_api, saved_video_frames, set_inputs, set_primitive_ints
from tests.dit.tiny_wan import build_wan, template_files
from tests.helpers.engines import make_engine

WIDTH, HEIGHT = 32, 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_wan(tmp_path_factory.mktemp("wan_tracks_models"))


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def start_image(input_dir, name: str = "tracks_start.png", size: tuple[int, int] = (HEIGHT, WIDTH)) -> str:
    input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (*size, 3), dtype=np.uint8), "RGB").save(input_dir / name)
    return name


# -- the track nodes ---------------------------------------------------------------------------------


def test_generate_tracks_paths():
    # a line from (0.25, 0.5) to (0.75, 0.5) of a 100×60 frame: x 25 → 75, y 30; 3 tracks 0.1·80 = 8 px apart
    # along the normal (0, 1)
    path = generate_path(100, 60, (0.25, 0.5), (0.75, 0.5), None, 5, 3, 0.1, "linear")
    assert path.shape == (5, 3, 2)
    assert torch.allclose(path[:, 1, 0], torch.tensor([25.0, 37.5, 50.0, 62.5, 75.0]))
    assert torch.allclose(path[0, :, 1], torch.tensor([22.0, 30.0, 38.0]))
    assert torch.allclose(path[2, :, 0], torch.full((3,), 50.0))
    eased = generate_path(100, 60, (0.25, 0.5), (0.75, 0.5), None, 5, 1, 0.0, "ease_in")
    assert torch.allclose(eased[:, 0, 0], 25 + 50 * torch.tensor([0.0, 0.0625, 0.25, 0.5625, 1.0]))
    still = generate_path(100, 60, (0.25, 0.5), (0.75, 0.5), None, 4, 2, 0.1, "constant")
    assert torch.allclose(still[:, :, 0], torch.full((4, 2), 25.0))
    # a Bézier through (0.5, 1.0): its middle point is (p0 + 2·p1 + p2) / 4; the tangent there is along x
    curve = generate_path(100, 60, (0.0, 0.0), (1.0, 0.0), (0.5, 1.0), 3, 3, 0.1, "linear")
    assert torch.allclose(curve[1, 1], torch.tensor([50.0, 30.0]))
    assert torch.allclose(curve[1, 0], torch.tensor([50.0, 22.0])) and torch.allclose(curve[1, 2], torch.tensor([50.0, 38.0]))
    # a mask's frames with any nonzero pixel are visible, for every track
    mask = torch.zeros(3, 4, 4)
    mask[1, 2, 2] = 0.5
    assert torch.equal(visibility_of(mask, 3, 2, "GenerateTracks"), torch.tensor([[False] * 2, [True] * 2, [False] * 2]))
    with pytest.raises(ValueError, match="GenerateTracks.track_mask"):
        visibility_of(mask, 5, 2, "GenerateTracks")


def test_track_nodes_through_the_engine(engine):
    coords = json.dumps([[{"x": 1, "y": 2}, {"x": 3, "y": 4}], [{"x": 5, "y": 6}, {"x": 7, "y": 8}]])
    g = Graph()
    gen = g.node("GenerateTracks", "gen", width=64, height=32, start_x=0.0, start_y=0.5, end_x=1.0, end_y=0.5,
                 num_frames=2, num_tracks=3, track_spread=0.0, bezier=False, mid_x=0.5, mid_y=0.5,
                 interpolation="linear")
    text = g.node("PrimitiveStringMultiline", value=coords)
    mask = g.node("SolidMask", value=1.0, width=8, height=8)
    both = g.node("WanMoveTracksFromCoords", "coords", track_coords=text, track_mask=mask)
    cat = g.node("WanMoveConcatTrack", "cat", tracks_1=gen.out(0), tracks_2=both.out(0))
    alone = g.node("WanMoveConcatTrack", "alone", tracks_1=both.out(0))
    for node in (cat, alone):
        g.node("PreviewAny", source=node.out(0))
    frames = g.node("EmptyImage", width=64, height=32, batch_size=1, color=0)
    g.node("PreviewAny", source=g.node("WanMoveVisualizeTracks", "shown", images=frames, tracks=gen.out(0),
                                       line_resolution=24, circle_size=4, opacity=1.0, line_width=2))
    result = engine.run(g).raise_for_status()
    assert result.value("gen", 1) == 2 and result.value("coords", 1) == 2
    coords_tracks = result.value("coords", 0)
    assert torch.equal(coords_tracks.path, torch.tensor([[[1.0, 2.0], [5.0, 6.0]], [[3.0, 4.0], [7.0, 8.0]]]))
    # SolidMask is one frame, for every frame: visible, for both tracks
    assert coords_tracks.visibility.shape == (2, 2) and bool(coords_tracks.visibility.all())
    joined = result.value("cat", 0)
    assert joined.path.shape == (2, 5, 2) and torch.equal(joined.path[:, 3:], coords_tracks.path)
    assert torch.allclose(joined.path[1, :3], torch.tensor([[64.0, 16.0]] * 3))
    assert result.value("alone", 0) is coords_tracks
    shown = result.value("shown", 0)  # the black frame repeated for the 2 track frames; at (0, 16) the last of
    # the 3 coinciding discs (colour 2)
    assert shown.shape == (2, 32, 64, 3) and torch.allclose(shown[0, 16, 1], torch.tensor([255.0, 255, 0]) / 255)


def test_json_tracks_and_ati_resampling():
    assert parse_json_tracks("not json") == []
    single = parse_json_tracks("[{'x': 1, 'y': 2}]")  # one track alone, single quotes
    assert single == [[{"x": 1, "y": 2}]]
    # x = point index: 162 points cut to 121; 81 frames take points 0, then 1 + ⌊(1 + 3(k - 1)) / 2⌋
    track = [{"x": i, "y": 10} for i in range(162)]
    out = ati_tracks([track], width=64, height=32, length=81)
    assert out.shape == (81, 1, 4)
    points = torch.tensor([0] + [1 + (1 + 3 * (k - 1)) // 2 for k in range(1, 81)], dtype=torch.float32)
    assert torch.allclose(out[:, 0, 1], (points - 32) / 32 * 2)
    assert torch.allclose(out[:, 0, 2], torch.full((81,), (10 - 16) / 32 * 2))
    assert torch.equal(out[:, 0, 3], torch.ones(81))
    # a short track is padded with invisible points
    short = ati_tracks([track[:50]], width=64, height=32, length=81)
    assert short[33, 0, 3] == 1 and short[34, 0, 3] == -1  # points 49 and 51


# -- the conditioning nodes --------------------------------------------------------------------------


def i2v_and(g, node: str, name: str, image: str, length: int, **inputs):
    """WanImageToVideo and ``node`` on the same start image; both previewed."""
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    pos = g.node("CLIPTextEncode", text="a fox", clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    img = g.node("LoadImage", image=image).out(0)
    common = dict(positive=pos, negative=neg, vae=vae, width=WIDTH, height=HEIGHT, length=length, batch_size=1,
                  start_image=img)
    plain = g.node("WanImageToVideo", "plain", **common)
    cond = g.node(node, name, **common, **inputs)
    for n in (plain, cond):
        g.node("PreviewAny", source=n.out(0))
        g.node("PreviewAny", source=n.out(1))
        g.node("PreviewAny", source=n.out(2))


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_wan_move_copies_first_frame_features_along_the_track(engine, strength):
    image = start_image(engine.paths.input_dir)
    g = Graph()
    # one track, 9 frames, (3.2, 3.2) → (28.8, 28.8): latent cells (0, 0), (2, 2) on frame 4, (3, 3) on frame 8
    tracks = g.node("GenerateTracks", width=WIDTH, height=HEIGHT, start_x=0.1, start_y=0.1, end_x=0.9, end_y=0.9,
                    num_frames=9, num_tracks=1, track_spread=0.0, bezier=False, mid_x=0.5, mid_y=0.5,
                    interpolation="linear")
    i2v_and(g, "WanMoveTrackToVideo", "move", image, 9, tracks=tracks.out(0), strength=strength)
    result = engine.run(g).raise_for_status()
    plain = result.value("plain", 0)[0][1]["concat_latent_image"]
    pos, neg = result.value("move", 0)[0][1], result.value("move", 1)[0][1]
    moved = pos["concat_latent_image"]
    assert moved.shape == plain.shape == (1, 16, 3, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(pos["concat_mask"], result.value("plain", 0)[0][1]["concat_mask"])
    assert torch.equal(neg["concat_latent_image"], moved)  # ComfyUI's negative gets the moved latent too
    assert result.value("move", 2)["samples"].shape == (1, 16, 3, 4, 4)
    expected = plain.clone()
    source = plain[0, :, 0, 0, 0]
    for frame, cell in ((1, 2), (2, 3)):
        own = plain[0, :, frame, cell, cell]
        expected[0, :, frame, cell, cell] = own + (source - own) * strength
    assert not torch.equal(expected, plain)
    assert torch.allclose(moved, expected, atol=1e-6)


def test_wan_track_to_video_draws_the_track_into_the_latent(engine):
    image = start_image(engine.paths.input_dir)
    # a still track at the latent grid's point (x 1/3, y -1/3) of ATI's [-1, 1] grid: latent cell (row 1, column 2)
    x, y = 16 + 16 / 3, 16 - 16 / 3
    tracks = json.dumps([[{"x": x, "y": y}] * 121])
    g = Graph()
    i2v_and(g, "WanTrackToVideo", "ati", image, 9, tracks=tracks, temperature=220.0, topk=2)
    result = engine.run(g).raise_for_status()
    plain = result.value("plain", 0)[0][1]["concat_latent_image"]
    pos, neg = result.value("ati", 0)[0][1], result.value("ati", 1)[0][1]
    assert torch.equal(pos["concat_latent_image"], neg["concat_latent_image"])
    mask = pos["concat_mask"]
    assert mask.shape == (1, 4, 3, 4, 4)
    expected_mask = torch.ones(3, 4, 4)
    expected_mask[0] = 0.0
    expected_mask[1:, 1, 2] = 0.0  # the track's weight exp(0) = 1 there; exp(-220 · ≥ 4/9) ≈ 0 elsewhere
    assert torch.allclose(mask[0, 0], expected_mask, atol=1e-6) and torch.equal(mask[0, 0], mask[0, 3])
    # the feature: latent frame 0 (model space) sampled bilinearly at grid_sample's (1/3, -1/3) without aligned
    # corners — pixel (2 + 1/6, 1 - 1/6) of the 4×4 frame
    y0 = WAN21.process_in(plain)[0, :, 0]
    feature = (5 / 6 * (5 / 6 * y0[:, 1, 2] + 1 / 6 * y0[:, 1, 3]) + 1 / 6 * (5 / 6 * y0[:, 0, 2] + 1 / 6 * y0[:, 0, 3]))
    expected = WAN21.process_in(plain).clone()
    expected[0, :, 1:, 1, 2] = feature[:, None]
    assert torch.allclose(WAN21.process_in(pos["concat_latent_image"]), expected, atol=1e-4)
    # no tracks: WanImageToVideo's conditioning
    g = Graph()
    i2v_and(g, "WanTrackToVideo", "ati", image, 9, tracks="[]", temperature=220.0, topk=2)
    result = engine.run(g).raise_for_status()
    assert torch.equal(result.value("ati", 0)[0][1]["concat_latent_image"], plain)


# -- the templates -----------------------------------------------------------------------------------


def test_comfy_wanmove_template_runs(engine, tiny):
    """ComfyUI's ``video_wanmove_480p`` template (the installed comfyui_workflow_templates_json package, MIT): three
    GenerateTracks joined by WanMoveConcatTrack into WanMoveTrackToVideo, on the tiny model under its file names
    (the lightx2v LoRA too, though the template's switch leaves it out). Made smaller: the start image scaled to
    32×32 and the tracks drawn for that size, 5 frames, 3 steps."""
    from tests.dit.test_wan_vace import write_original_lora

    name = "video_wanmove_480p"
    template_files(tiny.root, {"Wan21-WanMove_fp8_scaled_e4m3fn_KJ.safetensors": "tiny_wan21_i2v.safetensors"},
                   clip_vision=True)
    loras = tiny.root / "models" / "loras"
    loras.mkdir(exist_ok=True)
    write_original_lora(tiny.i2v21_transformer, loras / "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors")
    start_image(engine.paths.input_dir, "snowboard_rush.png", (40, 48))
    api = package_template_api(name, engine.registry)
    set_inputs(api, {"ImageScale": dict(width=WIDTH, height=HEIGHT), "GenerateTracks": dict(width=WIDTH, height=HEIGHT),
                     "WanMoveTrackToVideo": dict(length=5)})
    set_primitive_ints(api, {20: 3})
    result = engine.run(api).raise_for_status()
    executed = [api[n]["class_type"] for n in result.executed]
    assert executed.count("GenerateTracks") == 3 and executed.count("WanMoveConcatTrack") == 2
    assert {"WanMoveTrackToVideo", "CLIPVisionEncode", "KSampler", "SaveVideo"} <= set(executed)
    assert saved_video_frames(engine.paths.output_dir) == 5


def test_comfy_wan_ati_template_runs(engine, tiny):
    """ComfyUI's ``video_wan_ati`` template (the installed comfyui_workflow_templates_json package, MIT): its JSON
    track into WanTrackToVideo, on the tiny model under its file name (loaded as fp8_e4m3fn as the template asks).
    Made smaller: 32×32, 5 frames (the track's points scaled to the size), 3 steps."""
    name = "video_wan_ati"
    template_files(tiny.root, {"Wan2_1-I2V-ATI-14B_fp8_e4m3fn.safetensors": "tiny_wan21_i2v.safetensors"},
                   clip_vision=True)
    start_image(engine.paths.input_dir, "video_wan_ati_input_image.jpg", (40, 48))
    api = package_template_api(name, engine.registry)
    (node,) = [n for n in api.values() if n["class_type"] == "WanTrackToVideo"]
    text = api[node["inputs"]["tracks"][0]]["inputs"]["value"]
    scale = WIDTH / node["inputs"]["width"]
    tracks = [[{"x": p["x"] * scale, "y": p["y"] * scale} for p in t] for t in json.loads(text)]
    api[node["inputs"]["tracks"][0]]["inputs"]["value"] = json.dumps(tracks)
    set_inputs(api, {"WanTrackToVideo": dict(width=WIDTH, height=HEIGHT, length=5), "KSampler": dict(steps=3)})
    result = engine.run(api).raise_for_status()
    executed = {api[n]["class_type"] for n in result.executed}
    assert {"WanTrackToVideo", "CLIPVisionEncode", "KSampler", "SaveVideo"} <= executed
    assert saved_video_frames(engine.paths.output_dir) == 5


def test_visualize_tracks_draws_discs_and_trails():
    from nodegraph_nodes.dit.wan_tracks import Tracks
    from nodegraph_nodes.dit.wan_tracks_preview import COLOURS, draw_tracks

    # two tracks over 3 frames of one gray image (repeated): track 0 still at (10, 10); track 1 moving right along
    # y = 30, hidden on frame 1
    path = torch.tensor([[[10.0, 10.0], [5.0, 30.0]], [[10.0, 10.0], [20.0, 30.0]], [[10.0, 10.0], [35.0, 30.0]]])
    seen = torch.tensor([[True, True], [True, False], [True, True]])
    gray = torch.full((1, 48, 48, 3), 0.5)
    out = draw_tracks(gray, Tracks(path, seen), trail=24, radius=3, opacity=0.5, width=4)
    assert out.shape == (3, 48, 48, 3)
    base = float(int(0.5 * 255))
    alpha = int(255 * 0.5) / 255
    disc = [int(c * alpha + base * (1 - alpha)) / 255 for c in COLOURS[0]]
    assert torch.allclose(out[:, 10, 10], torch.tensor([disc] * 3), atol=1e-6)  # a still track: no trail
    assert torch.allclose(out[:, 10, 20], torch.full((3, 3), base / 255))  # off the tracks: the frame
    # track 1: its disc on frames 0 and 2, not on frame 1 (hidden); on frame 2 its trail runs back to x = 5
    assert torch.allclose(out[1, 30, 20], torch.full((3,), base / 255))
    assert not torch.allclose(out[2, 30, 35], torch.full((3,), base / 255))
    assert not torch.allclose(out[2, 30, 12], torch.full((3,), base / 255))  # the trail, away from both discs
    assert torch.allclose(out[0, 30, 12], torch.full((3,), base / 255))  # frame 0: no trail yet


def test_wan_track_to_video_batched_tracks(engine):
    """ATI's batched form: one list of tracks per batch entry, each drawn into its own entry's latent."""
    image = start_image(engine.paths.input_dir)
    cell = {(1, 2): (16 + 16 / 3, 16 - 16 / 3), (3, 0): (0.0, 32.0)}  # latent cell → pixel (grid points ±1/3, ±1)
    tracks = json.dumps([[[{"x": x, "y": y}] * 121] for x, y in cell.values()])
    g = Graph()
    clip = g.node("CLIPLoader", clip_name="tiny_umt5_xxl.safetensors", type="wan").out(0)
    vae = g.node("VAELoader", vae_name="tiny_wan_2.1_vae.safetensors").out(0)
    ati = g.node("WanTrackToVideo", "ati", positive=g.node("CLIPTextEncode", text="a fox", clip=clip),
                 negative=g.node("CLIPTextEncode", text="", clip=clip), vae=vae, tracks=tracks, width=WIDTH,
                 height=HEIGHT, length=5, batch_size=2, temperature=220.0, topk=2,
                 start_image=g.node("LoadImage", image=image).out(0))
    g.node("PreviewAny", source=ati.out(0))
    g.node("PreviewAny", source=ati.out(2))
    result = engine.run(g).raise_for_status()
    mask = result.value("ati", 0)[0][1]["concat_mask"]
    assert mask.shape == (2, 4, 2, 4, 4) and result.value("ati", 2)["samples"].shape == (2, 16, 2, 4, 4)
    for entry, (row, col) in enumerate(cell):
        expected = torch.ones(4, 4)
        expected[row, col] = 0.0
        assert torch.allclose(mask[entry, 0, 1], expected, atol=1e-6), entry
