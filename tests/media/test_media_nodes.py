"""Video and audio nodes (nodes/media): round trips through real files written and read with PyAV,
animations opened with Pillow, every node run."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import pytest
import torch
from PIL import Image, ImageSequence

from nodegraph import Engine, OutputCache
from nodegraph.context import Paths
from nodegraph.registry import default_registry
from nodegraph_nodes.media import animated, audio_nodes as an, video_nodes as vn
from nodegraph_nodes.media.codec import encode_audio
from nodegraph_nodes.media.video import VideoFromFile

PROMPT = {"1": {"class_type": "CreateVideo", "inputs": {"fps": 8.0}}}
WORKFLOW = {"workflow": {"nodes": [], "links": []}}


def frames(n: int = 12, h: int = 48, w: int = 64) -> torch.Tensor:
    """Smooth moving gradients (they survive lossy codecs)."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    return torch.stack([torch.stack([x, y, torch.full((h, w), i / n)], -1) for i in range(n)])


def tone(seconds: float, rate: int, channels: int = 2) -> dict:
    t = torch.arange(int(seconds * rate)) / rate
    wave = torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * (c + 1) * t) for c in range(channels)])
    return {"waveform": wave.unsqueeze(0), "sample_rate": rate}


def saved(paths: Paths, ui_file: dict) -> Path:
    folder = {"output": paths.output_dir, "temp": paths.temp_dir}[ui_file["type"]]
    return folder / ui_file["subfolder"] / ui_file["filename"]


@pytest.mark.parametrize("format,codec", [("mp4", "h264"), ("webm", "auto"), ("webm", "vp9"), ("auto", "auto")])
def test_video_round_trip(make, paths, format, codec):
    images = frames(12)
    video = make(vn.CreateVideo).execute(images, 8.0, tone(1.5, 44100))[0]
    result = make(vn.SaveVideo).execute(video, "video/clip", format, codec, prompt=PROMPT, extra_pnginfo=WORKFLOW)
    assert result.ui["animated"] == [True] and result.outputs == (video,)
    entry = result.ui["images"][0]
    assert entry["subfolder"] == "video" and entry["type"] == "output"
    path = saved(paths, entry)
    assert path.suffix == (".webm" if format == "webm" else ".mp4")
    with av.open(str(path)) as container:
        stream_codec = container.streams.video[0].codec_context.codec.canonical_name
        tags = {k.lower(): v for k, v in container.metadata.items()}
    assert stream_codec == {"h264": "h264", "vp9": "vp9"}.get(codec, "av1" if format == "webm" else "h264")
    assert json.loads(tags["prompt"]) == PROMPT and json.loads(tags["workflow"]) == WORKFLOW["workflow"]

    (paths.input_dir / path.name).write_bytes(path.read_bytes())
    assert path.name in vn.list_input_videos(paths)
    loaded = make(vn.LoadVideo).execute(path.name)[0]
    assert loaded.get_dimensions() == (64, 48) and loaded.get_frame_count() == 12
    got, audio, fps, bit_depth, space = make(vn.GetVideoComponents).execute(loaded)
    assert got.shape == (12, 48, 64, 3) and fps == 8.0 and (bit_depth, space) == (8, "sRGB")
    assert (got - images).abs().mean() < 0.03
    assert audio["waveform"].shape[:2] == (1, 2)
    rate = audio["sample_rate"]
    assert rate == (48000 if path.suffix == ".webm" else 44100)  # Opus in WebM runs at 48 kHz
    assert audio["waveform"].shape[-1] == round(1.5 * rate)  # 12 frames at 8 fps


