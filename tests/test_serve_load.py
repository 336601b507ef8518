"""A bounded load test: 1,000 requests, 16 at once, mixed roles, one in ten malformed."""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from serve_fixtures import ROLES

N = int(os.environ.get("ICEBURG_LOAD_REQUESTS", "1000"))
BAD = [
    b'{"model": "iceburg-oracle", "messages": [',                                    # truncated JSON
    json.dumps({"model": "iceburg-nobody", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    json.dumps({"model": "iceburg-oracle", "messages": [{"role": "user", "content": "hi"}],
                "temperature": 9}).encode(),
    json.dumps({"model": "iceburg-oracle", "messages": "hi"}).encode(),
    json.dumps({"model": "iceburg-oracle", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 100000}).encode(),
]


def call(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_thousand_requests_sixteen_at_once(server):
    rng = random.Random(0)
    models = [server.state.base_id] + [f"iceburg-{r}" for r in ROLES] + ["iceburg-auto"]
    jobs = []
    for i in range(N):
        if i % 10 == 7:
            jobs.append((False, BAD[rng.randrange(len(BAD))]))
        else:
            body = {"model": rng.choice(models), "max_tokens": rng.randint(1, 4), "temperature": rng.choice([0, 0.7]),
                    "messages": [{"role": "user", "content": f"request {i} about {rng.choice(['bees', 'salt'])}"}]}
            jobs.append((True, json.dumps(body).encode()))
    url = server.url + "/v1/chat/completions"
    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda j: call(url, j[1]), jobs))
    elapsed = time.monotonic() - t0
    for (valid, _), (status, body) in zip(jobs, results):
        if valid:
            assert status == 200, body
            assert body["usage"]["completion_tokens"] >= 1 and body["choices"][0]["finish_reason"] in ("stop", "length")
        else:
            assert 400 <= status < 500 and set(body["error"]) == {"message", "type", "param", "code"}, body
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok" and health["pending"] == 0 and health["active"] == 0
    assert elapsed < 300
