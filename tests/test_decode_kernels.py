"""CPU decode kernels: products from packed (quantized) weights in the BLAS shim, table RoPE and
grouped-query attention, each against MLX's own kernels or NumPy."""

import gc
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import np_reference
import pytest

from iceburg_mlx.models import cpu_decode, load_model, packed
from iceburg_mlx.models.loader import dequantize_layers

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU BLAS shim")


def _quantized_linear(n, k, bits, group, seed, bias=False):
    mx.random.seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    q = nn.QuantizedLinear.from_linear(lin, group_size=group, bits=bits)
    return q


@linux
@pytest.mark.parametrize("bits,group", [(4, 32), (8, 32), (4, 64)])
@pytest.mark.parametrize("m", [1, 3, 4, 16, 17])
def test_packed_product_equals_numpy(bits, group, m):
    """x @ W.T from the packed form equals NumPy on the dequantized W, for 1..16 rows of x; 17
    rows go to OpenBLAS (the packed path is for decoding)."""
    n, k = 96, 256
    model = nn.Sequential(_quantized_linear(n, k, bits, group, seed=bits + group))
    dequantize_layers(model, mx.float32)
    lin = model.layers[0]
    w = np.array(lin.weight)
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    calls = packed.counts()[0]
    got = np.array(lin(mx.array(x)))
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-4, atol=1e-4)
    assert packed.counts()[0] == calls + (1 if m <= 16 else 0)
    with_x3 = np.array(lin(mx.array(x[None].repeat(2, 0))))  # batched rows: (2, m, k)
    np.testing.assert_allclose(with_x3, np.stack([x @ w.T] * 2), rtol=1e-4, atol=1e-4)


@linux
def test_packed_entry_lives_as_long_as_its_module():
    model = nn.Sequential(_quantized_linear(64, 128, 4, 32, seed=1))
    before = packed.counts()[1]
    dequantize_layers(model, mx.float32)
    assert packed.counts()[1] == before + 1
    del model
    gc.collect()
    assert packed.counts()[1] == before


@linux
def test_switched_off_packed_gives_the_same_product():
    model = nn.Sequential(_quantized_linear(64, 128, 4, 32, seed=2))
    dequantize_layers(model, mx.float32)
    x = mx.random.normal((1, 128))
    on = np.array(model(x))
    packed.set_enabled(False)
    try:
        calls = packed.counts()[0]
        off = np.array(model(x))
        assert packed.counts()[0] == calls
    finally:
        packed.set_enabled(True)
    np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-5)


