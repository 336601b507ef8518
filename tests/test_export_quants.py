"""Q4_K / Q6_K block quantizers and the Q4_K_M mix, against llama.cpp's own quantizer."""

from __future__ import annotations

import iceburg_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)
import ctypes

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from iceburg_mlx.errors import ExportError
from iceburg_mlx.export import mix, quants

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def llama_q4_k_m(tiny_gguf, tmp_path_factory):
    """llama.cpp's Q4_K_M of the tiny F32 model, and the F32 source, read with gguf.GGUFReader."""
    src = tiny_gguf("F32")
    out = tmp_path_factory.mktemp("llq") / "tiny-q4km.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return gguf.GGUFReader(str(src)), gguf.GGUFReader(str(out))


def _rows(t) -> np.ndarray:
    return np.asarray(t.data, dtype=np.float32).reshape(-1, int(t.shape[0]))


@pytest.mark.llama_cpp
def test_k_quants_match_llama_cpp_bytes_and_error(llama_q4_k_m):
    src, ref = llama_q4_k_m
    source = {t.name: t for t in src.tensors}
    seen = set()
    for t in ref.tensors:
        if t.tensor_type not in quants.QUANTIZERS:
            continue
        x = _rows(source[t.name])
        ours = quants.quantize(x, t.tensor_type)
        theirs = np.asarray(t.data, dtype=np.uint8).reshape(ours.shape)
        err_ours = np.sqrt(np.mean((gguf.quants.dequantize(ours, t.tensor_type) - x) ** 2))
        err_ref = np.sqrt(np.mean((gguf.quants.dequantize(theirs, t.tensor_type) - x) ** 2))
        assert err_ours <= 1.001 * err_ref, t.name        # the requirement: error comparable to llama.cpp's
        assert np.array_equal(ours, theirs), t.name       # the bonus: the same bytes
        seen.add(t.tensor_type)
    assert seen == {Q.Q4_K, Q.Q6_K}


@pytest.mark.llama_cpp
def test_mix_plan_matches_llama_cpp(llama_q4_k_m):
    src, ref = llama_q4_k_m
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in src.tensors}
    shapes = {n: s[-2:] if len(s) > 1 and s[0] == 1 else s for n, s in shapes.items()}
    ours = mix.plan(mix.preset("q4_k_m"), {n: tuple(d for d in s if d != 1) or (1,) for n, s in shapes.items()},
                    n_layers=2)
    assert {t.name: t.tensor_type for t in ref.tensors} == ours


@pytest.mark.parametrize("qtype, rel", [(Q.Q4_K, 0.12), (Q.Q6_K, 0.03)])
def test_round_trip_through_gguf_dequantizer(qtype, rel):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 512)) * np.linspace(0.01, 3, 8)[:, None]).astype(np.float32)
    back = gguf.quants.dequantize(quants.quantize(x, qtype), qtype)
    assert back.shape == x.shape
    row_rel = np.sqrt(np.mean((back - x) ** 2, axis=1) / np.mean(x ** 2, axis=1))
    assert row_rel.max() < rel                     # per-row: scale-free (rows span 300x in magnitude)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K])
def test_degenerate_blocks(qtype):
    x = np.zeros((4, 256), dtype=np.float32)
    x[1] = 0.5                      # constant positive
    x[2] = -2.0                     # constant negative
    x[3, ::7] = 1e-3                # sparse and tiny
    back = gguf.quants.dequantize(quants.quantize(x, qtype), qtype)
    assert np.all(np.isfinite(back))
    np.testing.assert_array_equal(back[0], 0)
    np.testing.assert_allclose(back[1:3], x[1:3], rtol=0.02)
    np.testing.assert_allclose(back[3], x[3], atol=1e-4)


def test_rows_not_a_whole_number_of_blocks():
    with pytest.raises(ExportError, match="multiple of 256"):
        quants.quantize(np.ones((2, 300), np.float32), Q.Q4_K)
    with pytest.raises(ExportError, match="supported: F32"):
        quants.quantize(np.ones((2, 256), np.float32), Q.IQ2_XXS)


