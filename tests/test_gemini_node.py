"""GeminiNodeV2 and its Comfy.org client (nodes/api) against a real aiohttp server on 127.0.0.1 standing in
for api.comfy.org's proxy: the exact request (path, auth headers, generateContent body, inline media parts),
the answer's text, ComfyUI's error statuses, malformed answers, retries, redirects, interruption, and the
credential checks made before any network I/O. No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp import web
from PIL import Image

from nodegraph import Engine, OutputCache
from nodegraph.builder import Graph
from nodegraph.context import NodeContext, Paths, RunContext
from nodegraph.errors import Interrupted, ValidationFailed
from nodegraph.events import EventBus
from nodegraph.registry import default_registry
from nodegraph_nodes.api.comfy_org import (BASE_URL_ENV, ApiNodeError, ComfyOrgClient, ComfyOrgSettings,
                                           Credentials, checked_base_url)
from nodegraph_nodes.api.gemini_nodes import GeminiNodeV2

TOKEN = "tok-3f9a1c-secret"
KEY = "comfyui-key-77e2-secret"
SYSTEM = "You are a music architect."


def answer(*texts: str, finish: str = "STOP") -> dict:
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": t} for t in texts]},
                            "finishReason": finish}],
            "modelVersion": "gemini-3.7-flash", "usageMetadata": {"promptTokenCount": 5}}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: answer("blues, slide guitar\n---\n[verse]\nHello"))
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def bytes(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


class StandIn:
    """The proxy's stand-in: records every request and answers with the queued replies (then the default)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: list[Reply] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.method, request.path, dict(request.headers), await request.read()))
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, body=reply.bytes(), headers=reply.headers,
                            content_type=None if "Content-Type" in reply.headers else "application/json")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    server = StandIn()
    yield server
    server.close()


@pytest.fixture
def engine(proxy, tmp_path):
    paths = Paths.under(tmp_path)
    for folder in (paths.input_dir, paths.output_dir, paths.temp_dir):
        folder.mkdir(parents=True)
    eng = Engine(default_registry(packs=False), paths=paths, device="cpu", threads=1,
                 cache=OutputCache(ram_budget=64 << 20),
                 services={"comfy_org": ComfyOrgSettings(base_url=proxy.url, timeout=30, retry_delay=0.0)})
    yield eng
    eng.close()


def gemini_graph(model: str = "Gemini 3.7 Flash", prompt: str = "A blues song", seed: int = 42,
                 system_prompt: str = SYSTEM, **fields: Any) -> Graph:
    g = Graph()
    options = {"model.thinking_level": "MEDIUM", "model.temperature": 0.7, "model.top_p": 0.9,
               "model.max_output_tokens": 2048, **fields}
    g.node("GeminiNodeV2", "gem", prompt=prompt, model=model, seed=seed, system_prompt=system_prompt, **options)
    g.node("PreviewAny", "show", source=g.lookup("gem").out(0))
    return g


def run_text(engine: Engine, graph: Graph, extra: dict | None = None) -> str:
    extra = {"auth_token_comfy_org": TOKEN} if extra is None else extra
    return engine.run(graph, extra_data=extra).raise_for_status().value("gem")


def failure_of(engine: Engine, graph: Graph, extra: dict | None = None) -> str:
    extra = {"auth_token_comfy_org": TOKEN} if extra is None else extra
    result = engine.run(graph, extra_data=extra)
    assert result.failure is not None, "the node should have failed"
    return result.failure.exception_message


# -- the request ----------------------------------------------------------------------------------


def test_text_request_is_generate_content_on_the_proxy_path_with_the_token(engine, proxy):
    assert run_text(engine, gemini_graph()) == "blues, slide guitar\n---\n[verse]\nHello"
    [req] = proxy.received
    assert (req.method, req.path) == ("POST", "/proxy/vertexai/gemini/gemini-3.7-flash")
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "X-API-KEY" not in req.headers
    assert req.headers["Content-Type"] == "application/json"
    assert len(req.headers["Idempotency-Key"]) == 32
    assert req.json() == {
        "contents": [{"role": "user", "parts": [{"text": "A blues song"}]}],
        "generationConfig": {"temperature": 0.7, "topP": 0.9, "maxOutputTokens": 2048, "seed": 42,
                             "thinkingConfig": {"thinkingLevel": "MEDIUM"}},
        "systemInstruction": {"parts": [{"text": SYSTEM}]},
    }


