"""Token sampling as pure functions of logits and a PRNG key (greedy when temperature is 0)."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0     # 0 = greedy
    top_p: float = 1.0           # nucleus mass kept (1 = off)
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()   # stop strings (not included in the output)

    def validate(self) -> "SamplingParams":
        from iceburg_mlx.errors import ConfigError

        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 0:
            raise ConfigError(f"max_tokens must be >= 0, got {self.max_tokens}")
        return self


def top_p_filter(logits: mx.array, top_p: float) -> mx.array:
    """Set to -inf every logit outside the smallest set whose probability mass reaches top_p."""
    if top_p >= 1.0:
        return logits
    order = mx.argsort(-logits, axis=-1)
    sorted_logits = mx.take_along_axis(logits, order, axis=-1)
    probs = mx.softmax(sorted_logits, axis=-1)
    cum = mx.cumsum(probs, axis=-1)
    keep_sorted = (cum - probs) < top_p          # always keeps the top token
    keep = mx.put_along_axis(mx.zeros_like(keep_sorted), order, keep_sorted, axis=-1)
    return mx.where(keep, logits, -mx.inf)


def sample(logits: mx.array, temperature: float, top_p: float, key: mx.array | None) -> mx.array:
    """logits (B, V) -> token ids (B,). Greedy when temperature == 0."""
    if temperature == 0:
        return mx.argmax(logits, axis=-1)
    logits = top_p_filter(logits.astype(mx.float32) / temperature, top_p)
    return mx.random.categorical(logits, axis=-1, key=key)