def test_video_slice_on_file_and_components(make, paths):
    images = frames(16)
    video = make(vn.CreateVideo).execute(images, 8.0, tone(2.0, 16000, 1))[0]
    sliced = make(vn.VideoSlice).execute(video, 0.5, 1.0, False)[0]
    parts = sliced.get_components()
    assert torch.equal(parts.images, images[4:12]) and parts.audio["waveform"].shape[-1] == 16000
    tail = make(vn.VideoSlice).execute(video, -0.5, 0.0, False)[0]
    assert torch.equal(tail.get_components().images, images[12:])
    with pytest.raises(ValueError, match="Video Slice: failed to slice"):
        make(vn.VideoSlice).execute(video, 1.5, 2.0, True)
    with pytest.raises(ValueError, match="Video Slice"):
        make(vn.VideoSlice).execute(video, 3.0, 0.0, False)

    entry = make(vn.SaveVideo).execute(video, "clip", "mp4", "h264").ui["images"][0]
    from_file = VideoFromFile(saved(paths, entry))
    window = make(vn.VideoSlice).execute(from_file, 0.5, 1.0, False)[0]
    assert isinstance(window, VideoFromFile) and window.get_frame_count() == 8
    got = window.get_components()
    assert got.images.shape[0] == 8 and (got.images - images[4:12]).abs().mean() < 0.03
    assert got.audio["waveform"].shape[-1] == 16000


def test_save_webm_and_errors(make, paths):
    images = frames(6)
    result = make(vn.SaveWEBM).execute(images, "anim", "vp9", 12.0, 32.0, prompt=PROMPT)
    assert result.outputs == (images,) and result.ui["animated"] == [True]
    path = saved(paths, result.ui["images"][0])
    assert path.name == "anim_00001_.webm"
    loaded = VideoFromFile(path)
    assert loaded.get_frame_count() == 6 and loaded.get_frame_rate() == 12
    odd = make(vn.CreateVideo).execute(frames(2, 9, 16), 8.0)[0]
    with pytest.raises(ValueError, match="SaveVideo: .*even width and height"):
        make(vn.SaveVideo).execute(odd, "odd", "mp4", "h264")
    with pytest.raises(ValueError, match="SaveVideo: codec 'h264' cannot go into webm"):
        make(vn.SaveVideo).execute(odd, "odd", "webm", "h264")
    with pytest.raises(ValueError, match="CreateVideo: input 'bit_depth'"):
        make(vn.CreateVideo).execute(images, 8.0, None, 10)
    assert vn.CreateVideo.validate_inputs(8) is True and vn.CreateVideo.validate_inputs("12") is not True
    assert not list(paths.output_dir.glob("odd*"))  # a failed save leaves no file
    assert vn.LoadVideo.validate_inputs("../x.mp4", paths).startswith("Invalid video file")


@pytest.mark.parametrize("node,extension,frames_kind", [(animated.SaveAnimatedWEBP, "webp", "WEBP"),
                                                        (animated.SaveAnimatedPNG, "png", "PNG")])
def test_animations_open_in_pillow(make, paths, node, extension, frames_kind):
    images = frames(5)
    result = make(node).execute(images, "anim", 10.0, prompt=PROMPT, extra_pnginfo=WORKFLOW)
    assert result.ui["animated"] == [True]
    path = saved(paths, result.ui["images"][0])
    assert path.name == f"anim_00001_.{extension}"
    with Image.open(path) as img:
        assert img.format == frames_kind and img.n_frames == 5 and img.size == (64, 48)
        durations = []
        for frame in ImageSequence.Iterator(img):
            frame.load()
            durations.append(frame.info.get("duration"))
        assert durations == [100] * 5
        if extension == "webp":
            exif = img.getexif()
            assert json.loads(exif[0x0110].split(":", 1)[1]) == PROMPT
            assert json.loads(exif[0x010F].split(":", 1)[1]) == WORKFLOW["workflow"]
        frame_count = sum(1 for _ in ImageSequence.Iterator(img))
    assert frame_count == 5
    if extension == "png":
        data = path.read_bytes()
        assert b"comf" + b"prompt\0" + json.dumps(PROMPT).encode() in data
    single = make(node).execute(images[:1], "one", 10.0)
    assert single.ui["animated"] == ([False] if extension == "webp" else [True])


@pytest.mark.parametrize("node,quality,extension,rate", [
    (an.SaveAudio, None, "flac", 44100), (an.SaveAudioMP3, "V0", "mp3", 44100),
    (an.SaveAudioMP3, "128k", "mp3", 32000), (an.SaveAudioOpus, "96k", "opus", 48000)])
