"""Repetition controls for small models, applied to the logits before sampling (greedy included):

- `repetition_penalty` p > 1 (CTRL / Hugging Face form): the logit of every token among the last
  `repetition_window` generated tokens is divided by p when positive and multiplied by p when
  negative. Only generated tokens count: the prompt's words (a role's "Verdict:", "Sources:") are
  never penalised.
- `no_repeat_ngram` n >= 2: a token that would complete an n-gram already present in the last
  `repetition_window` generated tokens is banned (Hugging Face's no_repeat_ngram_size, windowed).

`History` keeps each row's recent tokens on the device (B, W) and is updated from the still-lazy
sampled tokens, so the decode loops keep queueing the next step before reading the current token
back. Rows of one batch may use different settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx

from iceburg_mlx.sampling import SamplingParams


def active(params: SamplingParams) -> bool:
    return params.repetition_penalty != 1.0 or params.no_repeat_ngram >= 2


class History:
    """The last `window` generated tokens of each row, with a validity mask, on the device."""

    def __init__(self, params: Sequence[SamplingParams]):
        self.window = max([p.repetition_window for p in params] + [1])
        n = len(params)
        self.tokens = mx.zeros((n, self.window), dtype=mx.uint32)
        self.valid = mx.zeros((n, self.window), dtype=mx.bool_)
        self.penalties = [p.repetition_penalty for p in params]
        self.penalty = mx.array([[p] for p in self.penalties], dtype=mx.float32)
        self.ngram = [p.no_repeat_ngram for p in params]
        self.own_window = [p.repetition_window for p in params]

    def push(self, y: mx.array) -> None:
        """Append the sampled tokens y (B,) (lazy is fine)."""
        self.tokens = mx.concatenate([self.tokens[:, 1:], y.astype(mx.uint32)[:, None]], axis=1)
        self.valid = mx.concatenate([self.valid[:, 1:], mx.ones((y.shape[0], 1), dtype=mx.bool_)], axis=1)

    def extend(self, other: History) -> None:
        """Rows joining a batch (their histories appended below ours)."""
        w = max(self.window, other.window)
        a, b = self._widen(w), other._widen(w)
        self.tokens = mx.concatenate([a[0], b[0]])
        self.valid = mx.concatenate([a[1], b[1]])
        self.penalty = mx.concatenate([self.penalty, other.penalty])
        self.penalties += other.penalties
        self.ngram += other.ngram
        self.own_window += other.own_window
        self.window = w

    def _widen(self, w: int) -> tuple[mx.array, mx.array]:
        pad = w - self.window
        if pad == 0:
            return self.tokens, self.valid
        n = self.tokens.shape[0]
        return (mx.concatenate([mx.zeros((n, pad), dtype=mx.uint32), self.tokens], axis=1),
                mx.concatenate([mx.zeros((n, pad), dtype=mx.bool_), self.valid], axis=1))

    def filter(self, keep: Sequence[int]) -> None:
        """Keep only the rows `keep` (rows that left the batch are dropped)."""
        idx = mx.array(list(keep), dtype=mx.int32)
        self.tokens, self.valid, self.penalty = self.tokens[idx], self.valid[idx], self.penalty[idx]
        self.ngram = [self.ngram[i] for i in keep]
        self.penalties = [self.penalties[i] for i in keep]
        self.own_window = [self.own_window[i] for i in keep]

    def apply(self, logits: mx.array) -> mx.array:
        """The logits (B, V) with each row's repetition penalty and n-gram bans applied."""
        window = mx.arange(self.window)[None] >= (self.window - mx.array(self.own_window)[:, None])
        valid = self.valid & window
        if any(p != 1.0 for p in self.penalties):
            logits = _penalize(logits, self.tokens, valid, self.penalty)
        for n in sorted({g for g in self.ngram if g >= 2}):
            rows = mx.array([g == n for g in self.ngram])[:, None]
            logits = _ban_ngrams(logits, self.tokens, valid & rows, n)
        return logits


def _penalize(logits: mx.array, tokens: mx.array, valid: mx.array, penalty: mx.array) -> mx.array:
    idx = tokens.astype(mx.int32)
    vals = mx.take_along_axis(logits, idx, axis=-1)
    hit = mx.where(vals > 0, vals / penalty, vals * penalty)
    # a slot writes the penalised value when its token id is in a valid slot of the row, else its
    # logit unchanged: every copy of one id writes the same value, so duplicates never conflict
    new = mx.where(_seen(idx, valid), hit, vals)
    return mx.put_along_axis(logits, idx, new.astype(logits.dtype), axis=-1)


def _seen(idx: mx.array, valid: mx.array) -> mx.array:
    """For each slot, whether its token id appears in a valid slot of the same row."""
    same = idx[:, :, None] == idx[:, None, :]
    return mx.any(same & valid[:, None, :], axis=-1)


def _ban_ngrams(logits: mx.array, tokens: mx.array, valid: mx.array, n: int) -> mx.array:
    """Ban the token that follows every earlier occurrence of the row's last n-1 tokens."""
    w = tokens.shape[1]
    if w < n:
        return logits
    starts = w - n + 1                  # windows j..j+n-1 that end before the current position
    suffix, suffix_ok = tokens[:, w - n + 1:], valid[:, w - n + 1:]
    match = mx.all(suffix_ok, axis=1, keepdims=True) & mx.ones((tokens.shape[0], starts), dtype=mx.bool_)
    for k in range(n - 1):
        prev = tokens[:, k:k + starts]
        match = match & (prev == suffix[:, k:k + 1]) & valid[:, k:k + starts]
    follow = tokens[:, n - 1:n - 1 + starts].astype(mx.int32)
    match = match & valid[:, n - 1:n - 1 + starts]
    banned = mx.any((follow[:, :, None] == follow[:, None, :]) & match[:, None, :], axis=-1)
    current = mx.take_along_axis(logits, follow, axis=-1)
    return mx.put_along_axis(logits, follow, mx.where(banned, -mx.inf, current).astype(logits.dtype), axis=-1)


__all__ = ["History", "active"]