def test_api_key_goes_in_x_api_key_and_the_token_wins_when_both_are_given(engine, proxy):
    run_text(engine, gemini_graph(), {"api_key_comfy_org": KEY})
    run_text(engine, gemini_graph(seed=43), {"api_key_comfy_org": KEY, "auth_token_comfy_org": TOKEN})
    first, second = proxy.received
    assert first.headers["X-API-KEY"] == KEY and "Authorization" not in first.headers
    assert second.headers["Authorization"] == f"Bearer {TOKEN}" and "X-API-KEY" not in second.headers


def test_flash_38_sends_no_sampling_controls_and_seed_0_and_no_system_prompt_are_left_out(engine, proxy):
    run_text(engine, gemini_graph("Gemini 3.8 Flash", seed=0, system_prompt="", **{"model.thinking_level": "HIGH"}))
    body = proxy.received[0].json()
    assert proxy.received[0].path == "/proxy/vertexai/gemini/gemini-3.8-flash"
    assert body == {"contents": [{"role": "user", "parts": [{"text": "A blues song"}]}],
                    "generationConfig": {"maxOutputTokens": 2048, "thinkingConfig": {"thinkingLevel": "HIGH"}}}


@pytest.mark.parametrize("label,model_id", [("Gemini 3.5 Flash", "gemini-3.5-flash"),
                                            ("Gemini 3.1 Pro", "gemini-3.1-pro-preview"),
                                            ("Gemini 3.1 Flash-Lite", "gemini-3.1-flash-lite-preview")])
def test_each_model_choice_posts_to_its_model_id(engine, proxy, label, model_id):
    run_text(engine, gemini_graph(label, **{"model.thinking_level": "LOW"}))
    assert proxy.received[0].path == f"/proxy/vertexai/gemini/{model_id}"


def direct_node(proxy: StandIn, tmp_path, cls=GeminiNodeV2, extra: dict | None = None):
    """A node instance on a run context whose settings point at the stand-in (no engine)."""
    paths = Paths.under(tmp_path)
    paths.input_dir.mkdir(parents=True, exist_ok=True)
    run = RunContext(prompt_id="p", bus=EventBus(), interrupt=threading.Event(), paths=paths,
                     services={"comfy_org": ComfyOrgSettings(base_url=proxy.url, retry_delay=0.0)},
                     extra_data={"api_key_comfy_org": KEY} if extra is None else extra)
    return cls(NodeContext(run, "9", cls.__name__))


def test_media_are_sent_inline_video_audio_images_then_files(proxy, tmp_path):
    from nodegraph_nodes.api.gemini_nodes import GeminiInputFiles
    from nodegraph_nodes.media.audio import make_audio
    from nodegraph_nodes.media.video import VideoComponents, VideoFromComponents

    node = direct_node(proxy, tmp_path)
    (node.ctx.paths.input_dir / "notes.txt").write_bytes(b"tempo 92, key of E")
    (node.ctx.paths.input_dir / "score.pdf").write_bytes(b"%PDF-1.4 tiny")
    files_node = direct_node(proxy, tmp_path, GeminiInputFiles)
    [chained] = files_node.execute(file="score.pdf")
    [files] = files_node.execute(file="notes.txt", GEMINI_INPUT_FILES=chained)
    torch.manual_seed(0)
    batch, single = torch.rand(2, 6, 8, 3), torch.rand(1, 4, 4, 3)
    tone = make_audio(0.3 * torch.sin(torch.linspace(0, 2000, 16000)).repeat(2, 1).unsqueeze(0), 16000)
    clip = VideoFromComponents(VideoComponents(torch.rand(4, 16, 16, 3), Fraction(8)))
    [text] = node.execute(prompt="Describe", model="Gemini 3.5 Flash", seed=3, **{
        "model.thinking_level": "MINIMAL", "model.max_output_tokens": 64,
        "model.images.image_1": batch, "model.images.image_3": single, "model.audio.audio_1": tone,
        "model.video.video_1": clip, "model.files": files})
    assert text.startswith("blues")
    [req] = proxy.received
    assert req.headers["X-API-KEY"] == KEY
    parts = req.json()["contents"][0]["parts"]
    assert [p.get("text") or p["inlineData"]["mimeType"] for p in parts] == [
        "Describe", "video/mp4", "audio/mp3", "image/png", "image/png", "image/png", "text/plain",
        "application/pdf"]
    data = [base64.b64decode(p["inlineData"]["data"]) for p in parts[1:]]
    assert data[0][4:8] == b"ftyp"
    assert data[1][:3] == b"ID3" or data[1][0] == 0xFF
    for png, frame in zip(data[2:5], [batch[0], batch[1], single[0]]):
        expected = np.clip(frame.numpy() * 255.0, 0, 255).astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
    assert data[5:] == [b"tempo 92, key of E", b"%PDF-1.4 tiny"]


