"""Single-stream generation: prefill, pipelined decode, sampling, stop handling, statistics.

`stream()` yields text pieces as they decode; `generate` collects them and `chat` reuses it with
a KV cache kept across turns. The loop is ours (model classes and KV caches come from mlx-lm):
the next step's graph is built and queued with `async_eval` while the current tokens are read
back, so Python overhead overlaps compute.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import mlx.core as mx

from iceburg_mlx.penalties import History, active
from iceburg_mlx.sampling import SamplingParams, sample
from iceburg_mlx.models.cpu_decode import decoding
from iceburg_mlx.templates import stop_ids

PREFILL_CHUNK = 512


@dataclass
class GenerationStats:
    prompt_tokens: int = 0          # tokens actually processed (after any cache reuse)
    cached_tokens: int = 0          # prompt tokens served from the KV cache
    completion_tokens: int = 0
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0
    peak_memory_bytes: int = 0
    finish_reason: str | None = None   # "stop" | "length"

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        # the first token comes out of prefill; the decode rate counts the rest
        n = max(0, self.completion_tokens - 1)
        return n / self.decode_seconds if self.decode_seconds else 0.0


@dataclass
class Piece:
    text: str
    token: int | None = None
    finish_reason: str | None = None


@dataclass
class Generation:
    text: str
    tokens: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)


def make_cache(model):
    from mlx_lm.models.cache import make_prompt_cache

    return make_prompt_cache(model)


def prefill(model, tokens: Sequence[int], cache, chunk: int = PREFILL_CHUNK) -> mx.array:
    """Run `tokens` through the model into `cache`; return the last position's logits (1, V)."""
    if not tokens:
        raise ValueError("prefill needs at least one token")
    return _prefill_rows(model, mx.array(list(tokens), dtype=mx.uint32)[None], cache, chunk)


def _prefill_rows(model, tokens: mx.array, cache, chunk: int | None = None) -> mx.array:
    """(B, L) prompts (left-padded if B > 1) into `cache`; the last position's logits (B, V).

    All but the last position go through in chunks with only the caches evaluated, so their
    logits (B x chunk x vocabulary) are never computed; the last position runs alone.
    """
    chunk = chunk or PREFILL_CHUNK
    start, n = 0, tokens.shape[1] - 1
    while start < n:
        model(tokens[:, start:min(start + chunk, n)], cache=cache)
        mx.eval([c.state for c in cache])
        start += chunk
    with decoding():
        return model(tokens[:, n:], cache=cache)[:, -1, :]


def stream(model, tokenizer, prompt_tokens: Sequence[int], params: SamplingParams,
           cache=None, stats: GenerationStats | None = None,
           generated: list[int] | None = None) -> Iterator[Piece]:
    """Decode from `prompt_tokens` (already past `cache`'s contents) and yield text pieces.

    `cache`: an mlx-lm prompt cache holding any earlier context (chat keeps one per session).
    `generated` (optional) receives every sampled token id, including a final stop token. The
    cache may hold one more step than was read back (the next step is queued before the current
    token is known), so callers track its contents by `cache[0].offset` (see `ChatSession`).
    """
    params = params.validate()
    stats = stats if stats is not None else GenerationStats()
    cache = cache if cache is not None else make_cache(model)
    eos_ids = stop_ids(tokenizer)
    key = _row_key(params.seed)
    text = _TextState(tokenizer, params.stop)
    history = History([params]) if active(params) else None
    mx.reset_peak_memory()

    def step_sample(logits):
        nonlocal key
        if history is not None:
            logits = history.apply(logits)
        if params.temperature == 0:
            y = mx.argmax(logits, axis=-1)
        else:
            key, sub = mx.random.split(key)
            y = sample(logits, params.temperature, params.top_p, sub)
        if history is not None:
            history.push(y)
        return y

    t0 = time.perf_counter()
    stats.prompt_tokens = len(prompt_tokens)
    if params.max_tokens == 0:
        stats.finish_reason = "length"
        return
    y = step_sample(prefill(model, prompt_tokens, cache))
    mx.async_eval(y)
    t1 = None
    n = 0
    try:
        while True:
            last = n + 1 >= params.max_tokens
            if not last:
                # Build and queue step n+1 from the still-lazy token n: the Python work of
                # building the graph overlaps the computation of token n (as mlx-lm does).
                with decoding():
                    next_y = step_sample(model(y.reshape(1, 1), cache=cache)[:, -1, :])
                mx.async_eval(next_y)
            y_val = y.item()
            if t1 is None:
                stats.prompt_seconds = time.perf_counter() - t0
                t1 = time.perf_counter()
            n += 1
            if generated is not None:
                generated.append(y_val)
            if y_val in eos_ids:
                stats.finish_reason = "stop"
                break
            out, hit = text.add(y_val)
            if out:
                yield Piece(out, y_val)
            if hit:
                stats.finish_reason = "stop"
                break
            if last:
                stats.finish_reason = "length"
                break
            y = next_y
    finally:
        stats.completion_tokens = n
        stats.decode_seconds = time.perf_counter() - t1 if t1 is not None else 0.0
        stats.peak_memory_bytes = mx.get_peak_memory()
    if not text.stopped:
        tail = text.flush()
        if tail:
            yield Piece(tail, None)


def _row_key(seed: int | None) -> mx.array:
    return mx.random.key(seed) if seed is not None else mx.random.key(time.time_ns() % 2**31)


class _TextState:
    """One row's streaming detokenizer; withholds text that may be the start of a stop string."""

    def __init__(self, tokenizer, stops: Sequence[str]):
        self.detok = tokenizer.detokenizer
        self.detok.reset()
        self.stops = stops
        self.held = ""
        self.stopped = False       # a stop string was hit: the rest is discarded

    def add(self, token: int) -> tuple[str, bool]:
        """(text safe to emit, stop string hit) after `token`."""
        self.detok.add_token(token)
        piece = self.detok.last_segment
        if not piece:
            return "", False
        out, self.held, self.stopped = _apply_stops(self.held + piece, self.stops)
        return out, self.stopped

    def flush(self) -> str:
        """The rest of the text at the end of a row (the detokenizer's tail and any withheld text)."""
        self.detok.finalize()
        tail = self.detok.last_segment
        out = ""
        if tail:
            out, held, hit = _apply_stops(self.held + tail, self.stops)
            self.held = "" if hit else held
        out, self.held = out + self.held, ""
        return out


def _apply_stops(text: str, stops: Sequence[str]) -> tuple[str, str, bool]:
    """Split `text` into (safe to emit, withheld, stop hit). Withheld text may begin a stop string."""
    if not stops:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return text[: len(text) - keep], text[len(text) - keep:], False


def generate(model, tokenizer, prompt_tokens: Sequence[int], params: SamplingParams,
             cache=None) -> Generation:
    stats = GenerationStats()
    toks: list[int] = []
    text = "".join(p.text for p in stream(model, tokenizer, prompt_tokens, params, cache, stats, toks))
    return Generation(text, toks, stats)


