"""GGUF export of the tiny models, checked in llama.cpp (llama-cpp-python) against iceburg-mlx."""

from __future__ import annotations

import iceburg_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)
import json
import math

import mlx.core as mx
import numpy as np
import pytest
import tiny
from gguf import GGMLQuantizationType as Q

from iceburg_mlx.errors import ExportError
from iceburg_mlx.export import FuseOptions, fuse, gguf_export
from iceburg_mlx.export.gguf_export import write_gguf
from iceburg_mlx.export.gguf_vocab import from_gguf_metadata, from_hf_dir
from iceburg_mlx.adapters import load_with_adapter
from iceburg_mlx.models import load_model
from iceburg_mlx.models.gguf_file import read_gguf

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.llama_cpp


def _llama(path):
    return llama_cpp.Llama(str(path), logits_all=True, n_ctx=256, n_threads=2, verbose=False)


def llama_logits(path, ids) -> np.ndarray:
    llm = _llama(path)
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def our_logits(path_or_loaded, ids) -> np.ndarray:
    loaded = load_model(str(path_or_loaded)) if not hasattr(path_or_loaded, "model") else path_or_loaded
    return np.array(loaded.model(mx.array([list(ids)]))[0].astype(mx.float32))


def nll(logits: np.ndarray, ids) -> float:
    """Mean negative log-likelihood of ids[1:] given the logits at positions [:-1]."""
    z = logits[:-1].astype(np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    return float(np.mean(lse - z[np.arange(len(ids) - 1), ids[1:]]))


@pytest.fixture(scope="module")
def exports(tiny_hf, tmp_path_factory):
    """The tiny HF model exported in every preset (one load)."""
    root = tmp_path_factory.mktemp("exports")
    loaded = load_model(str(tiny_hf), compute="float32")
    vocab = from_hf_dir(tiny_hf, loaded.config, int(loaded.config["vocab_size"]))
    out = {}
    for q in ("f16", "q8_0", "q4_0", "q4_1", "q4_k_m", "q6_k", "bf16"):
        out[q] = write_gguf(loaded.model, loaded.config, root / f"tiny-{q}.gguf", q, vocab).path
    return out


@pytest.fixture(scope="module")
def held_out(exports):
    """A 120-token text sampled from the F16 export itself, so perplexities are meaningful."""
    loaded = load_model(str(exports["f16"]))
    rng = np.random.default_rng(7)
    ids = [5]
    for _ in range(119):
        z = our_logits(loaded, ids)[-1] * 2.0   # sharpened: a text the model finds likely
        p = np.exp(z - z.max())
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
    return ids


def test_f16_greedy_tokens_identical(exports):
    prompt = [5, 40, 41, 42, 100]
    llm = _llama(exports["f16"])
    llm.eval(prompt)
    ours_model = load_model(str(exports["f16"]))
    theirs, ours = [], list(prompt)
    for _ in range(32):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        theirs.append(tok)
        llm.eval([tok])
        ours.append(int(np.argmax(our_logits(ours_model, ours)[-1])))
    assert ours[len(prompt):] == theirs


def test_q8_0_top1_agreement(exports, held_out):
    a = llama_logits(exports["q8_0"], held_out).argmax(-1)
    b = our_logits(exports["q8_0"], held_out).argmax(-1)
    assert np.mean(a == b) >= 0.98


@pytest.mark.parametrize("q", ["q4_0", "q4_1", "q4_k_m"])
def test_4bit_perplexity_within_5pct_of_f16(exports, held_out, q):
    f16 = math.exp(nll(llama_logits(exports["f16"], held_out), held_out))
    ppl_cpp = math.exp(nll(llama_logits(exports[q], held_out), held_out))
    ppl_ours = math.exp(nll(our_logits(exports[q], held_out), held_out))   # the same file in iceburg-mlx
    assert f16 < 0.3 * 265                                               # well below uniform: not noise to the model
    assert abs(ppl_cpp / f16 - 1) < 0.05
    assert abs(ppl_ours / ppl_cpp - 1) < 0.01


def test_q6_k_and_bf16_close_to_f16(exports, held_out):
    ref = llama_logits(exports["f16"], held_out)
    for q in ("q6_k", "bf16"):
        assert np.abs(llama_logits(exports[q], held_out) - ref).max() < 0.3


def test_q4_k_m_types_and_metadata(exports):
    g = read_gguf(exports["q4_k_m"])
    types = {n: t.qtype for n, t in g.tensors.items()}
    assert types["output.weight"] == Q.Q6_K and types["token_embd.weight"] == Q.Q4_K
    assert types["blk.1.attn_v.weight"] == Q.Q6_K and types["blk.0.attn_v.weight"] == Q.Q4_K
    assert types["blk.0.attn_norm.weight"] == Q.F32
    md = g.metadata
    assert md["general.architecture"] == "llama" and md["general.file_type"] == 15
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.chat_template"] == tiny.CHAT_TEMPLATE
    assert md["llama.rope.dimension_count"] == tiny.HIDDEN // tiny.HEADS


def test_vocab_from_tokenizer_json_tokenizes_like_hf(exports, tiny_hf):
    loaded = load_model(str(tiny_hf))
    llm = llama_cpp.Llama(str(exports["f16"]), vocab_only=True, verbose=False)
    for text in ["the then there", "in an inner <|im_start|>user", "érable 42"]:
        want = list(loaded.tokenizer.encode(text))
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == want


def test_lossless_q4_1_is_bit_exact(tiny_gguf, tmp_path):
    src = tiny_gguf("Q4_1")
    res = fuse(FuseOptions(out=tmp_path, model=str(src), to_gguf=True, quant="q4_1"))
    a, b = read_gguf(src), read_gguf(res.gguf.path)
    assert set(a.tensors) == set(b.tensors)
    for name, t in a.tensors.items():
        assert b.tensors[name].qtype == t.qtype, name
        assert np.array_equal(np.asarray(a.raw(name)), np.asarray(b.raw(name))), name
    assert len(res.gguf.lossless) == sum(t.qtype == Q.Q4_1 for t in a.tensors.values())
    for k, v in a.metadata.items():
        if k.startswith("tokenizer."):
            assert b.metadata[k] == v, k


def _adapter(tiny_hf, path, dora=False, recipe=True):
    from iceburg_mlx.adapters.layers import apply_lora
    from iceburg_mlx.adapters.files import save_adapters

    loaded = load_model(str(tiny_hf), compute="float32")
    apply_lora(loaded.model, {"rank": 4, "alpha": 8, "target_modules": ("q_proj", "v_proj", "down_proj"),
                              "dora": dora})
    mx.random.seed(3)
    for _, m in loaded.model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape)
    save_adapters(loaded.model, path)
    if recipe:
        (path / "recipe.yaml").write_text("name: oracle\nlora:\n  rank: 4\n")
    return loaded