def test_media_over_the_inline_cap_fail_before_sending(proxy, tmp_path, monkeypatch):
    import nodegraph_nodes.api.gemini as gemini

    monkeypatch.setattr(gemini, "MAX_INLINE_BYTES", 1000)
    node = direct_node(proxy, tmp_path)
    with pytest.raises(gemini.GeminiError, match="Nothing was sent"):
        node.execute(prompt="hi", model="Gemini 3.7 Flash", seed=1, **{
            "model.thinking_level": "LOW", "model.images.image_1": torch.rand(1, 64, 64, 3)})
    assert proxy.received == []


# -- credentials and settings: checked before any network I/O -------------------------------------


def test_no_credentials_fails_naming_the_extra_data_keys_and_sends_nothing(engine, proxy):
    message = failure_of(engine, gemini_graph(), {"auth_token_comfy_org": "  ", "client_id": "x"})
    assert "auth_token_comfy_org" in message and "api_key_comfy_org" in message and "GeminiNodeV2" in message
    assert proxy.received == []


def test_base_url_comes_from_the_environment_when_no_service_is_set(proxy, monkeypatch, tmp_path):
    monkeypatch.setenv(BASE_URL_ENV, proxy.url + "/")
    eng = Engine(default_registry(packs=False), paths=Paths.under(tmp_path), device="cpu", threads=1)
    try:
        assert run_text(eng, gemini_graph()).startswith("blues")
    finally:
        eng.close()
    assert proxy.received[0].path == "/proxy/vertexai/gemini/gemini-3.7-flash"


@pytest.mark.parametrize("url", ["http://api.example.com", "ftp://127.0.0.1", "https://user:pw@api.comfy.org",
                                 "https://api.comfy.org/?x=1", "api.comfy.org"])
def test_unsafe_base_urls_are_refused(url):
    with pytest.raises(ApiNodeError, match="GeminiNodeV2"):
        checked_base_url(url, "GeminiNodeV2")


def test_safe_base_urls_are_kept_without_trailing_slash():
    assert checked_base_url("https://api.comfy.org/", "n") == "https://api.comfy.org"
    assert checked_base_url("http://[::1]:8080", "n") == "http://[::1]:8080"
    assert checked_base_url("http://localhost:9/stage/", "n") == "http://localhost:9/stage"


def test_credentials_never_show_in_their_repr():
    creds = Credentials(TOKEN, KEY)
    assert TOKEN not in repr(creds) and KEY not in repr(creds)


def test_validation_refuses_a_thinking_level_the_model_lacks_and_a_blank_prompt(engine, proxy):
    with pytest.raises(ValidationFailed, match="Gemini 3.1 Pro does not offer"):
        engine.run(gemini_graph("Gemini 3.1 Pro", **{"model.thinking_level": "MEDIUM"}))
    with pytest.raises(ValidationFailed, match="non-whitespace"):
        engine.run(gemini_graph(prompt="  \n"))
    assert proxy.received == []


# -- errors, retries, malformed answers ------------------------------------------------------------


@pytest.mark.parametrize("status,phrase", [(401, "Unauthorized"), (402, "Payment Required"),
                                           (409, "support@comfy.org"), (400, "HTTP 400")])
def test_http_errors_name_the_node_the_status_and_the_server_message(engine, proxy, status, phrase):
    proxy.replies = [Reply(status, {"error": {"message": f"bad thing for {TOKEN}", "type": "invalid_request"}})]
    message = failure_of(engine, gemini_graph())
    assert "GeminiNodeV2" in message and f"HTTP {status}" in message and phrase in message
    assert "bad thing for ***" in message and "invalid_request" in message
    assert TOKEN not in message
    assert len(proxy.received) == 1  # not a retried status


