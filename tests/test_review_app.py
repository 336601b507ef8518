"""The review page's HTTP API: who may read and write what, blindness, and 8 raters writing at once."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from review_fixtures import full_scores, synthetic_store

from iceburg_mlx.review.app import BackgroundReviewServer

MODEL_NAMES = ("oracle@3", "oracle@4", "/registry/oracle", "tiny-base-model")


def call(srv, method, path, rater=None, token=None, body=None, raw=None):
    headers = {"Content-Type": "application/json"}
    if rater is not None:
        headers["X-Rater"] = rater
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(srv.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if "json" in r.headers.get("content-type", "") else text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def open_server(tmp_path):
    store = synthetic_store(tmp_path / "open.db", n=6)
    with BackgroundReviewServer(store) as srv:
        yield store, srv


@pytest.fixture
def closed_server(tmp_path):
    store = synthetic_store(tmp_path / "closed.db", n=50)
    with BackgroundReviewServer(store) as srv:
        yield store, srv


def test_nothing_served_names_a_model_or_a_side(open_server):
    store, srv = open_server
    served = [call(srv, "GET", p)[1] for p in ("/", "/review.js", "/api/session")]
    assert "Response 1" in served[0] and "Response 2" in served[0]
    for pos in range(len(store)):
        status, item = call(srv, "GET", f"/api/items/{pos}", rater="ann")
        assert status == 200
        assert set(item) == {"rater", "total", "done", "next", "pos", "system", "prompt", "responses", "judgment"}
        served.append(json.dumps(item))
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in served)
    for name in MODEL_NAMES + ("a_first", "answer_a", "answer_b"):
        assert name not in text
    session = served[2]
    assert session["items"] == 6 and session["tokens"] is False and "sides" not in session


def test_open_session_flow(open_server):
    store, srv = open_server
    assert call(srv, "GET", "/api/progress")[0] == 401
    status, body = call(srv, "GET", "/api/progress", rater="../x")
    assert status == 400 and "rater name" in body["error"]
    status, p = call(srv, "GET", "/api/progress", rater="ann")
    assert status == 200 and p == {"rater": "ann", "total": 6, "done": 0, "next": 0}
    status, item = call(srv, "GET", "/api/items/0", rater="ann")
    idx = store.rater("ann").order[0]
    assert item["system"] == "Be an oracle." and item["prompt"] == [{"role": "user", "content": f"Claim number {idx} is true."}]
    assert item["responses"] == list(store.item(idx).responses()) and item["judgment"] is None
    scores = full_scores(store, 4)
    status, p = call(srv, "PUT", "/api/items/0", rater="ann", body={"choice": "2", "scores": scores, "comment": "ok"})
    assert status == 200 and (p["done"], p["next"]) == (1, 1)
    assert call(srv, "GET", "/api/items/0", rater="ann")[1]["judgment"] == {"choice": "2", "scores": scores, "comment": "ok"}
    j = store.judgments("ann")[0]
    assert j.preferred == ("B" if store.item(idx).a_first else "A")
    for body, code, msg in (({"choice": "1", "scores": {"1": {}}}, 400, "score every criterion"),
                            ({"choice": "maybe", "scores": scores}, 400, "choose Response 1"),
                            ([1, 2], 400, "send an object")):
        status, err = call(srv, "PUT", "/api/items/1", rater="ann", body=body)
        assert (status, msg in err["error"]) == (code, True), err
    assert call(srv, "PUT", "/api/items/1", rater="ann", raw=b"{not json")[0] == 400
    assert call(srv, "PUT", "/api/items/1", rater="ann", raw=b" " * 70_000)[0] == 413
    assert call(srv, "GET", "/api/items/6", rater="ann")[0] == 404
    assert len(store.judgments()) == 1


def test_a_raters_token_reaches_only_their_own_items(closed_server):
    store, srv = closed_server
    tok = {name: store.invite(name) for name in ("alice", "bob")}
    status, session = call(srv, "GET", "/api/session")
    assert status == 200 and session["tokens"] is True
    assert call(srv, "GET", "/api/progress", rater="alice")[0] == 401
    assert call(srv, "GET", "/api/progress", rater="alice", token="guess")[0] == 403
    assert call(srv, "GET", "/api/progress", rater="carol")[0] == 401          # no open mode any more
    # bob judges his first item; alice's token cannot read or change bob's items
    assert call(srv, "PUT", "/api/items/0", rater="bob", token=tok["bob"],
                body={"choice": "1", "scores": full_scores(store, 5)})[0] == 200
    status, err = call(srv, "GET", "/api/items/0", rater="bob", token=tok["alice"])
    assert status == 403 and "responses" not in err
    assert call(srv, "PUT", "/api/items/0", rater="bob", token=tok["alice"],
                body={"choice": "2", "scores": full_scores(store, 1)})[0] == 403
    assert call(srv, "GET", "/api/progress", rater="bob", token=tok["alice"])[0] == 403
    # alice sees bob's item in her own order without bob's judgment
    bob_idx = store.rater("bob", tok["bob"]).order[0]
    pos = store.rater("alice", tok["alice"]).order.index(bob_idx)
    status, item = call(srv, "GET", f"/api/items/{pos}", rater="alice", token=tok["alice"])
    assert status == 200 and item["judgment"] is None and item["done"] == 0
    [j] = store.judgments()
    assert (j.rater, j.idx, j.choice) == ("bob", bob_idx, "1")


def test_eight_raters_posting_fifty_judgments_each_concurrently(closed_server):
    store, srv = closed_server
    raters = {f"rater{i}": store.invite(f"rater{i}") for i in range(8)}
    choices = ("1", "tie", "2")

    def rate(name: str) -> list[int]:
        statuses = []
        for pos in list(range(50)) + list(range(5)):       # the first five sent twice: replaced, not duplicated
            body = {"choice": choices[(pos + len(name)) % 3], "scores": full_scores(store, 1 + pos % 5)}
            statuses.append(call(srv, "PUT", f"/api/items/{pos}", rater=name, token=raters[name], body=body)[0])
        return statuses

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(rate, raters))
    assert all(s == 200 for r in results for s in r)
    js = store.judgments()
    assert len(js) == 400 and len({(j.rater, j.idx) for j in js}) == 400
    for name, token in raters.items():
        order = store.rater(name, token).order
        mine = {j.idx: j for j in js if j.rater == name}
        assert set(mine) == set(range(50))
        for pos, idx in enumerate(order):
            assert mine[idx].choice == choices[(pos + len(name)) % 3]
            assert set(mine[idx].scores_a.values()) == {1 + pos % 5}
        assert call(srv, "GET", "/api/progress", rater=name, token=token)[1] == \
            {"rater": name, "total": 50, "done": 50, "next": None}


def test_cli_serve_answers_loopback_names_only_and_reports_a_taken_port(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    store = synthetic_store(tmp_path / "cli.db", n=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "iceburg_mlx.cli", "review", "serve", str(store.path), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    assert json.loads(r.read()) == {"status": "ok", "items": 3}
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
                time.sleep(0.2)
        with urllib.request.urlopen(urllib.request.Request(url + "/", headers={"Host": f"localhost:{port}"})) as r:
            assert r.status == 200 and "Content-Security-Policy" in r.headers
        rebound = urllib.request.Request(url + "/api/session", headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(rebound, timeout=5)
        assert e.value.code == 400
        taken = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert taken.returncode == 2 and taken.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
        assert len(taken.stderr.strip().splitlines()) == 1, taken.stderr
    finally:
        proc.terminate()
        proc.wait(30)
