"""`iceburg-mlx serve` through the real `openai` client: a tiny base with two tiny role adapters."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from serve_fixtures import ROLES

from iceburg_mlx.generation import generate
from iceburg_mlx.templates import chat_prompt
from iceburg_mlx.adapters import load_with_adapter
from iceburg_mlx.models import load_model
from iceburg_mlx.sampling import SamplingParams

openai = pytest.importorskip("openai")
PROMPTS = ["the tin man", "a", "in the end there was nothing", "hello there", "xyz abc", "the", "sea and sky", "why"]


@pytest.fixture(scope="module")
def references(registry):
    """Library `generate` with load_with_adapter(..., adapter=...) per role (None = the base)."""
    gguf, _, paths = registry
    return {None: load_model(str(gguf)), **{r: load_with_adapter(str(gguf), adapter=str(paths[r])) for r in ROLES}}


def expected(references, role, content, **kw):
    m = references[role]
    ids = chat_prompt(m.tokenizer, [{"role": "user", "content": content}])
    return generate(m.model, m.tokenizer, ids, SamplingParams(**{"max_tokens": 16, **kw})).text


def model_id(server, role):
    return f"iceburg-{role}" if role else server.state.base_id


def post(server, path, data: bytes, headers=None):
    req = urllib.request.Request(server.url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(server, path, headers=None):
    req = urllib.request.Request(server.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_lists_base_roles_versions_and_auto(client, server):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {server.state.base_id, "iceburg-oracle", "iceburg-surveyor", "iceburg-auto"}
    assert cards["iceburg-oracle"].model_extra["version"] == 2
    assert cards["iceburg-oracle"].model_extra["iceburg_adapter"] == "oracle@2"


@pytest.mark.parametrize("role", [None, *ROLES])
def test_greedy_chat_equals_library_generate(client, server, references, role):
    r = client.chat.completions.create(model=model_id(server, role), temperature=0, max_tokens=16,
                                       messages=[{"role": "user", "content": "the tin man"}])
    assert r.choices[0].message.content == expected(references, role, "the tin man")
    assert r.model == model_id(server, role) and r.model_extra["iceburg_role"] == role
    assert r.usage.completion_tokens == 16 and r.usage.total_tokens == r.usage.prompt_tokens + 16
    assert r.choices[0].finish_reason == "length"


def test_streamed_chat_equals_non_streamed_and_reports_usage(client, server, references):
    chunks = list(client.chat.completions.create(model="iceburg-surveyor", temperature=0, max_tokens=16, stream=True,
                                                 messages=[{"role": "user", "content": "hello there"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(references, "surveyor", "hello there")
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 16 and chunks[-1].usage.prompt_tokens > 0


def test_text_completions_streamed_and_not(client, server, references):
    m = references["oracle"]
    ids = list(m.tokenizer.encode("once upon a time"))
    want = generate(m.model, m.tokenizer, ids, SamplingParams(max_tokens=10)).text
    r = client.completions.create(model="iceburg-oracle", prompt="once upon a time", temperature=0, max_tokens=10)
    assert r.choices[0].text == want and r.usage.prompt_tokens == len(ids)
    parts = list(client.completions.create(model="iceburg-oracle", prompt="once upon a time", temperature=0,
                                           max_tokens=10, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == want


def test_seed_and_stop_match_the_library(client, server, references):
    kw = {"temperature": 0.9, "top_p": 0.95, "seed": 11}
    r = client.chat.completions.create(model="iceburg-oracle", max_tokens=16, messages=[{"role": "user", "content": "why"}],
                                       **kw)
    assert r.choices[0].message.content == expected(references, "oracle", "why", **kw)
    free = expected(references, "surveyor", "sea and sky")
    stop = free[4:7]
    r = client.chat.completions.create(model="iceburg-surveyor", temperature=0, max_tokens=16, stop=[stop],
                                       messages=[{"role": "user", "content": "sea and sky"}])
    assert r.choices[0].message.content == expected(references, "surveyor", "sea and sky", stop=(stop,))
    assert r.choices[0].finish_reason == "stop"


def test_eight_mixed_role_requests_decode_together_without_cross_talk(client, server, references):
    jobs = [((None, *ROLES)[i % 3], PROMPTS[i]) for i in range(8)]
    want = [expected(references, role, p) for role, p in jobs]
    got: list = [None] * 8
    peak_before = server.state.engine.counters["peak_active"]
    server.state.engine.counters["peak_active"] = 0
    barrier = threading.Barrier(8)

    def ask(i):
        role, p = jobs[i]
        barrier.wait()
        r = client.chat.completions.create(model=model_id(server, role), temperature=0, max_tokens=16,
                                           messages=[{"role": "user", "content": p}])
        got[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == want
    assert server.state.engine.counters["peak_active"] >= 4   # they shared batches
    server.state.engine.counters["peak_active"] = max(peak_before, 8)


def test_auto_routes_by_prompt_and_names_the_role(client):
    r = client.chat.completions.create(model="iceburg-auto", temperature=0, max_tokens=4,
                                       messages=[{"role": "user", "content": "Claim: glass is a liquid. True or false?"}])
    assert r.model == "iceburg-oracle" and r.model_extra["iceburg_role"] == "oracle"
    r = client.chat.completions.create(model="iceburg-auto", temperature=0, max_tokens=4,
                                       messages=[{"role": "user", "content": "Summarize the research on naps."}])
    assert r.model_extra["iceburg_role"] == "surveyor"


def test_api_key_guards_everything_but_health(server):
    state = server.state
    state.api_key = "s3cret"
    try:
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        status, body = post(server, "/v1/chat/completions", b"{}")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        r = good.chat.completions.create(model="iceburg-oracle", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert r.usage.completion_tokens >= 1
        assert get(server, "/health")[0] == 200
    finally:
        state.api_key = None


def check_error(status, body, want_status, param=None):
    assert status == want_status, body
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param


def test_bad_requests_get_openai_style_4xx(client, server):
    chat = "/v1/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    check_error(*post(server, chat, b'{"model": "iceburg-oracle", "messages": ['), 400)
    check_error(*post(server, chat, b"\xff\xfe"), 400)
    check_error(*post(server, chat, b"[1, 2]"), 400)
    check_error(*post(server, chat, json.dumps({"messages": msgs}).encode()), 400, "model")
    check_error(*post(server, chat, json.dumps({"model": "iceburg-oracle", "messages": []}).encode()), 400, "messages")
    check_error(*post(server, chat, json.dumps({"model": "iceburg-oracle", "messages": [{"role": "wizard"}]}).encode()),
                400)
    check_error(*post(server, "/v1/completions", json.dumps({"model": "iceburg-oracle", "prompt": 5}).encode()), 400,
                "prompt")
    for field, value in [("temperature", -1), ("temperature", "hot"), ("top_p", 0), ("max_tokens", 0),
                         ("max_tokens", 10_000), ("stop", [1]), ("n", 2), ("seed", -3), ("stream", "yes")]:
        body = {"model": "iceburg-oracle", "messages": msgs, field: value}
        check_error(*post(server, chat, json.dumps(body).encode()), 400, field)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="iceburg-wizard", messages=msgs)
    assert e.value.code == "model_not_found"
    check_error(*post(server, chat, b'{"x": "' + b"a" * 70_000 + b'"}'), 413)
    long_prompt = {"model": "iceburg-oracle", "max_tokens": 64, "messages": [{"role": "user", "content": "the " * 600}]}
    status, body = post(server, chat, json.dumps(long_prompt).encode())
    check_error(status, body, 400)
    assert body["error"]["code"] == "context_length_exceeded"
    check_error(*get(server, "/v1/nothing"), 404)
    check_error(*get(server, chat), 405)
    status, health = get(server, "/health")
    assert status == 200 and health["status"] == "ok"


def test_client_that_disconnects_mid_stream_frees_its_slot(server):
    # Greedy and the largest budget: the row cannot end by itself (EOS or length) in the moment
    # between the client's close and the server noticing it, however fast the machine.
    before = dict(server.state.engine.counters)
    body = json.dumps({"model": "iceburg-oracle", "stream": True, "max_tokens": server.state.limits.max_tokens,
                       "temperature": 0,
                       "messages": [{"role": "user", "content": "tell me a long story"}]}).encode()
    s = socket.create_connection((server.host, server.port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    got = b""
    while got.count(b"data:") < 3:
        got += s.recv(4096)
    s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        h = get(server, "/health")[1]
        if h["active"] == 0 and h["pending"] == 0:
            break
        time.sleep(0.05)
    assert h["active"] == 0 and h["pending"] == 0, h
    after = server.state.engine.counters
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]


def test_cli_serve_starts_guards_and_stops(registry):
    import os
    import signal
    import subprocess
    import sys

    gguf, adir, _ = registry
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TEST_SERVE_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "iceburg_mlx.cli", "serve", "--model", str(gguf), "--adapters",
                             "oracle", "--adapters-dir", str(adir), "--port", str(port), "--api-key-env",
                             "TEST_SERVE_KEY"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert health["roles"] == ["oracle"] and health["router"] is True
        status, _ = get(server=type("S", (), {"url": url}), path="/v1/models")
        assert status == 401
        c = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        assert {m.id for m in c.models.list().data} >= {"iceburg-oracle", "iceburg-auto"}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 130, -2)
