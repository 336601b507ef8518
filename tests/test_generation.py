"""The generation engine and chat sessions on a tiny model, against a no-cache argmax reference."""

import mlx.core as mx
import numpy as np
import pytest

from iceburg_mlx.chat import ChatSession
from iceburg_mlx.generation import generate
from iceburg_mlx.generation.stream import _apply_stops
from iceburg_mlx.templates import chat_prompt
from iceburg_mlx.models import load_model
from iceburg_mlx.sampling import SamplingParams, top_p_filter


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    return load_model(str(tiny_gguf("F32")))


def reference_greedy(model, ids, n):
    """Recompute the whole sequence each step, no KV cache: the plain definition of greedy."""
    seq = list(ids)
    for _ in range(n):
        logits = model(mx.array([seq]))[0, -1]
        seq.append(int(mx.argmax(logits).item()))
    return seq[len(ids):]


def test_greedy_equals_no_cache_reference(tiny):
    ids = chat_prompt(tiny.tokenizer, [{"role": "user", "content": "the tin man"}])
    # a random model rarely emits eos; cap and compare the tokens it produced
    g = generate(tiny.model, tiny.tokenizer, ids, SamplingParams(max_tokens=24))
    ref = reference_greedy(tiny.model, ids, len(g.tokens))
    assert g.tokens == ref
    assert g.stats.completion_tokens == len(g.tokens) and g.stats.prompt_tokens == len(ids)


def test_long_prompt_prefill_in_chunks_matches(tiny):
    from iceburg_mlx import generation

    ids = [(i * 37) % 250 + 3 for i in range(70)]
    old = generation.PREFILL_CHUNK
    try:
        generation.PREFILL_CHUNK = 16
        g = generate(tiny.model, tiny.tokenizer, ids, SamplingParams(max_tokens=8))
    finally:
        generation.PREFILL_CHUNK = old
    assert g.tokens == reference_greedy(tiny.model, ids, len(g.tokens))


def test_seeded_sampling_is_reproducible(tiny):
    ids = chat_prompt(tiny.tokenizer, [{"role": "user", "content": "in the end"}])
    p = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=16, seed=7)
    a = generate(tiny.model, tiny.tokenizer, ids, p).tokens
    b = generate(tiny.model, tiny.tokenizer, ids, p).tokens
    c = generate(tiny.model, tiny.tokenizer, ids, SamplingParams(temperature=1.0, max_tokens=16, seed=8)).tokens
    assert a == b and a != c


def test_top_p_keeps_the_smallest_nucleus():
    logits = mx.array([[2.0, 1.0, 0.5, -1.0, 0.0]])
    p = np.exp(np.array(logits[0])) / np.exp(np.array(logits[0])).sum()
    order = np.argsort(-p)
    cum = np.cumsum(p[order])
    for top_p in (0.3, 0.6, 0.8, 0.95):
        n_keep = int(np.searchsorted(cum, top_p) + 1)
        expect = set(order[:n_keep].tolist())
        kept = np.isfinite(np.array(top_p_filter(logits, top_p)[0]))
        assert set(np.flatnonzero(kept).tolist()) == expect, top_p


def test_stop_strings_cut_and_hold():
    assert _apply_stops("hello wor", ["world"]) == ("hello ", "wor", False)
    assert _apply_stops("hello world!", ["world"]) == ("hello ", "", True)
    assert _apply_stops("abc", []) == ("abc", "", False)


def test_stop_string_ends_generation(tiny):
    ids = chat_prompt(tiny.tokenizer, [{"role": "user", "content": "the"}])
    free = generate(tiny.model, tiny.tokenizer, ids, SamplingParams(max_tokens=24)).text
    assert len(free) > 6
    stop = free[3:6]
    cut = generate(tiny.model, tiny.tokenizer, ids, SamplingParams(max_tokens=24, stop=(stop,)))
    assert cut.text == free[: free.find(stop)]
    assert cut.stats.finish_reason == "stop"