def test_fused_adapter_gguf_matches_base_plus_adapter(tiny_hf, tmp_path):
    ids = [5, 40, 41, 42, 100, 7, 9, 11]
    with_adapter = _adapter(tiny_hf, tmp_path / "adapter")
    want = our_logits(with_adapter, ids)
    res = fuse(FuseOptions(out=tmp_path / "out", model=str(tiny_hf), adapter=str(tmp_path / "adapter"),
                           to_gguf=True, quant="f16"))
    assert res.n_fused == 3 * tiny.LAYERS
    np.testing.assert_allclose(llama_logits(res.gguf.path, ids), want, atol=0.02)
    md = read_gguf(res.gguf.path).metadata
    prov = json.loads((tmp_path / "out" / "fuse.json").read_text())
    assert md["iceburg.adapter"] == str(tmp_path / "adapter") and md["iceburg.quant"] == "f16"
    assert md["iceburg.adapter_sha256"] == prov["adapter"]["sha256"]
    assert md["iceburg.recipe"].startswith("name: oracle") and prov["adapter"]["recipe"].startswith("name: oracle")
    assert prov["files"][res.gguf.path.name] == gguf_export.sha256_file(res.gguf.path)
    assert prov["base"]["sha256"] and md["iceburg.base_sha256"] == prov["base"]["sha256"]