def test_retryable_statuses_are_retried_under_one_idempotency_key(engine, proxy):
    proxy.replies = [Reply(503, b"busy", {"Content-Type": "text/plain"}), Reply(429, {"error": "slow down"})]
    assert run_text(engine, gemini_graph()).startswith("blues")
    assert len(proxy.received) == 3
    assert len({r.headers["Idempotency-Key"] for r in proxy.received}) == 1
    assert len({r.body for r in proxy.received}) == 1


def test_retries_give_up_with_the_last_status(engine, proxy):
    proxy.replies = [Reply(500, {"message": "down"})] * 3
    message = failure_of(engine, gemini_graph())
    assert "HTTP 500" in message and "down" in message and len(proxy.received) == 3


def test_redirects_are_not_followed(engine, proxy):
    proxy.replies = [Reply(307, b"", {"Location": proxy.url + "/elsewhere", "Content-Type": "text/plain"})]
    message = failure_of(engine, gemini_graph())
    assert "redirect" in message and "HTTP 307" in message
    assert [r.path for r in proxy.received] == ["/proxy/vertexai/gemini/gemini-3.7-flash"]


@pytest.mark.parametrize("body,phrase", [
    (b"<html>gateway</html>", "not JSON"),
    ([1, 2], "not an object"),
    ({"usageMetadata": {}}, "no 'candidates'"),
    ({"candidates": {"0": 1}}, "'candidates' is a dict"),
    ({"candidates": [{"content": {"parts": [{"text": 5}]}}]}, "candidates[0].content.parts[0].text is a int"),
    ({"candidates": [{"content": {"parts": "hi"}}]}, "candidates[0].content.parts is a str"),
    ({"candidates": [], "promptFeedback": {"blockReason": "SAFETY", "blockReasonMessage": "unsafe"}},
     "blocked the request: SAFETY (unsafe)"),
    ({"candidates": []}, "no response candidates"),
])
def test_malformed_or_blocked_answers_fail_naming_the_node(engine, proxy, body, phrase):
    proxy.replies = [Reply(200, body)]
    message = failure_of(engine, gemini_graph())
    assert "GeminiNodeV2" in message and phrase in message


def test_text_of_all_candidates_joined_thoughts_skipped_and_empty_answer_text(engine, proxy):
    proxy.replies = [Reply(200, {"candidates": [
        {"content": {"parts": [{"text": "plan", "thought": True}, {"text": "one"}, {"text": ""}]}},
        {"content": {"parts": [{"text": "two"}, {"inlineData": {"mimeType": "image/png", "data": ""}}]}}]})]
    assert run_text(engine, gemini_graph()) == "one\ntwo"
    proxy.replies = [Reply(200, answer(finish="MAX_TOKENS"))]
    warnings: list[str] = []
    result = engine.run(gemini_graph(seed=7), extra_data={"auth_token_comfy_org": TOKEN},
                        listeners=[lambda e: warnings.append(getattr(e, "message", ""))])
    assert result.raise_for_status().value("gem") == "Empty response from Gemini model..."
    assert any("max_output_tokens" in w for w in warnings)


def test_interrupting_the_run_cancels_a_pending_request(proxy, tmp_path):
    proxy.replies = [Reply(200, answer("late"), delay=60)]
    node = direct_node(proxy, tmp_path)
    threading.Timer(0.3, node.ctx.run.interrupt.set).start()
    with pytest.raises(Interrupted, match="GeminiNodeV2"):
        node.execute(prompt="hi", model="Gemini 3.8 Flash", seed=1, **{"model.thinking_level": "LOW"})
    assert len(proxy.received) == 1


def test_client_post_json_returns_the_object(proxy):
    client = ComfyOrgClient("Node", Credentials(api_key=KEY), ComfyOrgSettings(base_url=proxy.url))
    proxy.replies = [Reply(200, {"ok": True})]
    assert client.post_json("/proxy/x", {"a": 1}) == {"ok": True}
    assert proxy.received[0].json() == {"a": 1}


# -- the official template ---------------------------------------------------------------------------