def test_audio_round_trip(make, paths, node, quality, extension, rate):
    audio = tone(1.25, rate)
    audio["waveform"] = torch.cat([audio["waveform"], audio["waveform"] * 0.5])  # a batch of two
    args = (audio, "audio/take") if quality is None else (audio, "audio/take", quality)
    result = make(node).execute(*args, prompt=PROMPT, extra_pnginfo=WORKFLOW)
    files = result.ui["audio"]
    assert [f["filename"] for f in files] == [f"take_00001_.{extension}", f"take_00002_.{extension}"]
    for entry, expected in zip(files, audio["waveform"]):
        path = saved(paths, entry)
        with av.open(str(path)) as container:
            # Ogg keeps the tags on the stream (Vorbis comments)
            tags = {**container.metadata, **container.streams.audio[0].metadata}
            assert json.loads({k.lower(): v for k, v in tags.items()}["prompt"]) == PROMPT
        (paths.input_dir / path.name).write_bytes(path.read_bytes())
        loaded = make(an.LoadAudio).execute(path.name)[0]
        assert loaded["sample_rate"] == rate and loaded["waveform"].shape == (1, 2, expected.shape[-1])
        if extension == "flac":
            assert (loaded["waveform"][0] - expected).abs().max() < 1e-4


def test_wav_loads_and_opus_resamples(make, paths):
    wave = tone(0.5, 22050, 1)["waveform"][0]
    (paths.input_dir / "a.wav").write_bytes(encode_audio(wave, 22050, "wav", None, None))
    assert "a.wav" in an.list_input_audio(paths)
    loaded = make(an.LoadAudio).execute("a.wav")[0]
    assert loaded["sample_rate"] == 22050 and loaded["waveform"].shape == (1, 1, 11025)
    assert (loaded["waveform"][0] - wave).abs().max() < 1e-4
    entry = make(an.SaveAudioOpus).execute({"waveform": wave[None], "sample_rate": 22050}, "o", "64k").ui["audio"][0]
    again = make(an.LoadAudio).execute(entry["filename"] + " [output]")[0]  # annotated: the output folder
    assert again["sample_rate"] == 48000 and abs(again["waveform"].shape[-1] - 24000) <= 1


def test_save_audio_advanced_preview_and_trim(make, paths):
    audio = tone(2.0, 16000, 1)
    node = make(an.SaveAudioAdvanced)
    result = node.execute(audio, "adv", "mp3", **{"format.quality": "320k"})
    assert result.outputs == (audio,) and result.ui["audio"][0]["filename"] == "adv_00001_.mp3"
    assert node.execute(audio, "adv", "flac").ui["audio"][0]["filename"] == "adv_00002_.flac"
    assert node.execute(audio, "adv", "opus").ui["audio"][0]["filename"] == "adv_00003_.opus"
    with pytest.raises(ValueError, match="'format.quality' is 'V0', which opus does not offer"):
        node.execute(audio, "adv", "opus", **{"format.quality": "V0"})

    preview = make(an.PreviewAudio).execute(audio, prompt=PROMPT).ui["audio"][0]
    assert preview["type"] == "temp" and "_temp_" in preview["filename"]
    assert saved(paths, preview).is_file()

    trim = make(an.TrimAudioDuration)
    cut = trim.execute(audio, 0.5, 1.0)[0]
    assert torch.equal(cut["waveform"], audio["waveform"][..., 8000:24000]) and cut["sample_rate"] == 16000
    tail = trim.execute(audio, -0.25, 60.0)[0]
    assert tail["waveform"].shape[-1] == 4000
    with pytest.raises(ValueError, match="TrimAudioDuration"):
        trim.execute(audio, 0.5, 0.0)
    with pytest.raises(ValueError, match="SaveAudio: input 'audio'"):
        make(an.SaveAudio).execute({"waveform": torch.zeros(2, 10), "sample_rate": 16000})


