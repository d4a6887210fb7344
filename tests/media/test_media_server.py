"""Video and audio outputs through a real server: history and /jobs report them as ComfyUI does, and /view
serves them with their media types and HTTP range requests (206, Content-Range, Accept-Ranges)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from nodegraph_nodes.media.codec import encode_audio, encode_video


def write_inputs(input_dir) -> None:
    input_dir.mkdir(parents=True, exist_ok=True)
    h, w, n = 32, 48, 8
    ramp = torch.linspace(0, 1, w)[None, :, None].expand(h, w, 3)
    frames = torch.stack([ramp * (i + 1) / n for i in range(n)])
    t = torch.arange(16000) / 16000
    wave = (0.3 * torch.sin(2 * torch.pi * 330 * t))[None]
    encode_video(input_dir / "clip.mp4", frames, Fraction(8), (wave, 16000), "mp4", "h264", None)
    (input_dir / "voice.wav").write_bytes(encode_audio(wave, 16000, "wav", None, None))


PROMPT = {
    "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}},
    "2": {"class_type": "SaveVideo", "inputs": {"video": ["1", 0], "filename_prefix": "video/ComfyUI",
                                                "format": "auto", "codec": "auto"}},
    "3": {"class_type": "LoadAudio", "inputs": {"audio": "voice.wav"}},
    "4": {"class_type": "SaveAudio", "inputs": {"audio": ["3", 0], "filename_prefix": "audio/ComfyUI"}},
    "5": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
    "6": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["5", 0], "filename_prefix": "ComfyUI",
                                                      "fps": 8.0, "compress_level": 1}},
}


def test_outputs_reported_and_served_with_ranges(server):
    write_inputs(server.config.paths.input_dir)
    client = server.client()
    prompt_id = client.queue(PROMPT)["prompt_id"]
    entry = client.wait_history(prompt_id, timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    assert outputs["2"] == {"images": [{"filename": "ComfyUI_00001_.mp4", "subfolder": "video", "type": "output"}],
                            "animated": [True]}
    assert outputs["4"] == {"audio": [{"filename": "ComfyUI_00001_.flac", "subfolder": "audio", "type": "output"}]}
    assert outputs["6"]["animated"] == [True] and outputs["6"]["images"][0]["filename"].endswith(".png")

    jobs = client.get("/api/jobs").json()
    job = next(j for j in jobs["jobs"] if j["id"] == prompt_id)
    assert job["outputs_count"] == 3 and job["previewable_outputs_count"] == 3

    for query, ctype in (({"filename": "ComfyUI_00001_.mp4", "subfolder": "video"}, "video/mp4"),
                         ({"filename": "ComfyUI_00001_.flac", "subfolder": "audio"}, "audio/flac")):
        full = client.get("/view", query={**query, "type": "output"})
        assert full.status == 200 and full.headers["content-type"] == ctype
        assert full.headers.get("accept-ranges") == "bytes"
        size = len(full.body)
        assert size > 200
        part = client.get("/view", query={**query, "type": "output"}, headers={"Range": "bytes=100-199"})
        assert part.status == 206 and part.body == full.body[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{size}"
        assert part.headers["content-type"] == ctype
        tail = client.get("/view", query={**query, "type": "output"}, headers={"Range": "bytes=-50"})
        assert tail.status == 206 and tail.body == full.body[-50:]
        open_ended = client.get("/view", query={**query, "type": "output"}, headers={"Range": f"bytes={size - 10}-"})
        assert open_ended.status == 206 and open_ended.body == full.body[-10:]
        beyond = client.get("/view", query={**query, "type": "output"}, headers={"Range": f"bytes={size + 5}-"})
        assert beyond.status == 416
    # the table, not the system's mime.types (which says audio/x-wav here)
    wav = client.get("/view", query={"filename": "voice.wav", "type": "input"}, headers={"Range": "bytes=0-43"})
    assert wav.status == 206 and wav.headers["content-type"] == "audio/wav" and wav.body[:4] == b"RIFF"


def test_video_and_audio_uploads(server, tmp_path):
    """LoadVideo's and LoadAudio's upload buttons post to /upload/image: media files are checked by PyAV."""
    from tests.helpers.http_client import multipart

    write_inputs(tmp_path)
    client = server.client()
    for name in ("clip.mp4", "voice.wav"):
        body, headers = multipart({"type": "input"}, f"up-{name}", (tmp_path / name).read_bytes())
        reply = client.request("POST", "/upload/image", body, headers)
        assert reply.status == 200, reply.body
        assert reply.json() == {"name": f"up-{name}", "subfolder": "", "type": "input"}
        assert (server.config.paths.input_dir / f"up-{name}").read_bytes() == (tmp_path / name).read_bytes()
    body, headers = multipart({"type": "input"}, "fake.mp4", b"not a video at all" * 10)
    reply = client.request("POST", "/upload/image", body, headers)
    assert reply.status == 400 and "not a readable video or audio file" in reply.body.decode()
    assert not (server.config.paths.input_dir / "fake.mp4").exists()
    choices = client.get("/object_info/LoadVideo").json()["LoadVideo"]["input"]["required"]["file"]
    assert choices[0] == ["up-clip.mp4"] and choices[1]["video_upload"] is True
    audio = client.get("/object_info/LoadAudio").json()["LoadAudio"]["input"]["required"]["audio"]
    assert audio[0] == ["up-clip.mp4", "up-voice.wav"] and audio[1]["audio_upload"] is True
