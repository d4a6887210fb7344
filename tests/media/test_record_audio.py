"""RecordAudio: the ``AUDIO_RECORD`` spec the official frontend's recorder keys on, and loading the clip it
uploads (``audio/recording-<time>.wav [temp]``) or any audio file in the input folder."""

from __future__ import annotations

import pytest
import torch

from nodegraph import Engine, OutputCache
from nodegraph.errors import ValidationFailed
from nodegraph.registry import default_registry
from nodegraph_nodes.media import record_audio as ra
from nodegraph_nodes.media.codec import encode_audio


def wave(seconds: float, rate: int, channels: int) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return torch.stack([0.25 * torch.sin(2 * torch.pi * 220 * (c + 1) * t) for c in range(channels)])


def test_spec_is_comfyuis():
    info = default_registry(packs=False).object_info("RecordAudio")["RecordAudio"]
    assert info["input"]["required"] == {"audio": ["AUDIO_RECORD", {
        "tooltip": "The recording's file name, e.g. 'audio/recording-1.wav [temp]'."}]}
    assert info["output"] == ["AUDIO"] and info["category"] == "audio"
    assert "cannot record" in info["description"]


def test_loads_the_uploaded_recording_and_input_files(make, paths):
    recorded = wave(0.75, 48000, 1)
    (paths.temp_dir / "audio").mkdir(parents=True)
    (paths.temp_dir / "audio" / "recording-1.wav").write_bytes(encode_audio(recorded, 48000, "wav", None, None))
    got = make(ra.RecordAudio).execute("audio/recording-1.wav [temp]")[0]
    assert got["sample_rate"] == 48000 and got["waveform"].shape == (1, 1, 36000)
    assert (got["waveform"][0] - recorded).abs().max() < 1e-4

    stereo = wave(0.5, 22050, 2)
    (paths.input_dir / "take.flac").write_bytes(encode_audio(stereo, 22050, "flac", None, None))
    got = make(ra.RecordAudio).execute("take.flac")[0]
    assert got["sample_rate"] == 22050 and got["waveform"].shape == (1, 2, 11025)
    assert (got["waveform"][0] - stereo).abs().max() < 1e-4


def test_errors_name_the_node_and_input(make, paths):
    node = make(ra.RecordAudio)
    with pytest.raises(FileNotFoundError, match="RecordAudio: input 'audio': 'audio/none.wav \\[temp\\]' does not"):
        node.execute("audio/none.wav [temp]")
    with pytest.raises(ValueError, match="RecordAudio: input 'audio'.*"):
        node.execute("../../etc/passwd")
    with pytest.raises(ValueError, match="RecordAudio: input 'audio' is empty"):
        node.execute("")
    (paths.input_dir / "notes.wav").write_bytes(b"this is not audio at all" * 20)
    with pytest.raises(ValueError, match="RecordAudio: input 'audio'"):
        node.execute("notes.wav")
    assert "does not exist" in ra.RecordAudio.validate_inputs("gone.wav", paths)
    assert ra.RecordAudio.validate_inputs("notes.wav", paths) is True


def test_api_prompt_with_the_recorded_name(paths):
    """The frontend's value is a constant in the API prompt; validation takes it and the run saves it."""
    (paths.temp_dir / "audio").mkdir(parents=True)
    (paths.temp_dir / "audio" / "recording-2.wav").write_bytes(
        encode_audio(wave(0.5, 16000, 1), 16000, "wav", None, None))
    engine = Engine(default_registry(packs=False), paths=paths, device="cpu", threads=1,
                    cache=OutputCache(ram_budget=64 << 20))
    try:
        prompt = {"1": {"class_type": "RecordAudio", "inputs": {"audio": "audio/recording-2.wav [temp]"}},
                  "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "rec"}}}
        result = engine.run(prompt)
        assert result.ok, result.failure
        assert result.outputs["2"]["audio"][0]["filename"] == "rec_00001_.flac"
        with pytest.raises(ValidationFailed, match="RecordAudio: input 'audio': 'gone.wav' does not exist"):
            engine.run({**prompt, "1": {"class_type": "RecordAudio", "inputs": {"audio": "gone.wav"}}})
    finally:
        engine.close()


def test_ui_workflow_as_the_frontend_saves_it():
    """The official frontend saves the recorder's name and its player's (empty) value in widgets_values."""
    from nodegraph.workflow.ui_format import ui_to_api

    workflow = {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "nodes": [
        {"id": 1, "type": "RecordAudio", "mode": 0, "inputs": [],
         "outputs": [{"name": "AUDIO", "type": "AUDIO", "links": [1]}],
         "widgets_values": ["audio/recording-1.wav [temp]", ""]},
        {"id": 2, "type": "SaveAudio", "mode": 0, "inputs": [{"name": "audio", "type": "AUDIO", "link": 1}],
         "outputs": [], "widgets_values": ["audio/ComfyUI"]}],
        "links": [[1, 1, 0, 2, 0, "AUDIO"]]}
    prompt = ui_to_api(workflow, default_registry(packs=False))
    assert prompt["1"]["inputs"] == {"audio": "audio/recording-1.wav [temp]"}
    assert prompt["2"]["inputs"]["audio"] == ["1", 0]