def test_workflow_through_the_engine(paths):
    """LoadVideo → Video Slice → GetVideoComponents → CreateVideo → SaveVideo, plus audio and animation
    nodes, as one API prompt: outputs reported as ComfyUI reports them."""
    source = make_source(paths)
    engine = Engine(default_registry(packs=False), paths=paths, device="cpu", threads=1,
                    cache=OutputCache(ram_budget=256 << 20))
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": source.name}},
        "2": {"class_type": "Video Slice", "inputs": {"video": ["1", 0], "start_time": 0.25, "duration": 1.0,
                                                      "strict_duration": True}},
        "3": {"class_type": "GetVideoComponents", "inputs": {"video": ["2", 0]}},
        "4": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": ["3", 2], "audio": ["3", 1],
                                                      "bit_depth": 8}},  # a number, as ComfyUI's canvas stores it
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "video/ComfyUI",
                                                    "format": "auto", "codec": "auto"}},
        "6": {"class_type": "PreviewAudio", "inputs": {"audio": ["3", 1]}},
        "7": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["3", 0], "filename_prefix": "ComfyUI",
                                                           "fps": 6.0, "lossless": True, "quality": 80,
                                                           "method": "default"}},
        "8": {"class_type": "TrimAudioDuration", "inputs": {"audio": ["3", 1], "start_index": 0.0, "duration": 0.5}},
        "9": {"class_type": "SaveAudioAdvanced", "inputs": {"audio": ["8", 0], "filename_prefix": "audio/ComfyUI",
                                                            "format": "mp3", "format.quality": "V0"}},
    }
    result = engine.run(prompt)
    assert result.ok, result.failure
    assert result.outputs["5"]["animated"] == [True]
    assert result.outputs["5"]["images"][0]["filename"] == "ComfyUI_00001_.mp4"
    assert result.outputs["6"]["audio"][0]["type"] == "temp"
    assert result.outputs["7"]["animated"] == [True]
    assert result.outputs["9"]["audio"][0]["filename"] == "ComfyUI_00001_.mp3"
    again = VideoFromFile(paths.output_dir / "video" / "ComfyUI_00001_.mp4")
    assert again.get_frame_count() == 8 and again.get_components().audio["waveform"].shape[-1] == 22050


def make_source(paths: Paths) -> Path:
    from nodegraph_nodes.media.codec import encode_video

    path = paths.input_dir / "source.mp4"
    audio = tone(2.0, 22050)
    encode_video(path, frames(16), Fraction(8), (audio["waveform"][0], 22050), "mp4", "h264", None)
    return path


def test_save_video_layouts(make, paths):
    """SaveVideo's canvas layouts in ComfyUI's templates convert (the older flat codec, and today's codec
    nested under the format); the nested codec and its crf reach the encoder."""
    from nodegraph.workflow.ui_format import map_widget_values

    old = map_widget_values(vn.SaveVideo, ["video/ComfyUI", "webm", "vp9"])
    assert old["format"] == "webm" and old["format.codec"] == "vp9" and old["codec"] == "auto"
    new = map_widget_values(vn.SaveVideo, ["video/ComfyUI", "mp4", "h264", "re-encode", 30, "auto"])
    assert (new["format.codec"], new["format.codec.encoding"], new["format.codec.encoding.crf"]) == \
        ("h264", "re-encode", 30)
    assert map_widget_values(vn.SaveVideo, ["video/ComfyUI", "auto", "auto", "auto"])["codec"] == "auto"

    video = make(vn.CreateVideo).execute(frames(4), 8.0)[0]
    node = make(vn.SaveVideo)
    sizes = []
    for crf in (10.0, 50.0):
        entry = node.execute(video, "crf", "mp4", "auto", **{"format.codec": "h264", "format.codec.encoding":
                                                            "re-encode", "format.codec.encoding.crf": crf}).ui
        sizes.append(saved(paths, entry["images"][0]).stat().st_size)
    assert sizes[0] > sizes[1]  # the crf reached the encoder
    entry = node.execute(video, "nested", "auto", "h264", **{"format.codec": "vp9"}).ui["images"][0]
    assert entry["filename"].endswith(".webm")  # the nested codec wins over the flat one
