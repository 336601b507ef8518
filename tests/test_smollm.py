"""Integration on the embedded default (SmolLM2-135M-Instruct Q4_1): llama.cpp is the reference."""

import numpy as np
import pytest

from iceburg_mlx.generation import generate
from iceburg_mlx.templates import chat_prompt
from iceburg_mlx.models import load_model
from iceburg_mlx.sampling import SamplingParams

pytestmark = [pytest.mark.smollm, pytest.mark.llama_cpp]

# Greedy answers agree with llama.cpp until llama.cpp's quantized arithmetic (Q8 activations, f16
# KV cache) flips a near-tie: its logits differ from ours by rms ~0.26, while llama.cpp batched vs
# token-by-token differs from itself by ~0.23 and f16 vs f32 KV cache by ~0.40. Where that happens
# depends on the CPU llama.cpp was built for: the first four prompts were picked on an AVX-512 machine
# for agreeing over 32 tokens; on an AVX2 one the first flips at token 16 (a 0.05-logit tie both sides).
PROMPTS = [
    "What is the boiling point of water at sea level?",
    "What is Python used for?",
    "What is the tallest mountain in the world?",
    "What is gravity?",
    "Who painted the Mona Lisa?",
    "What does a doctor do?",
]
NEAR_TIE = 0.3


@pytest.fixture(scope="module")
def smol(smollm_path):
    return load_model()


def fresh_llama(path):
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)


def llama_cpp_greedy(llm, ids, n):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        if tok == llm.token_eos():
            break
        llm.eval([tok])
    return out


def _ids(smol, prompt):
    return chat_prompt(smol.tokenizer, [{"role": "user", "content": prompt}])


def test_tokenizer_matches_llama_cpp(smol, smollm_path):
    llm = fresh_llama(smollm_path)
    for p in PROMPTS + ["Ünïcödé, émojis 🚀 and\ttabs\n\nnewlines <|im_end|> mid-text"]:
        msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": p}]
        text = smol.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == chat_prompt(smol.tokenizer, msgs)


@pytest.fixture(scope="module")
def greedy_pairs(smol, smollm_path):
    """{prompt: (prompt ids, our 32 greedy tokens, llama.cpp's)}."""
    out = {}
    for prompt in PROMPTS:
        ids = _ids(smol, prompt)
        ours = generate(smol.model, smol.tokenizer, ids, SamplingParams(max_tokens=32)).tokens
        out[prompt] = (ids, ours, llama_cpp_greedy(fresh_llama(smollm_path), ids, 32))
    return out


def test_greedy_tokens_equal_llama_cpp_on_most_prompts(greedy_pairs):
    agree = [p for p, (_, ours, theirs) in greedy_pairs.items() if len(ours) == 32 and ours == theirs]
    assert len(agree) >= 2, agree   # 3 of 6 on an AVX2 machine


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_divergence_from_llama_cpp_is_only_at_a_near_tie(smol, smollm_path, greedy_pairs, prompt):
    import mlx.core as mx

    ids, ours, theirs = greedy_pairs[prompt]
    d = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if d is None:
        return
    seq = ids + ours[:d]
    mine = np.sort(np.array(smol.model(mx.array([seq]))[0, -1]))[-2:]
    llm = fresh_llama(smollm_path)
    llm.eval(seq)
    ref = np.sort(np.array(llm.scores[llm.n_tokens - 1]))[-2:]
    assert min(mine[1] - mine[0], ref[1] - ref[0]) < NEAR_TIE


def test_default_model_knows_paris(smol):
    ids = chat_prompt(smol.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in generate(smol.model, smol.tokenizer, ids, SamplingParams(max_tokens=24)).text