@linux
@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_quantized_gguf_decodes_from_packed_weights(tiny_gguf, qtype):
    """A quantized GGUF loads with every 2-D weight registered, and a decode step's logits match
    the f32 path."""
    from mlx_lm.models.cache import make_prompt_cache

    m = load_model(str(tiny_gguf(qtype)))
    dense = [mod.weight for _, mod in m.model.named_modules() if isinstance(mod, (nn.Linear, nn.Embedding))]
    assert dense and all(np.asarray(w).ctypes.data in packed._ENTRIES for w in dense)
    cache = make_prompt_cache(m.model)
    m.model(mx.array([[3, 1, 4, 1, 5]]), cache=cache)
    calls = packed.counts()[0]
    with cpu_decode.decoding():
        on = m.model(mx.array([[9]]), cache=cache)
    mx.eval(on)
    assert packed.counts()[0] > calls
    for c in cache:
        c.offset -= 1
    packed.set_enabled(False)
    try:
        off = m.model(mx.array([[9]]), cache=cache)
        mx.eval(off)
    finally:
        packed.set_enabled(True)
    np.testing.assert_allclose(np.array(on), np.array(off), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("offset", [0, 7, 300, 4000])
@pytest.mark.parametrize("dims,head", [(64, 64), (32, 64)])
def test_table_rope_equals_mlx_rope(offset, dims, head):
    rope = nn.RoPE(dims, base=100000.0)
    table = cpu_decode.TableRoPE(rope)
    x = mx.random.normal((2, 5, 3, head))
    with cpu_decode.decoding():
        got = table(x, offset=offset)
    want = mx.fast.rope(x, dims, traditional=False, base=100000.0, scale=1.0, offset=offset)
    np.testing.assert_array_equal(np.array(got), np.array(want))
    assert not table.parameters()          # the table is not a model parameter


@pytest.mark.parametrize("n", [1, 3])
def test_table_rope_with_per_row_offsets_equals_mlx_rope(n):
    """Batched decoding: rows at different positions (an array of offsets) read their own rows."""
    table = cpu_decode.TableRoPE(nn.RoPE(64, base=100000.0))
    x = mx.random.normal((4, 9, n, 64))
    offsets = mx.array([0, 5, 300, 511])
    want = mx.fast.rope(x, 64, traditional=False, base=100000.0, scale=1.0, offset=offsets)
    with cpu_decode.decoding(max_offset=511):
        got = table(x, offset=offsets)
    np.testing.assert_array_equal(np.array(got), np.array(want))
    with cpu_decode.decoding():            # no bound given: MLX's kernel, same numbers
        np.testing.assert_array_equal(np.array(table(x, offset=offsets)), np.array(want))


def test_small_products_on_one_blas_thread_give_the_same_numbers():
    """The shim runs small-M products on one OpenBLAS thread; the numbers must not change."""
    import ctypes

    from iceburg_mlx import _platform

    shim = _platform.status().gemv_shim
    if not shim:
        pytest.skip("BLAS shim not loaded")
    lib, blas = ctypes.CDLL(shim), ctypes.CDLL(_platform.status().openblas)
    threads = blas.openblas_get_num_threads()
    x, a = mx.random.normal((16, 1, 576)), mx.random.normal((576, 128))
    try:
        lib.iceburg_blas_set_small_gemm(ctypes.c_long(-1))
        threaded = np.array(x @ a)
        lib.iceburg_blas_set_small_gemm(ctypes.c_long(1 << 40))
        single = np.array(x @ a)
    finally:
        lib.iceburg_blas_set_small_gemm(ctypes.c_long(1 << 22))
    assert blas.openblas_get_num_threads() == threads     # training's large products keep every thread
    np.testing.assert_allclose(single, threaded, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(single, np.array(x) @ np.array(a), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("L,mask_kind", [(1, None), (1, "bool"), (4, "add"), (2, "bool")])
def test_gqa_attention_equals_reference(L, mask_kind):
    rng = np.random.default_rng(L)
    q = mx.array(rng.standard_normal((2, 6, L, 16)).astype(np.float32))
    k = mx.array(rng.standard_normal((2, 2, 11, 16)).astype(np.float32))
    v = mx.array(rng.standard_normal((2, 2, 11, 16)).astype(np.float32))
    mask = None
    if mask_kind == "bool":
        m = rng.random((2, 1, L, 11)) > 0.3
        m[..., 0] = True
        mask = mx.array(m)
    elif mask_kind == "add":
        mask = mx.array(rng.standard_normal((2, 1, L, 11)).astype(np.float32))
    got = cpu_decode.gqa_attention(q, k, v, 0.25, mask)
    np.testing.assert_allclose(np.array(got), np_reference.attention(q, k, v, 0.25, mask), rtol=1e-5, atol=1e-5)


def test_gqa_attention_declines_what_it_does_not_cover():
    q, k = mx.zeros((1, 4, 9, 8)), mx.zeros((1, 2, 9, 8))
    assert cpu_decode.gqa_attention(q, k, k, 1.0) is None                        # > MAX_L new tokens
    assert cpu_decode.gqa_attention(q[:, :, :2], k, k, 1.0, "causal") is None    # causal over 2 new
    assert cpu_decode.gqa_attention(q[:, :, :1], k, k, 1.0, mx.zeros((1, 4, 1, 9))) is None  # per-head mask
