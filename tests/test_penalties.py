"""Repetition controls: the logit transforms against plain NumPy/Python references, and the engine
(single stream and batched, mixed settings per row) obeying them."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from iceburg_mlx.penalties import History
from iceburg_mlx.sampling import SamplingParams


def np_penalize(logits, rows, penalty):
    out = logits.copy()
    for b, toks in enumerate(rows):
        for t in set(toks):
            v = out[b, t]
            out[b, t] = v / penalty[b] if v > 0 else v * penalty[b]
    return out


def np_banned(toks, n):
    """Hugging Face's no_repeat_ngram rule on one row's generated tokens."""
    if len(toks) < n:
        return set()
    prefix = tuple(toks[len(toks) - n + 1:])
    return {toks[i + n - 1] for i in range(len(toks) - n + 1) if tuple(toks[i:i + n - 1]) == prefix}


def history_of(rows, params):
    h = History(params)
    width = max(len(r) for r in rows)
    for j in range(width):   # push column by column; shorter rows start later (left-padded)
        col = [r[j - (width - len(r))] if j >= width - len(r) else 0 for r in rows]
        h.push(mx.array(col))
    # mark the left padding invalid, as a row that joined later would have it
    mask = np.array([[j >= h.window - len(r) for j in range(h.window)] for r in rows])
    h.valid = h.valid & mx.array(mask)
    return h


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repetition_penalty_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    vocab, rows = 40, [rng.integers(0, 12, size=n).tolist() for n in (7, 3, 12)]
    params = [SamplingParams(repetition_penalty=p, repetition_window=16) for p in (1.3, 2.0, 1.0)]
    logits = rng.normal(size=(3, vocab)).astype(np.float32)
    got = np.array(history_of(rows, params).apply(mx.array(logits)))
    np.testing.assert_allclose(got, np_penalize(logits, rows, [1.3, 2.0, 1.0]), rtol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_no_repeat_ngram_matches_the_reference(n):
    rng = np.random.default_rng(n)
    rows = [rng.integers(0, 4, size=k).tolist() for k in (15, 9, 2, 20)]  # small vocab: many repeats
    params = [SamplingParams(no_repeat_ngram=n, repetition_window=32)] * 3 + [SamplingParams()]
    logits = rng.normal(size=(4, 6)).astype(np.float32)
    got = np.array(history_of(rows, params).apply(mx.array(logits)))
    for b, toks in enumerate(rows):
        banned = np_banned(toks, n) if b < 3 else set()
        assert {t for t in range(6) if np.isneginf(got[b, t])} == banned, (b, toks)
        keep = [t for t in range(6) if t not in banned]
        np.testing.assert_allclose(got[b, keep], logits[b, keep])


def test_the_window_limits_what_counts():
    h = history_of([[5, 6, 7, 8, 9]], [SamplingParams(repetition_penalty=2.0, repetition_window=2)])
    logits = mx.ones((1, 12))
    got = np.array(h.apply(logits))[0]
    assert got[8] == got[9] == 0.5 and got[5] == got[6] == got[7] == 1.0


def test_generation_obeys_the_controls_alone_and_batched(tiny_gguf):
    from iceburg_mlx.generation import generate, generate_many
    from iceburg_mlx.models import load_model

    loaded = load_model(str(tiny_gguf("F32")))
    prompts = [[1, 17, 30, 2], [1, 40, 41, 42, 43, 2], [1, 9, 2]]
    plain = SamplingParams(max_tokens=40)
    ngram = SamplingParams(max_tokens=40, no_repeat_ngram=3, repetition_window=64)
    pen = SamplingParams(max_tokens=40, repetition_penalty=1.8)
    alone = {(i, name): generate(loaded.model, loaded.tokenizer, p, params).tokens
             for i, p in enumerate(prompts) for name, params in (("plain", plain), ("ngram", ngram), ("pen", pen))}
    rep = lambda toks: any(tuple(toks[i:i + 3]) in {tuple(toks[j:j + 3]) for j in range(i)}  # noqa: E731
                           for i in range(1, len(toks) - 2))
    assert any(rep(alone[(i, "plain")]) for i in range(3)), "the tiny model should repeat itself without controls"
    assert not any(rep(alone[(i, "ngram")]) for i in range(3))
    assert any(alone[(i, "pen")] != alone[(i, "plain")] for i in range(3))
    # one batch, a different setting per row: each row decodes what it decodes alone
    mixed = [(0, "ngram"), (1, "plain"), (2, "pen"), (0, "pen"), (1, "ngram")]
    from iceburg_mlx.generation.batch import BatchGenerator

    gen = BatchGenerator(loaded.model, loaded.tokenizer, max_batch=8)
    setting = {"plain": plain, "ngram": ngram, "pen": pen}
    uids = {gen.insert(prompts[i], setting[name]): (i, name) for i, name in mixed}
    got = {u: [] for u in uids}
    while gen.has_work:
        for ev in gen.step():
            if ev.token is not None:
                got[ev.uid].append(ev.token)
    for u, key in uids.items():
        assert got[u] == alone[key], key
    assert [g.tokens for g in generate_many(loaded.model, loaded.tokenizer, prompts, ngram)] == \
        [alone[(i, "ngram")] for i in range(3)]


def test_bad_settings_are_refused():
    from iceburg_mlx.errors import ConfigError

    for bad in (dict(repetition_penalty=0.0), dict(no_repeat_ngram=1), dict(repetition_window=0)):
        with pytest.raises(ConfigError):
            SamplingParams(**bad).validate()