def test_fallbacks_and_more_bits_layers():
    assert mix.fit_type(Q.Q4_K, 576) == Q.Q5_0       # SmolLM2's 576-wide rows, as llama.cpp does
    assert mix.fit_type(Q.Q6_K, 576) == Q.Q8_0
    assert mix.fit_type(Q.Q4_0, 100) == Q.F16
    picked = [i for i in range(30) if mix.use_more_bits(i, 30)]
    assert picked == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]  # llama.cpp's SmolLM2 Q4_K_M
    p = mix.preset("q4_k_m")
    assert mix.tensor_type(p, "token_embd.weight", (1000, 512), 30, has_output=False) == Q.Q6_K  # tied head
    assert mix.tensor_type(p, "token_embd.weight", (1000, 512), 30, has_output=True) == Q.Q4_K
    assert mix.tensor_type(p, "blk.0.attn_norm.weight", (512,), 30, True) == Q.F32
    assert mix.tensor_type(mix.preset("q8_0"), "output.weight", (1000, 512), 30, True) == Q.Q8_0


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ExportError) as e:
        mix.preset("q3_k_xl")
    for name in ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k_m", "q6_k"):
        assert name in str(e.value)


def _ggml_quantize_chunk():
    """llama.cpp's own row quantizer (libggml-base), importance path included."""
    import os

    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_void_p]

    def run(x: np.ndarray, qtype: Q, importance: np.ndarray | None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        bs, ts = gguf.GGML_QUANT_SIZES[qtype]
        out = np.zeros((x.shape[0], x.shape[1] // bs * ts), dtype=np.uint8)
        imp = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
        fn(int(qtype), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
           None if imp is None else imp.ctypes.data)
        return out

    return run


@pytest.mark.llama_cpp
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q6_K])
def test_importance_path_matches_llama_cpp(qtype, monkeypatch):
    monkeypatch.setattr(quants, "CHUNK_BLOCKS", 5)   # one row per chunk: chunking must not matter
    ref = _ggml_quantize_chunk()
    rng = np.random.default_rng(int(qtype))
    cols = 512
    x = (rng.standard_normal((24, cols)) * rng.uniform(0.01, 0.2, (1, cols))).astype(np.float32)
    x[3, :32] = 0           # an all-zero block
    x[5, 32:64] = 0.25      # a flat one
    x[6, :16] = 0           # an all-zero sub-block of a K-quant super-block
    imp = rng.gamma(0.5, 1.0, cols).astype(np.float32)
    imp[7] = 0
    ours = quants.quantize(x, qtype, importance=imp)
    theirs = ref(x, qtype, imp)
    assert np.array_equal(ours, theirs)
    # weighting pays where it is asked to: less importance-weighted error than the plain quantizer
    plain = quants.quantize(x, qtype)
    werr = lambda b: float(np.sum(imp * (gguf.quants.dequantize(b, qtype) - x) ** 2))  # noqa: E731
    assert werr(ours) < werr(plain)
    if qtype in (Q.Q4_K, Q.Q6_K):   # and our plain K-quants are llama.cpp's reference bytes too
        assert np.array_equal(plain, ref(x, qtype, None))


def test_bad_importance_is_refused():
    with pytest.raises(ExportError, match="importance has 3 values for rows of 256"):
        quants.quantize(np.zeros((2, 256), np.float32), Q.Q4_K, importance=np.ones(3, np.float32))
    for bad in (np.nan, -1.0):
        imp = np.ones(256, np.float32)
        imp[9] = bad
        with pytest.raises(ExportError, match="finite and non-negative"):
            quants.quantize(np.zeros((2, 256), np.float32), Q.Q5_0, importance=imp)


def test_q8_0_ignores_importance():
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    assert np.array_equal(quants.quantize(x, Q.Q8_0, importance=np.ones(64, np.float32)),
                          quants.quantize(x, Q.Q8_0))
