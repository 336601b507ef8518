"""The one generation engine: prefill, pipelined decode, sampling, stop handling, statistics.

`stream()` yields text pieces as they decode. It is reused by `generate`, `chat` (which keeps the
KV cache across turns), eval, preference-pair sampling and the server. Model classes and KV caches
come from mlx-lm; the loop is ours: the next step's graph is built and queued with `async_eval`
while the current token is being read back, so Python overhead overlaps compute.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import mlx.core as mx

from iceburg_mlx.sampling import SamplingParams, sample

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
    arr = mx.array(list(tokens), dtype=mx.uint32)[None]
    n = arr.shape[1]
    start = 0
    while n - start > chunk:
        model(arr[:, start:start + chunk], cache=cache)
        mx.eval([c.state for c in cache])
        start += chunk
    logits = model(arr[:, start:], cache=cache)
    return logits[:, -1, :]


def _stop_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "eos_token_ids", None) or [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def stream(model, tokenizer, prompt_tokens: Sequence[int], params: SamplingParams,
           cache=None, stats: GenerationStats | None = None,
           generated: list[int] | None = None) -> Iterator[Piece]:
    """Decode from `prompt_tokens` (already past `cache`'s contents) and yield text pieces.

    `cache`: an mlx-lm prompt cache holding any earlier context (chat keeps one per session).
    `generated` (optional) receives every sampled token id, including a final stop token, so a
    caller can keep track of what the cache holds: all of them but the last.
    """
    params = params.validate()
    stats = stats if stats is not None else GenerationStats()
    cache = cache if cache is not None else make_cache(model)
    stop_ids = _stop_ids(tokenizer)
    key = mx.random.key(params.seed) if params.seed is not None else mx.random.key(time.time_ns() % 2**31)
    detok = tokenizer.detokenizer
    detok.reset()
    mx.reset_peak_memory()

    def step_sample(logits):
        nonlocal key
        if params.temperature == 0:
            return mx.argmax(logits, axis=-1)
        key, sub = mx.random.split(key)
        return sample(logits, params.temperature, params.top_p, sub)

    t0 = time.perf_counter()
    stats.prompt_tokens = len(prompt_tokens)
    if params.max_tokens == 0:
        stats.finish_reason = "length"
        return
    y = step_sample(prefill(model, prompt_tokens, cache))
    mx.async_eval(y)
    y_val = y.item()
    stats.prompt_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    text_out = ""
    held = ""          # text withheld while it could be the start of a stop string
    n = 0
    try:
        while True:
            n += 1
            if generated is not None:
                generated.append(y_val)
            if y_val in stop_ids:
                stats.finish_reason = "stop"
                break
            last = n >= params.max_tokens
            if not last:  # queue the next step before reading this token's text
                next_y = step_sample(model(mx.array([[y_val]], dtype=mx.uint32), cache=cache)[:, -1, :])
                mx.async_eval(next_y)
            detok.add_token(y_val)
            piece = detok.last_segment
            if piece:
                out, held, hit = _apply_stops(held + piece, params.stop)
                if out:
                    text_out += out
                    yield Piece(out, y_val)
                if hit:
                    stats.finish_reason = "stop"
                    break
            if last:
                stats.finish_reason = "length"
                break
            y_val = next_y.item()
    finally:
        stats.completion_tokens = n
        stats.decode_seconds = time.perf_counter() - t1
        stats.peak_memory_bytes = mx.get_peak_memory()
    if stats.finish_reason == "length" or (stats.finish_reason == "stop" and y_val in stop_ids):
        detok.finalize()
        tail = detok.last_segment
        if tail:
            out, held2, hit = _apply_stops(held + tail, params.stop)
            held = "" if hit else held2
            if out:
                yield Piece(out, None)
        if held:
            yield Piece(held, None)


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


def chat_prompt(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` under the model's chat template (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                            tokenize=True)
        if isinstance(ids, dict):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer.encode(text))


def generate_many(model, tokenizer, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
    """Generate for several prompts (same parameters). Seeded runs give each prompt seed + index.

    This is the entry point for eval and preference sampling; it runs the prompts one after
    another today and is where batched decoding plugs in.
    """
    from dataclasses import replace

    out = []
    for i, ids in enumerate(prompts):
        p = params if params.seed is None else replace(params, seed=params.seed + i)
        out.append(generate(model, tokenizer, ids, p))
    return out
