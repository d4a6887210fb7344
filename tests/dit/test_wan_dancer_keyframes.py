"""WanDancerPadKeyframes / WanDancerPadKeyframesList (nodes/dit/wan_dancer_keyframes.py): the global video's frames
spread over the local segments as the official Wan-Dancer ``gen_video_local.py`` places them (worked by hand
below), the masks, the audio slices, and the List node's lists."""

from __future__ import annotations

import pytest
import torch

from nodegraph_nodes.dit.wan_dancer_keyframes import (WanDancerPadKeyframes, WanDancerPadKeyframesList,
                                                      audio_segments, plan_segment)


def _images(n: int, h: int = 4, w: int = 6) -> torch.Tensor:
    """Frame ``i`` filled with ``(i + 1) / 10`` so that each placed frame names itself."""
    return (torch.arange(1, n + 1, dtype=torch.float32) / 10).view(n, 1, 1, 1).expand(n, h, w, 3).clone()


def _audio(seconds: float, rate: int = 100) -> dict:
    n = int(round(seconds * rate))
    return {"waveform": torch.arange(n, dtype=torch.float32).view(1, 1, n).expand(1, 2, n).clone(), "sample_rate": rate}


def test_segments_counted_from_the_audio():
    # 0.2 s are left off the end, one segment per started L/30 s after that
    assert audio_segments(0.2, 10) == 0
    assert audio_segments(0.5, 10) == 1
    assert audio_segments(1.0, 10) == 3  # (1.0 - 0.2) / (1/3) = 2.4
    assert audio_segments(5.0, 149) == 1  # the template's 5 s: one 149-frame segment
    assert audio_segments(10.0, 149) == 2


def test_seven_frames_over_three_segments():
    # total 30, interval 30/7 ≈ 4.29: in each 10-frame segment frames at 0, ceil(4.29) = 5, and the end 9, which
    # is the next segment's first keyframe (the official script copies it there)
    plans = [plan_segment(7, 30, 10, k).placements for k in range(3)]
    assert plans == [((0, 0), (5, 1), (9, 2)), ((0, 2), (5, 3), (9, 4)), ((0, 4), (5, 5), (9, 6))]
    assert plan_segment(7, 30, 10, 3).placements == ((0, 6),)  # past the audio: only the last frame is left
    assert plan_segment(0, 30, 10, 0).placements == ()


def test_the_last_segment_ends_at_the_last_output_frame():
    # total 25 frames in segments of 10: the third segment holds 5; 5 images → interval 5 (c · 5 < 9 - 5: c = 0)
    assert plan_segment(5, 25, 10, 0).placements == ((0, 0), (9, 1))
    assert plan_segment(5, 25, 10, 2).placements == ((4, 2),)


def test_pad_keyframes_node():
    images = _images(7)
    frames, mask, clip = WanDancerPadKeyframes(None).execute(images, 10, 1, _audio(1.0))
    assert frames.shape == (10, 4, 6, 3) and mask.shape == (10, 4, 6)
    assert torch.equal(mask[:, 0, 0], torch.tensor([1., 0, 0, 0, 0, 1, 0, 0, 0, 1]))
    assert frames[[0, 5, 9], 0, 0, 0].tolist() == pytest.approx([0.3, 0.4, 0.5])
    assert frames[1].abs().sum() == 0  # padded frames are black
    # segment 1 of 10 frames at 30 fps: 1/3 s … 2/3 s of a 100 Hz track
    assert clip["sample_rate"] == 100 and clip["waveform"].shape == (1, 2, 33)
    assert clip["waveform"][0, 0, 0] == 33


def test_the_last_audio_slice_stops_at_the_end():
    _, _, clip = WanDancerPadKeyframes(None).execute(_images(7), 10, 2, _audio(0.8))
    assert clip["waveform"].shape[-1] == 80 - 66


def test_list_node_emits_one_item_per_segment():
    node = WanDancerPadKeyframesList(None)
    frames, masks, clips = node.execute(_images(7), 10, 3, _audio(1.0))
    assert len(frames) == len(masks) == len(clips) == 3
    for k, (f, m) in enumerate(zip(frames, masks)):
        single = WanDancerPadKeyframes(None).execute(_images(7), 10, k, _audio(1.0))
        assert torch.equal(f, single[0]) and torch.equal(m, single[1])
    # without audio the segments asked for are the whole video
    frames, masks, clips = node.execute(_images(7), 10, 3)
    assert clips == [None, None, None]
    assert [int(m[:, 0, 0].sum()) for m in masks] == [3, 3, 3]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="WanDancerPadKeyframesList.images"):
        WanDancerPadKeyframesList(None).execute(torch.zeros(3, 4), 10, 1)
    with pytest.raises(TypeError, match="WanDancerPadKeyframes: input 'audio'"):
        WanDancerPadKeyframes(None).execute(_images(2), 10, 0, {"x": 1})