def test_ace_step_split_llm_template_sends_comfyuis_request(engine, proxy):
    from tests.dit.template_runs import package_template_api

    api = package_template_api("audio_ace_step_1_5_split_llm", engine.registry)
    gemini_id = next(k for k, n in api.items() if n["class_type"] == "GeminiNodeV2")
    preview = next(k for k, n in api.items() if n["class_type"] == "PreviewAny"
                   and n["inputs"]["source"] == [gemini_id, 0])
    result = engine.run(api, targets=[preview], extra_data={"auth_token_comfy_org": TOKEN}).raise_for_status()
    assert result.value(gemini_id).startswith("blues, slide guitar")
    body = proxy.received[0].json()
    assert proxy.received[0].path == "/proxy/vertexai/gemini/gemini-3.7-flash"
    assert body["contents"] == [{"role": "user",
                                 "parts": [{"text": "A blues song, to rival the great Robert Johnson."}]}]
    assert body["generationConfig"] == {"temperature": 1.0, "topP": 0.95, "maxOutputTokens": 32768, "seed": 42,
                                        "thinkingConfig": {"thinkingLevel": "MEDIUM"}}
    assert body["systemInstruction"]["parts"][0]["text"].startswith("**Role:** You are a professional Music")


def test_object_info_marks_it_an_api_node(engine):
    info = engine.registry.object_info()["GeminiNodeV2"]
    assert info["api_node"] is True and info["deprecated"] is True
    assert list(info["input"]["required"]) == ["prompt", "model", "model.thinking_level", "model.temperature",
                                               "model.top_p", "model.max_output_tokens", "seed"]
    assert "model.images.image_16" in info["input"]["optional"]


def test_canvas_widget_values_map_per_model_option():
    """ComfyUI's DynamicCombo layout: the model's value, then the widgets its option shows, then seed (with
    its control entry) and system_prompt; Gemini 3.8 Flash shows no temperature / top_p."""
    from nodegraph.workflow.ui_format import map_widget_values

    short = map_widget_values(GeminiNodeV2, ["hi", "Gemini 3.8 Flash", "HIGH", 4096, 7, "fixed", "sys"])
    assert (short["model.thinking_level"], short["model.max_output_tokens"], short["seed"],
            short["system_prompt"]) == ("HIGH", 4096, 7, "sys")
    full = map_widget_values(GeminiNodeV2, ["hi", "Gemini 3.1 Pro", "LOW", 0.5, 0.8, 100, 7, "fixed", "sys"])
    assert (full["model.temperature"], full["model.top_p"], full["model.max_output_tokens"], full["seed"]) == \
        (0.5, 0.8, 100, 7)


def test_unreachable_proxy_and_timeouts_fail_naming_the_node_after_retries(proxy, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = ComfyOrgClient("GeminiNodeV2 (node 4)", Credentials(api_key=KEY),
                            ComfyOrgSettings(base_url=closed, retry_delay=0.0))
    with pytest.raises(ApiNodeError, match=r"GeminiNodeV2 \(node 4\): cannot reach .* tried 3 time"):
        client.post_json("/proxy/x", {})
    proxy.replies = [Reply(200, answer("slow"), delay=5)] * 2
    slow = ComfyOrgClient("GeminiNodeV2 (node 4)", Credentials(api_key=KEY),
                          ComfyOrgSettings(base_url=proxy.url, timeout=0.3, max_retries=1, retry_delay=0.0))
    with pytest.raises(ApiNodeError, match=r"no answer .* within 0.3 s \(tried 2 time"):
        slow.post_json("/proxy/x", {})
    assert len(proxy.received) == 2


def test_linked_media_sockets_validate_and_run_in_a_workflow(engine, proxy):
    Image.fromarray(np.full((4, 6, 3), 200, np.uint8)).save(engine.paths.input_dir / "grey.png")
    (engine.paths.input_dir / "notes.txt").write_bytes(b"E minor")
    g = gemini_graph()
    g.node("LoadImage", "img", image="grey.png")
    g.node("GeminiInputFiles", "files", file="notes.txt")
    api = g.to_api()
    api["gem"]["inputs"].update({"model.images.image_2": ["img", 0], "model.files": ["files", 0]})
    assert engine.run(api, extra_data={"auth_token_comfy_org": TOKEN}).raise_for_status().value("gem")
    parts = proxy.received[0].json()["contents"][0]["parts"]
    assert [p.get("text") or p["inlineData"]["mimeType"] for p in parts] == ["A blues song", "image/png",
                                                                           "text/plain"]
    with pytest.raises(ValidationFailed, match="model.files"):
        api["gem"]["inputs"]["model.files"] = ["img", 0]  # an IMAGE where GEMINI_INPUT_FILES belongs
        engine.run(api, extra_data={"auth_token_comfy_org": TOKEN})
