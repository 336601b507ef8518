"""The rating page and its JSON API (Starlette), served by `iceburg-mlx review serve`.

    GET /                 the page: plain HTML (page/index.html) and a little JavaScript (page/review.js)
    GET /health
    GET /api/session      bench, rubric, scale, number of items, whether raters need tokens
    GET /api/progress     the rater's progress and the position of their next unrated item
    GET /api/items/{pos}  item `pos` of the rater's own order, with their judgment of it if any
    PUT /api/items/{pos}  save (or replace) the rater's judgment of that item

Nothing served names a model or a side: an item is the prompt and "Response 1 / Response 2"; A
and B exist only in the session file. Every /api/ route but /api/session needs `X-Rater: <name>`;
when any rater of the session has a token (`iceburg-mlx review add-rater`), also `Authorization:
Bearer <token>`, and it must be that rater's. `RaterAuth`, an ASGI middleware as in `serve`,
settles who is asking before any route runs; routes then read and write only that rater's rows,
through positions in that rater's order, so one rater cannot read or change another's judgments.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from iceburg_mlx.errors import ReviewError
from iceburg_mlx.review.store import Rater, ReviewStore, check_rater_name
from iceburg_mlx.listen import Background, is_loopback, run

PAGE_DIR = Path(__file__).parent / "page"
MAX_BODY = 64 * 1024
RATER = "iceburg.rater"       # the scope key RaterAuth fills
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PAGE_HEADERS = {**NO_STORE, "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                           "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"}


def _json(obj, status: int = 200) -> JSONResponse:
    return JSONResponse(obj, status_code=status, headers=NO_STORE)


def _error(status: int, message: str) -> JSONResponse:
    return _json({"error": message}, status)


class _Denied(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class RaterAuth:
    """Resolves the rater of every /api/ request (but /api/session) before it reaches a route."""

    def __init__(self, app, store: ReviewStore):
        self.app, self.store = app, store

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/api/") and path != "/api/session":
            headers = dict(scope.get("headers") or [])
            name = headers.get(b"x-rater", b"").decode("utf-8", "replace").strip()
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            token = token.strip() if scheme.lower() == "bearer" and token.strip() else None
            try:
                scope[RATER] = await run_in_threadpool(self.resolve, name, token)
            except _Denied as e:
                await _error(e.status, str(e))(scope, receive, send)
                return
            except ReviewError as e:
                await _error(400, str(e))(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def resolve(self, name: str, token: str | None) -> Rater:
        if not name:
            raise _Denied(401, "say who you are: the X-Rater header names the rater")
        check_rater_name(name)
        if not self.store.has_tokens():
            rater = self.store.rater(name, None, create=True)     # the open mode: names are trusted
            if rater is None:
                raise _Denied(401, f"rater {name!r} has a token: send it")
            return rater
        if token is None:
            raise _Denied(401, "this session needs your rater token (Authorization: Bearer <token>)")
        rater = self.store.rater(name, token)
        if rater is None:
            raise _Denied(403, f"this token does not let you act as rater {name!r}")
        return rater


def _progress(store: ReviewStore, rater: Rater) -> dict:
    judged = store.judged(rater.name)
    nxt = next((pos for pos, idx in enumerate(rater.order) if idx not in judged), None)
    return {"rater": rater.name, "total": len(rater.order), "done": len(judged), "next": nxt}


def _item(store: ReviewStore, rater: Rater, pos: int) -> dict:
    item = store.item(rater.order[pos])
    system = next((m.get("content") for m in item.messages if m.get("role") == "system"), None)
    prompt = [{"role": m.get("role"), "content": m.get("content")} for m in item.messages if m.get("role") != "system"]
    j = store.judgment(rater.name, item.idx)
    judgment = None if j is None else {"choice": j.choice, "scores": j.shown_scores(item.a_first), "comment": j.comment}
    return {**_progress(store, rater), "pos": pos, "system": system, "prompt": prompt,
            "responses": list(item.responses()), "judgment": judgment}


def _position(request: Request, rater: Rater) -> int:
    pos = request.path_params["pos"]
    if not 0 <= pos < len(rater.order):
        raise _Denied(404, f"no item {pos}: positions run from 0 to {len(rater.order) - 1}")
    return pos


async def _read_json(request: Request):
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY:
            raise _Denied(413, f"request body over {MAX_BODY} bytes")
    try:
        return json.loads(bytes(body))
    except ValueError:
        raise _Denied(400, "the body is not JSON") from None


def create_review_app(store: ReviewStore, allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app over one session; with `allowed_hosts`, requests naming another Host are refused
    (a page on another site cannot reach a loopback server by rebinding its DNS name)."""
    page = (PAGE_DIR / "index.html").read_bytes()
    script = (PAGE_DIR / "review.js").read_bytes()
    public = {"session": store.meta["session"], "bench": store.meta["bench"], "rubric": store.meta["rubric"],
              "scale": store.meta.get("scale", [1, 5]), "items": len(store)}

    async def index(request: Request):
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def review_js(request: Request):
        return Response(script, media_type="text/javascript; charset=utf-8", headers=NO_STORE)

    async def health(request: Request):
        return _json({"status": "ok", "items": len(store)})

    async def session(request: Request):
        return _json({**public, "tokens": await run_in_threadpool(store.has_tokens)})

    async def progress(request: Request):
        return _json(await run_in_threadpool(_progress, store, request.scope[RATER]))

    async def item(request: Request):
        rater = request.scope[RATER]
        try:
            pos = _position(request, rater)
            if request.method == "GET":
                return _json(await run_in_threadpool(_item, store, rater, pos))
            body = await _read_json(request)
            if not isinstance(body, dict):
                raise _Denied(400, "send an object: {choice, scores, comment}")
            await run_in_threadpool(store.save_judgment, rater, rater.order[pos], body.get("choice"),
                                    body.get("scores"), body.get("comment") or "")
            return _json(await run_in_threadpool(_progress, store, rater))
        except _Denied as e:
            return _error(e.status, str(e))
        except ReviewError as e:
            return _error(400, str(e))

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/review.js", review_js, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/api/session", session, methods=["GET"]),
        Route("/api/progress", progress, methods=["GET"]),
        Route("/api/items/{pos:int}", item, methods=["GET", "PUT"]),
    ]
    middleware = [Middleware(RaterAuth, store=store)]
    if allowed_hosts:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    return Starlette(routes=routes, middleware=middleware)


def serve_review(store: ReviewStore, sock: socket.socket, log_level: str = "info") -> None:
    """Serve the page on the bound `sock` (`listen.bind`) until interrupted. On a loopback address
    only requests addressed to a loopback name are answered (no DNS rebinding)."""
    hosts = LOOPBACK_HOSTS if is_loopback(sock.getsockname()[0]) else None
    run(create_review_app(store, hosts), sock, log_level, lifespan="off")


class BackgroundReviewServer(Background):
    """The page in a daemon thread on a free loopback port (tests); a context manager."""

    def __init__(self, store: ReviewStore, host: str = "127.0.0.1"):
        super().__init__(create_review_app(store), host, lifespan="off", name="iceburg-review")
