"""Assistant-token perplexity against a NumPy computation from the full logits of the tiny model."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from iceburg_mlx.errors import DataError
from iceburg_mlx.eval.perplexity import load_conversations, perplexity
from iceburg_mlx.templates import assistant_mask
from iceburg_mlx.models import load_model

CONVS = [
    [{"role": "user", "content": "the tin man"}, {"role": "assistant", "content": "then the rain"}],
    [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "more"},
     {"role": "assistant", "content": "the end, then"}],
    [{"role": "user", "content": "a much longer question about iron and water and the rest"},
     {"role": "assistant", "content": "in"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    return load_model(str(tiny_gguf("F32")))


def numpy_nll(model, ids, mask):
    """Sum of -log softmax(full logits)[next token] over assistant positions, and their count."""
    logits = np.array(model(mx.array([ids[:-1]]))[0].astype(mx.float32), dtype=np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = logits[np.arange(len(ids) - 1), ids[1:]]
    w = np.array(mask[1:], dtype=np.float64)
    return float(((logz - picked) * w).sum()), float(w.sum())


def test_assistant_mask_covers_answers_only(tiny):
    tok = tiny.tokenizer
    ids, mask = assistant_mask(tok, CONVS[1])
    assert len(ids) == len(mask)
    picked = tok.decode([t for t, m in zip(ids, mask) if m])
    assert picked == "an answer<|im_end|>the end, then<|im_end|>"
    with pytest.raises(DataError):
        assistant_mask(tok, [{"role": "user", "content": "x"}])


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_perplexity_equals_numpy(tiny, batch_size):
    total, count = 0.0, 0.0
    for conv in CONVS:
        s, n = numpy_nll(tiny.model, *assistant_mask(tiny.tokenizer, conv))
        total, count = total + s, count + n
    r = perplexity(tiny.model, tiny.tokenizer, CONVS, batch_size=batch_size)
    assert r.tokens == int(count) and r.conversations == len(CONVS)
    assert r.nll == pytest.approx(total / count, rel=1e-4)
    assert r.perplexity == pytest.approx(math.exp(total / count), rel=1e-4)
    for conv, per in zip(CONVS, r.per_conversation):
        s, n = numpy_nll(tiny.model, *assistant_mask(tiny.tokenizer, conv))
        assert per["tokens"] == n and per["nll"] == pytest.approx(s / n, rel=1e-4)


def test_perplexity_truncates(tiny):
    r = perplexity(tiny.model, tiny.tokenizer, CONVS[:1], max_tokens=8)
    assert r.tokens == 0 and math.isnan(r.perplexity)  # the answer lies beyond 8 tokens


def test_load_conversations(tmp_path):
    import json

    f = tmp_path / "valid.jsonl"
    rows = [{"messages": CONVS[0]}, {"prompt": "q"}, {"instruction": "q", "output": "a"}, {"messages": CONVS[1]}]
    f.write_text("\n".join(json.dumps(r) if "prompt" not in r else json.dumps({"text": "plain"}) for r in rows))
    convs = load_conversations(f)
    assert [c[-1]["content"] for c in convs] == ["then the rain", "plain", "a", "the end, then"]
    assert len(load_conversations(f, n=2)) == 2
    f.write_text('{"nope": 1}\n')
    with pytest.raises(DataError, match="valid.jsonl:1"):
        load_conversations(f)
