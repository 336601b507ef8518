"""The Starlette app: OpenAI-compatible routes over a `ServerState`.

Routes: GET /health (never needs a key), GET /v1/models, POST /v1/chat/completions and
/v1/completions (streamed as server-sent events with `"stream": true`). Every error is OpenAI's
error object with a 4xx status (a 500 only for a fault of the server itself); a client that goes
away mid-request has its row cancelled so the batch slot frees at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from iceburg_mlx.generation import BatchEvent
from iceburg_mlx.templates import chat_prompt
from iceburg_mlx.serve import protocol as P
from iceburg_mlx.serve.engine import Job, Overloaded
from iceburg_mlx.serve.state import ServerState

log = logging.getLogger(__name__)
OPEN_PATHS = ("/health",)


def _error(e: P.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class AuthMiddleware:
    """With an API key set, every path but /health needs `Authorization: Bearer <key>`."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        key = self.state.api_key
        if scope["type"] == "http" and key and scope.get("path") not in OPEN_PATHS:
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                err = P.APIError(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'",
                                 code="invalid_api_key")
                await _error(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_json(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise P.APIError(400, "bad Content-Length header")
        if int(declared) > limit:
            raise P.APIError(413, f"request body over the {limit}-byte limit", code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise P.APIError(413, f"request body over the {limit}-byte limit", code="request_too_large")
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError) as e:
        raise P.APIError(400, f"the body is not valid JSON ({str(e)[:100]})", code="invalid_json") from None


def _prompt_ids(state: ServerState, req: P.CompletionRequest, target) -> list[int]:
    tok = state.tokenizer
    try:
        ids = (chat_prompt(tok, target.with_system(req.messages)) if req.kind == "chat"
               else list(tok.encode(req.prompt)))
    except Exception as e:  # a chat template that refuses the messages (e.g. role order)
        raise P.APIError(400, f"cannot apply the chat template to these messages: {str(e)[:200]}",
                         param="messages") from None
    if not ids:
        raise P.APIError(400, "the prompt encodes to no tokens", param="prompt")
    lim = state.limits
    if len(ids) + req.params.max_tokens > lim.max_context:
        raise P.APIError(400, f"this model's context is {lim.max_context} tokens; the prompt has {len(ids)} "
                              f"and max_tokens asks for {req.params.max_tokens}",
                         param="messages" if req.kind == "chat" else "prompt", code="context_length_exceeded")
    return ids


class _EngineStream(StreamingResponse):
    """A streamed response that cancels its row however the response ends (disconnect included)."""

    def __init__(self, body: AsyncIterator[str], on_close):
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _complete(request: Request, kind: str):
    state: ServerState = request.app.state.server
    try:
        body = await _read_json(request, state.limits.max_body_bytes)
        req = P.parse_chat(body, state.limits) if kind == "chat" else P.parse_completion(body, state.limits)
        target = state.lookup(req.model, req.route_text())
        ids = _prompt_ids(state, req, target)
    except P.APIError as e:
        return _error(e)
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    job = Job(ids, req.params, target.slot, lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev))
    try:
        state.engine.submit(job)
    except Overloaded as e:
        return _error(P.APIError(429, f"server busy: {e}; retry later", "rate_limit_error", code="overloaded"))
    rid, model_id, role = P.new_id(kind), target.id, target.role
    if req.stream:
        return _EngineStream(_stream(q, req, kind, rid, model_id, role, len(ids)), lambda: state.engine.cancel(job))
    try:
        parts: list[str] = []
        while True:
            try:
                ev = await asyncio.wait_for(q.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    state.engine.cancel(job)
                    return JSONResponse(P.error_body("client went away"), status_code=499)
                continue
            if isinstance(ev, Exception):
                log.error("generation failed: %r", ev)
                return JSONResponse(P.error_body(f"generation failed: {type(ev).__name__}", "server_error"),
                                    status_code=500)
            parts.append(ev.text)
            if ev.finish_reason is not None:
                st = ev.stats
                return JSONResponse(P.full_response(kind, rid, model_id, role, "".join(parts), ev.finish_reason,
                                                    st.prompt_tokens, st.completion_tokens))
    finally:
        state.engine.cancel(job)


async def _stream(q: asyncio.Queue, req: P.CompletionRequest, kind: str, rid: str, model_id: str,
                  role: str | None, n_prompt: int) -> AsyncIterator[str]:
    yield _sse(P.chunk(kind, rid, model_id, role, "" if kind == "chat" else None, first=True))
    while True:
        ev: BatchEvent | Exception = await q.get()
        if isinstance(ev, Exception):
            yield _sse(P.error_body(f"generation failed: {type(ev).__name__}", "server_error"))
            break
        if ev.text:
            yield _sse(P.chunk(kind, rid, model_id, role, ev.text))
        if ev.finish_reason is not None:
            use = P.usage(n_prompt, ev.stats.completion_tokens)
            yield _sse(P.chunk(kind, rid, model_id, role, None, ev.finish_reason,
                               usage_=use if req.include_usage else None))
            break
    yield "data: [DONE]\n\n"


async def chat_completions(request: Request):
    return await _complete(request, "chat")


async def completions(request: Request):
    return await _complete(request, "text")


async def list_models(request: Request):
    state: ServerState = request.app.state.server
    return JSONResponse({"object": "list", "data": state.model_cards()})


async def health(request: Request):
    state: ServerState = request.app.state.server
    ok = state.engine.alive
    return JSONResponse({"status": "ok" if ok else "engine stopped", "model": state.base_id,
                         "roles": state.roles, "router": state.router is not None, **state.engine.snapshot()},
                        status_code=200 if ok else 503)


async def _http_error(request: Request, exc: HTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    msg = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(P.error_body(msg, code=code), status_code=exc.status_code)


async def _server_error(request: Request, exc: Exception):
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse(P.error_body("internal server error", "server_error"), status_code=500)


def create_app(state: ServerState) -> Starlette:
    """The ASGI app; shutting it down stops the engine."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            state.engine.stop()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(AuthMiddleware, state=state)], lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.server = state
    return app