def test_chat_reuses_the_cache_and_matches_a_fresh_session(tiny):
    p = SamplingParams(max_tokens=12)
    s = ChatSession(tiny.model, tiny.tokenizer, system="be brief")
    "".join(x.text for x in s.send("the tin", p))
    first_prompt = chat_prompt(tiny.tokenizer, s.conversation()[:-1])
    assert s.cache_tokens[: len(first_prompt)] == first_prompt
    answer2 = "".join(x.text for x in s.send("and then?", p))
    st = s.last_stats
    # turn one's prompt is served from the cache (the answer's re-tokenization may differ)
    assert st.cached_tokens >= len(first_prompt)
    full = chat_prompt(tiny.tokenizer, s.conversation()[:-1])
    assert st.prompt_tokens == len(full) - st.cached_tokens
    # a fresh session given the same history produces the same second answer
    fresh = generate(tiny.model, tiny.tokenizer, full, p)
    assert answer2 == fresh.text


def test_chat_reset_and_system(tiny):
    p = SamplingParams(max_tokens=4)
    s = ChatSession(tiny.model, tiny.tokenizer)
    list(s.send("hi", p))
    s.set_system("new rules")
    assert s.messages == [] and s.cache_tokens == []
    list(s.send("hi", p))
    assert s.conversation()[0] == {"role": "system", "content": "new rules"}
    assert s.last_stats.cached_tokens == 0


def test_bad_sampling_params():
    from iceburg_mlx.errors import ConfigError

    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0).validate()
    with pytest.raises(ConfigError, match="temperature"):
        SamplingParams(temperature=-1).validate()


def test_generate_many_batches_and_matches_generate(tiny):
    """Batched decoding (rows joining as others leave) gives each prompt what `generate` gives it alone."""
    from dataclasses import replace

    from iceburg_mlx.generation import generate_many

    texts = ["the tin man", "a", "in the end there was nothing left but the sea", "hello", "xyz", "the"]
    prompts = [chat_prompt(tiny.tokenizer, [{"role": "user", "content": t}]) for t in texts]
    free = generate(tiny.model, tiny.tokenizer, prompts[0], SamplingParams(max_tokens=16)).text
    for params in (SamplingParams(max_tokens=16), SamplingParams(max_tokens=12, stop=(free[4:6],)),
                   SamplingParams(temperature=0.8, top_p=0.9, max_tokens=12, seed=5)):
        many = generate_many(tiny.model, tiny.tokenizer, prompts, params, max_batch=4)
        for i, (ids, g) in enumerate(zip(prompts, many)):
            one = generate(tiny.model, tiny.tokenizer, ids, params if params.seed is None else replace(params, seed=5 + i))
            assert (g.tokens, g.text, g.stats.finish_reason) == (one.tokens, one.text, one.stats.finish_reason)
            assert g.stats.completion_tokens == one.stats.completion_tokens
            assert g.stats.prompt_tokens == len(ids)


def test_batch_generator_cancel_and_zero_tokens(tiny):
    from iceburg_mlx.generation import BatchGenerator

    gen = BatchGenerator(tiny.model, tiny.tokenizer, max_batch=2)
    ids = chat_prompt(tiny.tokenizer, [{"role": "user", "content": "hi"}])
    a = gen.insert(ids, SamplingParams(max_tokens=50))
    b = gen.insert(ids, SamplingParams(max_tokens=0))
    c = gen.insert(ids, SamplingParams(max_tokens=3))
    finished = {}
    for _ in range(3):
        for ev in gen.step():
            if ev.finish_reason:
                finished[ev.uid] = ev.finish_reason
    gen.cancel(a)
    while gen.has_work:
        for ev in gen.step():
            if ev.finish_reason:
                finished[ev.uid] = ev.finish_reason
    assert finished == {a: "cancelled", b: "length", c: "length"}
    assert gen.active == 0