def test_q4_1_with_adapter_requantizes_only_the_adapted_layers(tiny_hf, tiny_gguf, tmp_path):
    from iceburg_mlx.adapters.layers import fuse_model
    from iceburg_mlx.adapters.files import load_adapters

    src = tiny_gguf("Q4_1")
    _adapter(tiny_hf, tmp_path / "adapter")        # q_proj, v_proj, down_proj
    res = fuse(FuseOptions(out=tmp_path / "out", model=str(src), adapter=str(tmp_path / "adapter"),
                           to_gguf=True, quant="q4_1"))
    a, b = read_gguf(src), read_gguf(res.gguf.path)
    adapted = ("attn_q", "attn_v", "ffn_down")
    for name, t in a.tensors.items():
        assert b.tensors[name].qtype == t.qtype, name
        same = np.array_equal(np.asarray(a.raw(name)), np.asarray(b.raw(name)))
        assert same != any(f".{k}." in name for k in adapted), name   # untouched layers: the same bytes
    assert res.provenance["imatrix"]["tokens"] > 0                    # adapted layers: importance-weighted

    # closer to base + adapter than MLX's min-max requantization of the merged weights (the old path)
    ids = list(range(5, 65))
    want = our_logits(load_with_adapter(str(src), compute="float32", adapter=str(tmp_path / "adapter")), ids)
    old = load_model(str(src), compute="quantized")
    load_adapters(old.model, tmp_path / "adapter")
    fuse_model(old.model, dequantize=False)
    old_file = write_gguf(old.model, old.config, tmp_path / "old.gguf", "q4_1",
                          from_gguf_metadata(a.metadata)).path

    def err(path):
        return float(np.sqrt(np.mean((llama_logits(path, ids) - want) ** 2)))

    assert err(res.gguf.path) < 0.9 * err(old_file)


def test_qwen2_export_runs_in_llama_cpp(tmp_path):
    hf = tiny.write_hf_dir(tmp_path / "qwen", seed=1, model_type="qwen2")
    res = fuse(FuseOptions(out=tmp_path / "out", model=str(hf), to_gguf=True, quant="f16"))
    ids = [5, 40, 41, 42, 100, 7]
    assert read_gguf(res.gguf.path).metadata["general.architecture"] == "qwen2"
    np.testing.assert_allclose(llama_logits(res.gguf.path, ids), our_logits(hf, ids), atol=0.02)


def test_unmapped_architecture_fails_before_writing(tiny_hf, tmp_path):
    loaded = load_model(str(tiny_hf), compute="float32")
    config = dict(loaded.config, model_type="gemma")
    with pytest.raises(ExportError, match="no GGUF mapping"):
        write_gguf(loaded.model, config, tmp_path / "x.gguf", "f16", [])
    assert list(tmp_path.iterdir()) == []


def test_unknown_quant_fails_before_loading(tmp_path):
    with pytest.raises(ExportError, match="valid: .*q4_k_m"):
        fuse(FuseOptions(out=tmp_path / "o", model=str(tmp_path / "missing"), to_gguf=True, quant="q5_k_s"))
    assert not (tmp_path / "o").exists()


def test_interrupted_write_leaves_no_file(tiny_hf, tmp_path, monkeypatch):
    loaded = load_model(str(tiny_hf), compute="float32")
    real, calls = gguf_export._encode, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gguf_export, "_encode", failing)
    with pytest.raises(KeyboardInterrupt):
        write_gguf(loaded.model, loaded.config, tmp_path / "x.gguf", "q4_k_m", [])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.smollm
def test_smollm2_q4_k_m_answers_paris(smollm_path, tmp_path):
    from iceburg_mlx.cli.main import app
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["fuse", "--model", "smollm2-135m-instruct", "--to-gguf", "--quant", "q4_k_m",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "ollama create" in r.output
    path = tmp_path / "SmolLM2-135M-Instruct.Q4_K_M.gguf"
    assert "importance matrix: 2048 calibration tokens" in r.output
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, verbose=False)
    # SmolLM2-135M is on a knife edge for this question: F32 puts "The" 0.08 logits above "L";
    # llama.cpp's own Q4_K_M (no importance matrix), the source Q4_1 file and Q8_0 open with
    # "L'Étoile...". Our importance-weighted Q4_K_M answers "The capital of France is Paris."
    msg = [{"role": "user", "content": "What is the capital of France?"}]
    out = llm.create_chat_completion(messages=msg, temperature=0, max_tokens=24)
    assert "Paris" in out["choices"][0]["message"]["content"]
