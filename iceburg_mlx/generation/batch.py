"""Batched generation: many rows decoded together, each with its own prompt, sampling parameters,
seed, stop strings and (through a hook) adapter; rows join and leave between steps. It serves
`generate_many` (eval, preference-pair sampling) and the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx

from iceburg_mlx.generation.stream import (
    Generation,
    GenerationStats,
    _prefill_rows,
    _row_key,
    _TextState,
    generate,
    make_cache,
)
from iceburg_mlx.penalties import History, active
from iceburg_mlx.sampling import SamplingParams, sample
from iceburg_mlx.models.cpu_decode import decoding
from iceburg_mlx.templates import stop_ids

@dataclass
class BatchEvent:
    """What one step produced for one row: new text (may be empty), the token, and at the end the stats."""

    uid: int
    text: str
    token: int | None = None
    finish_reason: str | None = None      # "stop" | "length" | "cancelled" on the row's last event
    stats: GenerationStats | None = None  # on the row's last event


@dataclass
class _Row:
    uid: int
    prompt: list[int]
    params: SamplingParams
    adapter: int
    key: mx.array
    text: _TextState
    stats: GenerationStats = field(default_factory=GenerationStats)
    n: int = 0
    t_decode: float = 0.0

    def finish(self, reason: str, token: int | None, text: str = "") -> BatchEvent:
        if reason != "cancelled" and not self.text.stopped:
            text += self.text.flush()
        s = self.stats
        s.finish_reason, s.completion_tokens = reason, self.n
        s.decode_seconds = time.perf_counter() - self.t_decode if self.t_decode else 0.0
        s.peak_memory_bytes = mx.get_peak_memory()
        return BatchEvent(self.uid, text, token, reason, s)


def batchable(model) -> bool:
    """Whether `model`'s caches are plain KV caches, which `BatchGenerator` can batch."""
    from mlx_lm.models.cache import KVCache

    return all(type(c) is KVCache for c in make_cache(model))


