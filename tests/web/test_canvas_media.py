"""Video and audio outputs previewed on the canvas in a real Chromium: SaveVideo's WebM plays on its node
(drawn frame by frame into the node) and in the gallery, PreviewAudio's FLAC gets a player bar that a click
plays."""

from __future__ import annotations

from fractions import Fraction

import torch

from nodegraph_nodes.media.codec import encode_audio, encode_video

from tests.web.test_canvas_run import done

# a solid colour, so the pixel drawn in the middle of the node's preview is known
RED = (0.9, 0.15, 0.1)


def write_inputs(input_dir) -> None:
    input_dir.mkdir(parents=True, exist_ok=True)
    frames = torch.tensor(RED).expand(12, 48, 64, 3).clone()
    encode_video(input_dir / "clip.webm", frames, Fraction(12), None, "webm", "vp9", None)
    t = torch.arange(16000) / 16000
    (input_dir / "voice.wav").write_bytes(encode_audio((0.3 * torch.sin(2 * torch.pi * 330 * t))[None], 16000,
                                                       "wav", None, None))


WORKFLOW = {
    "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.webm"}},
    "2": {"class_type": "SaveVideo", "inputs": {"video": ["1", 0], "filename_prefix": "web", "format": "webm",
                                                "codec": "vp9"}},
    "3": {"class_type": "LoadAudio", "inputs": {"audio": "voice.wav"}},
    "4": {"class_type": "PreviewAudio", "inputs": {"audio": ["3", 0]}},
}

# where nodes.js starts drawing below a node's sockets and widgets (its widgetBottom)
BELOW_WIDGETS = """(id) => {
  const node = window.app.node(id);
  const slots = Math.max(node.inputs ? node.inputs.length : 0, node.outputs ? node.outputs.length : 0);
  let bottom = slots * LiteGraph.NODE_SLOT_HEIGHT + 6;
  for (const w of node.widgets || []) {
    if (w.last_y === undefined) continue;
    const h = w.computeSize ? w.computeSize(node.size[0])[1] : LiteGraph.NODE_WIDGET_HEIGHT;
    bottom = Math.max(bottom, w.last_y + h + 6);
  }
  return bottom;
}"""

PIXEL_AT = """([id, lx, ly]) => {
  const node = window.app.node(id), ds = window.app.canvas.ds;
  window.app.canvas.draw(true, true);
  const [x, y] = ds.convertOffsetToCanvas([node.pos[0] + lx, node.pos[1] + ly]);
  const ratio = window.app.canvasEl.width / window.app.canvasEl.clientWidth;
  const data = window.app.canvasEl.getContext("2d").getImageData(Math.round(x * ratio), Math.round(y * ratio), 1, 1).data;
  return Array.from(data);
}"""


def test_video_and_audio_outputs_preview_on_their_nodes(server, open_page):
    write_inputs(server.config.paths.input_dir)
    page = open_page(server)
    page.load(WORKFLOW)
    page.page.click("#btn-queue")
    done(page)
    # the video: fetched through /view, decoded by the browser, playing, drawn into the SaveVideo node
    page.page.wait_for_function("(window.app.states.get('2')?.video?.readyState || 0) >= 2", timeout=20_000)
    url = page.js("() => window.app.states.get('2').videoUrl")
    assert "/view?" in url and "web_00001_.webm" in url and "type=output" in url
    assert page.js("() => [window.app.states.get('2').video.videoWidth, window.app.states.get('2').video.videoHeight]") \
        == [64, 48]
    page.page.wait_for_function("window.app.states.get('2').video.currentTime > 0", timeout=20_000)
    top = page.js(BELOW_WIDGETS, "2")
    width, height = page.js("(id) => window.app.node(id).size", "2")
    # 8 units into the drawn frame (fitted and centred as nodes.js draws it): the grown node's lower part
    # may lie under the PreviewAudio node
    avail = height - top - 4
    frame_h = 48 * min((width - 10) / 64, avail / 48)
    r, g, b, _ = page.js(PIXEL_AT, ["2", width / 2, top + (avail - frame_h) / 2 + 8])
    assert abs(r - 230) < 30 and g < 80 and b < 80, (r, g, b)
    # the gallery shows the video as a (playing) video, not as a broken image
    page.page.wait_for_function("(document.querySelector('#gallery-list video')?.readyState || 0) >= 1",
                                timeout=20_000)
    assert "web_00001_.webm" in page.js("() => document.querySelector('#gallery-list video').src")
    assert page.js("() => document.querySelectorAll('#gallery-list img').length") == 0
    # the audio: a player bar whose click plays the PreviewAudio file (a temp file, served with its type)
    page.page.wait_for_function("window.app.states.get('4')?.audio?.duration > 0", timeout=20_000)
    assert abs(page.js("() => window.app.states.get('4').audio.duration") - 1.0) < 0.05
    assert "type=temp" in page.js("() => window.app.states.get('4').audioUrl")
    assert page.js("() => window.app.states.get('4').audio.paused") is True
    x, y = page.client_point("4", (16, page.js(BELOW_WIDGETS, "4") + 2 + 14))  # the play mark
    page.page.mouse.click(x, y)
    page.page.wait_for_function("window.app.states.get('4').audio.paused === false", timeout=10_000)
    assert page.console_errors == []
