"""Token sampling as pure functions of logits and a PRNG key (greedy when temperature is 0), and
the sampling parameters (importing them does not load MLX: the CLI's --help stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mlx.core as mx


# The repetition controls generate, chat, eval, review and serve use unless told otherwise (their
# --repetition-penalty / --no-repeat-ngram flags; 1.0 and 0 turn them off), chosen from
# measurements on the role benches (docs/quality.md).
DEFAULT_REPETITION_PENALTY = 1.0
DEFAULT_NO_REPEAT_NGRAM = 0


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0     # 0 = greedy
    top_p: float = 1.0           # nucleus mass kept (1 = off)
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()   # stop strings (not included in the output)
    repetition_penalty: float = 1.0   # > 1 penalises tokens generated in the last repetition_window (1 = off)
    repetition_window: int = 64
    no_repeat_ngram: int = 0          # >= 2 bans repeating an n-gram of the last repetition_window tokens

    def validate(self) -> "SamplingParams":
        from iceburg_mlx.errors import ConfigError

        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 0:
            raise ConfigError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not self.repetition_penalty > 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.repetition_window < 1:
            raise ConfigError(f"repetition_window must be >= 1, got {self.repetition_window}")
        if self.no_repeat_ngram < 0 or self.no_repeat_ngram == 1:
            raise ConfigError(f"no_repeat_ngram must be 0 (off) or >= 2, got {self.no_repeat_ngram}")
        return self


def top_p_filter(logits: mx.array, top_p: float) -> mx.array:
    """Set to -inf every logit outside the smallest set whose probability mass reaches top_p."""
    import mlx.core as mx

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
    import mlx.core as mx

    if temperature == 0:
        return mx.argmax(logits, axis=-1)
    logits = top_p_filter(logits.astype(mx.float32) / temperature, top_p)
    return mx.random.categorical(logits, axis=-1, key=key)