class BatchGenerator:
    kv_step = 64   # KV cache growth step (tokens): mlx-lm's 256 costs memory with many short rows

    """Continuous batched decoding: rows join (`insert`) and leave (finish, `cancel`) between steps.

    Each `step()` first prefills the waiting rows that fit (up to `max_batch` rows in all) together,
    left-padded, into new `BatchKVCache`s (mlx-lm) and merges those into the batch's, then runs one
    decode step for every row and returns one `BatchEvent` per row. The forward for the
    next step is queued before this step's tokens are read back, as in `stream`.

    `set_adapters(indices)`, if given, is called before every forward with the adapter index of
    each row in the batch (a list of ints): a hook for per-row adapters (see
    `iceburg_mlx.serve.multi_lora`). Not thread-safe: drive it from one thread.
    """

    def __init__(self, model, tokenizer, max_batch: int = 32,
                 set_adapters: Callable[[list[int]], None] | None = None):
        from iceburg_mlx.errors import UnsupportedModelError

        if not batchable(model):
            raise UnsupportedModelError(f"{type(model).__name__}: batched decoding needs plain KV caches")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch = max(1, int(max_batch))
        self.set_adapters = set_adapters
        self.stop_ids = stop_ids(tokenizer)
        self._n_layers = len(make_cache(model))
        self._waiting: list[_Row] = []
        self._rows: list[_Row] = []
        self._cancelled: set[int] = set()
        self._cache = None      # list of BatchKVCache, one per layer, rows in self._rows order
        self._y = None          # (B,) tokens sampled and not yet fed to the model
        self._history = None    # the rows' recent tokens (repetition controls)
        self._next_uid = 0

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._rows or self._waiting)

    def insert(self, prompt_tokens: Sequence[int], params: SamplingParams, adapter: int = 0) -> int:
        """Queue a row; it joins the batch at the next step with room. Returns its uid."""
        params = params.validate()
        if len(prompt_tokens) == 0:
            raise ValueError("a row needs at least one prompt token")
        uid = self._next_uid
        self._next_uid += 1
        key = _row_key(params.seed) if params.seed is not None else mx.random.key((time.time_ns() + uid) % 2**31)
        self._waiting.append(_Row(uid, list(prompt_tokens), params, int(adapter), key,
                                  _TextState(self.tokenizer, params.stop)))
        return uid

    def cancel(self, uid: int) -> None:
        """Drop a row (waiting or decoding) before the next step; its slot is freed then."""
        self._cancelled.add(uid)

    def _select(self, adapters: list[int]) -> None:
        if self.set_adapters is not None:
            self.set_adapters(adapters)

    def _sample(self, rows: list[_Row], logits: mx.array, history: History) -> mx.array:
        """Next tokens for `rows` (repetition controls applied first); pushed onto `history`."""
        if any(active(r.params) for r in rows):
            logits = history.apply(logits)
        y = self._draw(rows, logits)
        history.push(y)
        return y

    def _draw(self, rows: list[_Row], logits: mx.array) -> mx.array:
        greedy = mx.argmax(logits, axis=-1)
        if all(r.params.temperature == 0 for r in rows):
            return greedy
        parts = []
        for i, r in enumerate(rows):
            if r.params.temperature == 0:
                parts.append(greedy[i:i + 1])
            else:  # the same key sequence as `stream`, so a seeded row draws what it would alone
                r.key, sub = mx.random.split(r.key)
                parts.append(sample(logits[i:i + 1], r.params.temperature, r.params.top_p, sub).astype(greedy.dtype))
        return mx.concatenate(parts)

    def _drop_cancelled(self, events: list[BatchEvent]) -> None:
        if not self._cancelled:
            return
        for r in self._waiting:
            if r.uid in self._cancelled:
                events.append(r.finish("cancelled", None))
        self._waiting = [r for r in self._waiting if r.uid not in self._cancelled]
        keep = [i for i, r in enumerate(self._rows) if r.uid not in self._cancelled]
        for r in self._rows:
            if r.uid in self._cancelled:
                events.append(r.finish("cancelled", None))
        self._cancelled.clear()
        self._filter(keep)

    def _admit(self, events: list[BatchEvent]) -> None:
        """Prefill the waiting rows that fit, together (left-padded), and merge them into the batch."""
        from mlx_lm.models.cache import BatchKVCache

        new: list[_Row] = []
        while self._waiting and len(self._rows) + len(new) < self.max_batch:
            row = self._waiting.pop(0)
            row.stats.prompt_tokens = len(row.prompt)
            if row.params.max_tokens == 0:
                events.append(row.finish("length", None))
            else:
                new.append(row)
        if not new:
            return
        t0 = time.perf_counter()
        width = max(len(r.prompt) for r in new)
        pads = [width - len(r.prompt) for r in new]
        tokens = mx.array([[0] * p + r.prompt for p, r in zip(pads, new)], dtype=mx.uint32)
        cache = [BatchKVCache(pads) for _ in range(self._n_layers)]
        for c in cache:
            c.step = self.kv_step
        self._select([r.adapter for r in new])
        logits = _prefill_rows(self.model, tokens, cache)
        history = History([r.params for r in new])
        y = self._sample(new, logits, history).astype(mx.uint32)
        mx.eval(y, [c.state[:2] for c in cache])
        now = time.perf_counter()
        for r in new:
            r.stats.prompt_seconds, r.t_decode = now - t0, now
        if self._cache is None:
            self._cache, self._y, self._history = cache, y, history
        else:
            for mine, more in zip(self._cache, cache):
                mine.extend(more)
            self._y = mx.concatenate([self._y, y])
            self._history.extend(history)
        self._rows += new
        mx.clear_cache()

    def _filter(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache, self._y, self._history = None, None, None
            return
        idx = mx.array(keep, dtype=mx.int32)
        for c in self._cache:
            c.filter(idx)
        self._y = self._y[idx]
        self._history.filter(keep)

    def step(self) -> list[BatchEvent]:
        """Admit waiting rows, decode one token for every row; one event per row (finished rows leave)."""
        events: list[BatchEvent] = []
        self._drop_cancelled(events)
        self._admit(events)
        rows = self._rows
        if not rows:
            return events
        self._select([r.adapter for r in rows])
        # every row's cache offset is at most its prompt plus the tokens fed so far
        with decoding(max_offset=max(len(r.prompt) + r.n for r in rows) + 1):
            logits = self.model(self._y[:, None], cache=self._cache)[:, -1, :]
        next_y = self._sample(rows, logits, self._history)
        mx.async_eval(next_y)
        keep = []
        for i, (row, tok) in enumerate(zip(rows, self._y.tolist())):
            row.n += 1
            if tok in self.stop_ids:
                events.append(row.finish("stop", tok))
                continue
            out, hit = row.text.add(tok)
            if hit:
                events.append(row.finish("stop", tok, out))
            elif row.n >= row.params.max_tokens:
                events.append(row.finish("length", tok, out))
            else:
                events.append(BatchEvent(row.uid, out, tok))
                keep.append(i)
        self._y = next_y
        self._filter(keep)
        return events


def generate_many(model, tokenizer, prompts: Sequence[Sequence[int]], params: SamplingParams,
                  max_batch: int = 32, on_done: Callable[[int], None] | None = None) -> list[Generation]:
    """Generate for several prompts (same parameters), decoding up to `max_batch` of them together.

    Seeded runs give each prompt seed + index. Each result is what `generate` gives for that
    prompt alone (the same tokens for greedy decoding). Models whose caches are not plain KV
    caches (sliding windows, state-space layers) run one prompt after another. `on_done(n)` is
    called each time a prompt finishes, with the number finished so far.
    """
    from dataclasses import replace

    per_prompt = [params if params.seed is None else replace(params, seed=params.seed + i)
                  for i in range(len(prompts))]
    if not batchable(model):
        out = []
        for ids, p in zip(prompts, per_prompt):
            out.append(generate(model, tokenizer, ids, p))
            if on_done:
                on_done(len(out))
        return out
    mx.reset_peak_memory()
    gen = BatchGenerator(model, tokenizer, max_batch=max_batch)
    uids = [gen.insert(ids, p) for ids, p in zip(prompts, per_prompt)]
    texts: dict[int, list[str]] = {u: [] for u in uids}
    tokens: dict[int, list[int]] = {u: [] for u in uids}
    stats: dict[int, GenerationStats] = {}
    while gen.has_work:
        for ev in gen.step():
            texts[ev.uid].append(ev.text)
            if ev.token is not None:
                tokens[ev.uid].append(ev.token)
            if ev.stats is not None:
                stats[ev.uid] = ev.stats
                if on_done:
                    on_done(len(stats))
    return [Generation("".join(texts[u]), tokens[u], stats[u]) for u in uids]


def sampler(model, tokenizer, temperature: float = 0.8, top_p: float = 0.95, max_tokens: int = 256):
    """`sample(messages, n, seed)` over `generate_many`: n answers to one conversation, seeds seed,
    seed + 1, ... (what best-of-N pair building draws from)."""
    from iceburg_mlx.templates import chat_prompt

    def sample_answers(messages, n: int, seed: int) -> list[str]:
        ids = chat_prompt(tokenizer, messages)
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        return [g.text for g in generate_many(model, tokenizer, [ids] * n, params)]

    return sample_answers
