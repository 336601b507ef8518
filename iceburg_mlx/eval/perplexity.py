"""Perplexity on held-out conversations, counting the assistant tokens only.

Perplexity = exp(-sum of log p(token | context) / number of tokens) over the assistant turns of
every conversation (the prompt is context, not scored), token-weighted across conversations.

A conversation is rendered once with the chat template; the span of assistant turn i is found by
rendering the prefix messages[:i] with the generation prompt (where the answer starts) and
messages[:i+1] (where it ends: at its end-of-turn token, included as in SFT; the template's
newline after that token is not scored). Rows are padded on the right and batched; the log-probs
come from the training code's `sequence_logprobs` (forward only, the lm_head applied to the
supervised positions only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from iceburg_mlx.errors import DataError
from iceburg_mlx.templates import assistant_mask
from iceburg_mlx.train.losses import body, bucket, lm_head, sequence_logprobs


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float                        # mean negative log-likelihood per assistant token (nats)
    tokens: int
    conversations: int
    per_conversation: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": round(self.perplexity, 4), "nll": round(self.nll, 6), "tokens": self.tokens,
                "conversations": self.conversations}


def _batch_logprobs(model, rows: list[tuple[list[int], list[int]]]) -> tuple[list[float], list[float]]:
    """Sum of assistant-token log-probs and assistant-token count for each (ids, mask) row."""
    width = max(len(ids) for ids, _ in rows) - 1
    inputs, targets, masks = [], [], []
    for ids, mask in rows:
        pad = width - (len(ids) - 1)
        inputs.append(ids[:-1] + [0] * pad)
        targets.append(ids[1:] + [0] * pad)
        masks.append(mask[1:] + [0] * pad)
    x, y, w = mx.array(inputs, dtype=mx.uint32), mx.array(targets, dtype=mx.uint32), mx.array(masks, dtype=mx.float32)
    n_sup = int(sum(sum(m) for m in masks))
    h = body(model)(x)
    logps, counts = sequence_logprobs(lm_head(model), h, y, w, k=bucket(n_sup), for_grad=False)
    mx.eval(logps, counts)
    return logps.tolist(), counts.tolist()


def perplexity(model, tokenizer, conversations: Sequence[list[dict[str, Any]]], batch_size: int = 4,
               max_tokens: int = 2048) -> PerplexityResult:
    """Perplexity of `model` on the assistant turns of `conversations` (lists of ChatML messages).

    Conversations longer than `max_tokens` are cut to their first `max_tokens` tokens; rows are
    batched by similar length. Conversations with no scored token are counted but add nothing.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = []
    for conv in conversations:
        ids, mask = assistant_mask(tokenizer, conv)
        rows.append((ids[:max_tokens], mask[:max_tokens]))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    sums, counts = [0.0] * len(rows), [0.0] * len(rows)
    for s in range(0, len(order), batch_size):
        idx = [i for i in order[s:s + batch_size] if len(rows[i][0]) >= 2]
        if not idx:
            continue
        lp, n = _batch_logprobs(model, [rows[i] for i in idx])
        for i, a, b in zip(idx, lp, n):
            sums[i], counts[i] = a, b
    total_lp, total_n = sum(sums), sum(counts)
    nll = -total_lp / total_n if total_n else float("nan")
    per = [{"nll": -a / b if b else float("nan"), "tokens": int(b)} for a, b in zip(sums, counts)]
    return PerplexityResult(math.exp(nll) if total_n else float("nan"), nll, int(total_n), len(rows), per)


def load_conversations(path, n: int | None = None) -> list[list[dict[str, Any]]]:
    """The first `n` conversations with an assistant turn from a JSONL file in any record format."""
    from iceburg_mlx.data.formats import to_messages
    from iceburg_mlx.data.io import iter_jsonl

    out = []
    for line, rec in iter_jsonl(path):
        if n is not None and len(out) >= n:
            break
        try:
            msgs = to_messages(rec)
        except DataError as e:
            raise DataError(f"{path}:{line}: {e}") from None
        if any(m.get("role") == "assistant" and isinstance(m.get("content"), str) for m in msgs):
            out.append(msgs)
    return out
