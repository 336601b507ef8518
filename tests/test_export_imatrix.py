"""Importance matrices: collected activations against NumPy, calibration input, and the fuse path."""

from __future__ import annotations

import iceburg_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)
import json

import mlx.core as mx
import numpy as np
import pytest
import tiny

from iceburg_mlx.errors import ExportError
from iceburg_mlx.export import FuseOptions, fuse
from iceburg_mlx.export import imatrix
from iceburg_mlx.models import load_model
from iceburg_mlx.models.gguf_file import read_gguf


def test_collect_matches_numpy_and_leaves_the_model_as_it_was(tiny_hf):
    loaded = load_model(str(tiny_hf), compute="float32")
    ids = np.random.default_rng(0).integers(3, 200, size=300).tolist()
    x = mx.array([ids[:40]])
    before = np.array(loaded.model(x))
    imp = imatrix.collect(loaded.model, ids, n_ctx=128)   # three chunks, the last one short

    names = {f"blk.{i}.{k}.weight" for i in range(tiny.LAYERS)
             for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(imp) == names      # the head stays unweighted, as llama-imatrix leaves it by default
    assert imp["blk.0.ffn_down.weight"].shape == (tiny.FFN,) and imp["blk.1.attn_q.weight"].shape == (tiny.HIDDEN,)

    # layer 0's q/k/v see the normed embeddings: position-independent, so NumPy needs no attention
    w = tiny.random_weights(tiny.config(len(tiny.vocab()[0])))
    e = w["model.embed_tokens.weight"][ids].astype(np.float64)
    h = e / np.sqrt(np.mean(e * e, axis=-1, keepdims=True) + 1e-5) * w["model.layers.0.input_layernorm.weight"]
    want = np.mean(h * h, axis=0)
    for k in ("attn_q", "attn_k", "attn_v"):
        np.testing.assert_allclose(imp[f"blk.0.{k}.weight"], want, rtol=2e-4)

    assert not any(type(m).__name__ == "Recording" for _, m in loaded.model.named_modules())
    np.testing.assert_array_equal(np.array(loaded.model(x)), before)


def test_calibration_sources(tiny_hf, tmp_path):
    tok = load_model(str(tiny_hf)).tokenizer
    chat = tmp_path / "cal.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "the tin"},
                                             {"role": "assistant", "content": "then"}]}) + "\n"
                    + json.dumps({"text": "plain text record"}) + "\n")
    cal = imatrix.calibration_ids(tok, chat, n_tokens=10_000)
    assert cal.records == 2 and cal.ids and len(cal.ids) < 10_000
    assert imatrix.calibration_ids(tok, chat, n_tokens=5).ids == imatrix.calibration_ids(tok, chat, n_tokens=5).ids
    assert len(imatrix.calibration_ids(tok, chat, n_tokens=5).ids) == 5
    txt = tmp_path / "cal.txt"
    txt.write_text("one paragraph\n\nanother one\n")
    assert imatrix.calibration_ids(tok, txt).records == 2
    assert imatrix.calibration_ids(tok, None, n_tokens=64).source.startswith("data/")  # the shipped sets
    assert cal.source == "cal.jsonl"   # a name, not a local path: it goes into the GGUF

    # a tokenizer without a chat template calibrates on the plain text of the messages
    tok._tokenizer.chat_template = None
    assert imatrix.calibration_ids(tok, chat, n_tokens=10_000).ids

    with pytest.raises(ExportError, match="nope.jsonl: calibration data not found"):
        imatrix.calibration_ids(tok, tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(ExportError, match="bad.jsonl:2"):
        imatrix.calibration_ids(tok, bad)
    with pytest.raises(ExportError, match="bad.jsonl:1"):
        (tmp_path / "bad.jsonl").write_text('{"neither": 1}\n')
        imatrix.calibration_ids(tok, bad)


@pytest.mark.llama_cpp
def test_fuse_with_importance_records_it_and_runs_in_llama_cpp(tiny_hf, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    cal = tmp_path / "cal.txt"
    cal.write_text("\n\n".join(f"the {i} then than in an er {i * 7}" for i in range(60)))
    res = fuse(FuseOptions(out=tmp_path / "w", model=str(tiny_hf), to_gguf=True, quant="q4_k_m",
                           calibration=str(cal), calibration_tokens=512))
    plain = fuse(FuseOptions(out=tmp_path / "p", model=str(tiny_hf), to_gguf=True, quant="q4_k_m", imatrix=False))
    imx = res.provenance["imatrix"]
    assert imx["tokens"] == 512 and imx["entries"] == 2 * 7 and imx["source"] == "cal.txt"
    assert json.loads((tmp_path / "w" / "fuse.json").read_text())["imatrix"]["ids_sha256"] == imx["ids_sha256"]
    assert plain.provenance["imatrix"] is None
    meta = read_gguf(res.gguf.path).metadata
    assert meta["quantize.imatrix.entries_count"] == 14 and meta["quantize.imatrix.chunks_count"] == 1
    assert "quantize.imatrix.entries_count" not in read_gguf(plain.gguf.path).metadata
    assert res.gguf.path.read_bytes() != plain.gguf.path.read_bytes()
    llm = llama_cpp.Llama(str(res.gguf.path), n_ctx=64, n_threads=2, verbose=False)
    assert len(llm.tokenize(b"the tin")) > 0 and llm.create_completion("the", max_tokens=4, temperature=0)

    with pytest.raises(ExportError, match="calibration data not found"):
        fuse(FuseOptions(out=tmp_path / "x", model=str(tiny_hf), to_gguf=True, quant="q4_k_m",
                         calibration=str(tmp_path / "missing.jsonl")))


def test_calibration_options_are_checked_before_loading(tmp_path):
    never = str(tmp_path / "never-loaded")     # loading it would fail with a different error
    with pytest.raises(ExportError, match="missing.jsonl: calibration data not found"):
        fuse(FuseOptions(out=tmp_path / "o", model=never, to_gguf=True, quant="q4_k_m",
                         calibration=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ExportError, match="--calibration-tokens must be positive"):
        fuse(FuseOptions(out=tmp_path / "o", model=never, to_gguf=True, quant="q4_k_m", calibration_tokens=0))
    assert not (tmp_path / "o").exists()
