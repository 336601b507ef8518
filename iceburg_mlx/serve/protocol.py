"""The OpenAI wire format: request validation and response objects, free of any web framework.

`parse_chat` / `parse_completion` turn a decoded JSON body into a `CompletionRequest` or raise
`APIError` (status, message, type, param, code), which the app sends as OpenAI's error object
{"error": {"message", "type", "param", "code"}}. Unknown fields are ignored, as OpenAI's clients
send many; fields we cannot honour (n > 1, logprobs, tools) are refused by name.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from iceburg_mlx.sampling import SamplingParams

MAX_STOPS = 4
ROLES = ("system", "user", "assistant")
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "response_format")


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_tokens: int = 2048         # most tokens a request may ask for
    default_max_tokens: int = 256  # when a request names none
    max_context: int = 8192        # prompt + completion tokens
    max_pending: int = 256         # requests decoding or queued; more get 429


@dataclass
class CompletionRequest:
    kind: str                                  # "chat" | "text"
    model: str
    params: SamplingParams
    stream: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str = ""
    include_usage: bool = True

    def route_text(self) -> str:
        """What the router reads: the last user message (chat) or the prompt."""
        if self.kind == "text":
            return self.prompt
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else self.messages[-1]["content"]


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(f"'{key}' must be a number, got {v!r}", key)
    if v > hi or v < lo or (lo_open and v == lo):
        raise _bad(f"'{key}' must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v}", key)
    return float(v)


def _int(body: dict, key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"'{key}' must be an integer, got {v!r}", key)
    return v


def _params(body: dict, limits: Limits) -> SamplingParams:
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, key)
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens)
    elif not 1 <= max_tokens <= limits.max_tokens:
        raise _bad(f"'{key}' must be between 1 and {limits.max_tokens}, got {max_tokens}", key)
    seed = _int(body, "seed")
    if seed is not None and not 0 <= seed < 2**63:
        raise _bad(f"'seed' must be a non-negative 64-bit integer, got {seed}", "seed")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOPS:
        stops = tuple(s for s in stop if s)
    else:
        raise _bad(f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop")
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("only n=1 is supported", "n")
    if body.get("logprobs") or body.get("top_logprobs") or body.get("echo") or body.get("best_of") not in (None, 1):
        raise _bad("logprobs, echo and best_of are not supported", "logprobs")
    for k in UNSUPPORTED:
        if body.get(k) is not None:
            raise _bad(f"'{k}' is not supported by this server", k)
    return SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                          seed=seed % 2**31 if seed is not None else None, stop=stops)


def _common(body: Any, limits: Limits) -> tuple[str, SamplingParams, bool, bool]:
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required (see GET /v1/models)", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    include_usage = True if not stream or not opts else opts.get("include_usage", True) is not False
    return model, _params(body, limits), stream, include_usage


def _content(c: Any, i: int) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                   and isinstance(p.get("text"), str) for p in c):
        return "".join(p["text"] for p in c)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def parse_chat(body: Any, limits: Limits) -> CompletionRequest:
    model, params, stream, usage = _common(body, limits)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _bad(f"messages[{i}] must be an object with role one of {', '.join(ROLES)}", f"messages[{i}].role")
        out.append({"role": m["role"], "content": _content(m.get("content"), i)})
    return CompletionRequest("chat", model, params, stream, messages=out, include_usage=usage)


def parse_completion(body: Any, limits: Limits) -> CompletionRequest:
    model, params, stream, usage = _common(body, limits)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise _bad("'prompt' must be a non-empty string (one prompt per request)", "prompt")
    return CompletionRequest("text", model, params, stream, prompt=prompt, include_usage=usage)


# ---- responses -------------------------------------------------------------------------------

def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _head(kind: str, rid: str, model: str, role: str | None, chunk: bool) -> dict[str, Any]:
    obj = ("chat.completion" if kind == "chat" else "text_completion") + (".chunk" if chunk and kind == "chat" else "")
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "iceburg_role": role,
            "system_fingerprint": "iceburg-mlx"}


def full_response(kind: str, rid: str, model: str, role: str | None, text: str, finish: str,
                  prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {**_head(kind, rid, model, role, False), "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(kind: str, rid: str, model: str, role: str | None, text: str | None, finish: str | None = None,
          first: bool = False, usage_: dict | None = None) -> dict[str, Any]:
    """One streamed chunk; the last one carries finish_reason and usage."""
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
    out = {**_head(kind, rid, model, role, True), "choices": [choice]}
    if usage_ is not None:
        out["usage"] = usage_
    return out
