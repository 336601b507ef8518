"""The GGUF loader against the safetensors original, gguf's NumPy dequantizers and llama.cpp."""

import json

import mlx.core as mx
import numpy as np
import pytest

import tiny
from iceburg_mlx.errors import BadModelFileError, UnsupportedModelError
from iceburg_mlx.models import load_model

IDS = [[5, 80, 120, 33, 200, 7, 90, 150, 11, 64]]


def logits(loaded) -> np.ndarray:
    return np.array(loaded.model(mx.array(IDS)).astype(mx.float32))


def rel_err(a, b) -> float:
    return float(np.sqrt(((a - b) ** 2).mean() / (b**2).mean()))


def quant_roundtrip_reference(hf_dir, qtype: str) -> np.ndarray:
    """Logits of the original model with each 2-D weight passed through gguf's (de)quantizer."""
    import gguf
    from safetensors.numpy import load_file, save_file

    q = getattr(gguf.GGMLQuantizationType, qtype)
    w = load_file(str(hf_dir / "model.safetensors"))
    w = {k: (gguf.quants.dequantize(gguf.quants.quantize(v, q), q).astype(np.float32) if v.ndim == 2 else v)
         for k, v in w.items()}
    ref_dir = hf_dir.parent / f"ref-{qtype}"
    ref_dir.mkdir(exist_ok=True)
    for f in hf_dir.iterdir():
        if f.name != "model.safetensors":
            (ref_dir / f.name).write_bytes(f.read_bytes())
    save_file(w, str(ref_dir / "model.safetensors"))
    return logits(load_model(str(ref_dir)))


def test_hf_and_gguf_give_the_same_logits(tiny_hf, tiny_gguf):
    """The canonical layout: q/k un-permuted at load, so GGUF F32 == the HF original."""
    hf, gg = load_model(str(tiny_hf)), load_model(str(tiny_gguf("F32")))
    assert gg.compute == "float32"
    np.testing.assert_allclose(logits(gg), logits(hf), rtol=1e-5, atol=1e-5)
    # and the weights themselves are in Hugging Face order
    q_hf = np.array(hf.model.layers[0].self_attn.q_proj.weight)
    q_gg = np.array(gg.model.layers[0].self_attn.q_proj.weight)
    np.testing.assert_array_equal(q_gg, q_hf)


@pytest.mark.parametrize("qtype,tol", [("F16", 2e-3), ("BF16", 1e-2), ("Q8_0", 3e-2), ("Q4_0", 0.3), ("Q4_1", 0.3)])
def test_each_gguf_type_matches_original_within_its_tolerance(tiny_hf, tiny_gguf, qtype, tol):
    loaded = load_model(str(tiny_gguf(qtype)))
    got = logits(loaded)
    assert rel_err(got, logits(load_model(str(tiny_hf)))) < tol
    # exact against gguf's own dequantization of the same blocks (independent reference)
    np.testing.assert_allclose(got, quant_roundtrip_reference(tiny_hf, qtype), rtol=2e-4, atol=2e-4)


def test_quantized_gguf_kept_quantized_on_request(tiny_gguf):
    import mlx.nn as nn

    loaded = load_model(str(tiny_gguf("Q4_1")), compute="quantized")
    assert loaded.compute == "quantized"
    assert isinstance(loaded.model.layers[0].mlp.up_proj, nn.QuantizedLinear)
    f32 = load_model(str(tiny_gguf("Q4_1")))
    assert rel_err(logits(loaded), logits(f32)) < 5e-3  # MLX's quantized matmul accumulates in f16


@pytest.mark.llama_cpp
def test_q4_k_m_quantized_by_llama_cpp_loads(tiny_hf, tiny_gguf, tmp_path):
    import gguf
    import llama_cpp

    src = tiny_gguf("F32")
    out = tmp_path / "tiny-Q4_K_M.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) == 0
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert kinds & {"Q4_K", "Q6_K", "Q5_K"}, kinds
    got = logits(load_model(str(out)))
    assert rel_err(got, logits(load_model(str(tiny_hf)))) < 0.2


@pytest.mark.llama_cpp
def test_logits_match_llama_cpp(tiny_gguf):
    """llama.cpp reads the same F32 file: its logits equal ours (config, rope, permutation)."""
    import llama_cpp

    path = tiny_gguf("F32")
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    llm.eval(IDS[0])
    theirs = np.array(llm.scores[: len(IDS[0])], dtype=np.float32)
    ours = logits(load_model(str(path)))[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)


def test_qwen2_gguf_with_biases_matches_hf(tmp_path):
    hf = tiny.write_hf_dir(tmp_path / "qwen", model_type="qwen2")
    gg = tiny.write_gguf(hf, tmp_path / "qwen.gguf", "F32")
    a, b = load_model(str(hf)), load_model(str(gg))
    assert b.config["model_type"] == "qwen2"
    np.testing.assert_allclose(logits(b), logits(a), rtol=1e-5, atol=1e-5)


def test_gguf_tokenizer_matches_the_hf_tokenizer(tiny_hf, tiny_gguf):
    hf, gg = load_model(str(tiny_hf)), load_model(str(tiny_gguf("F16")))
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the tin man, then?"}]
    assert gg.tokenizer.apply_chat_template(msgs, add_generation_prompt=True) == \
        hf.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    assert gg.tokenizer.decode(gg.tokenizer.encode("there in the end")) == "there in the end"
    assert 2 in gg.tokenizer.eos_token_ids


# --- bad input: one typed error with a clear message ---------------------------------------

def test_truncated_gguf_is_named(tiny_gguf, tmp_path):
    data = tiny_gguf("Q8_0").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadModelFileError, match="truncated"):
        load_model(str(cut))
    cut.write_bytes(data[:100])
    with pytest.raises(BadModelFileError, match="truncated"):
        load_model(str(cut))


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 not a gguf at all" * 4)
    with pytest.raises(BadModelFileError, match="not a GGUF"):
        load_model(str(p))


def _write_raw(path, arch, tensors):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for name, arr, raw in tensors:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture_is_named(tmp_path):
    p = _write_raw(tmp_path / "g.gguf", "gpt2", [("token_embd.weight", np.zeros((4, 32), np.float32), None)])
    with pytest.raises(UnsupportedModelError, match="architecture 'gpt2'"):
        load_model(str(p))


def test_unsupported_tensor_type_is_named(tiny_hf, tmp_path):
    import gguf

    # Q8_1 is an activation type llama.cpp never stores; nothing can dequantize it here.
    raw = np.zeros((1, 8 * gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1][1]), dtype=np.uint8)
    src = tiny.write_gguf(tiny_hf, tmp_path / "t.gguf", "F32")
    # rewrite with one tensor replaced by a Q8_1 one
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        w.add_key_value(f.name, f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        if t.name == "output_norm.weight":
            w.add_tensor(t.name, raw, raw_dtype=gguf.GGMLQuantizationType.Q8_1)
        else:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match="Q8_1"):
        load_model(str(tmp_path / "bad.gguf"))


def test_config_json_round_trip_of_metadata(tiny_hf, tiny_gguf):
    from iceburg_mlx.models import gguf_loader
    from iceburg_mlx.models.gguf_file import read_gguf

    cfg = gguf_loader.model_config(read_gguf(tiny_gguf("F32")))
    orig = json.loads((tiny_hf / "config.json").read_text())
    for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "tie_word_embeddings"):
        assert cfg[k] == orig[k], k
    assert cfg["rope_theta"] == pytest.approx(orig["rope_theta"])
