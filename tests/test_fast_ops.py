"""The polynomial exp / SiLU / softmax attention against NumPy and MLX, their vjps, and the swap."""

import mlx.core as mx
import mlx.nn as nn
import np_reference
import numpy as np
import pytest

from iceburg_mlx.models.fast_ops import attention, fast_silu, fast_swiglu, poly_exp


def test_poly_exp_matches_numpy():
    x = np.linspace(-80, 80, 200_001).astype(np.float32)
    rel = np.abs(np.array(poly_exp(mx.array(x))) / np.exp(x.astype(np.float64)) - 1)
    assert rel.max() < 1e-5                      # f32 rounding of x * log2(e) dominates out here
    assert rel[np.abs(x) <= 10].max() < 1.5e-6   # where SiLU's inputs live


def test_fast_silu_and_its_gradient():
    x = np.linspace(-30, 30, 10_001).astype(np.float32)
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(np.array(fast_silu(mx.array(x))), x * s, rtol=1e-6, atol=1e-7)
    g = mx.grad(lambda v: fast_silu(v).sum())(mx.array(x))
    np.testing.assert_allclose(np.array(g), s * (1 + x * (1 - s)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(g), np.array(mx.grad(lambda v: nn.silu(v).sum())(mx.array(x))),
                               rtol=1e-4, atol=1e-5)


def test_swap_is_scoped_and_equivalent(tiny_gguf):
    import mlx_lm.models.llama as llama

    from iceburg_mlx.models import load_model

    m = load_model(str(tiny_gguf("F32"))).model
    ids = mx.array([[3, 50, 90, 120, 7]])
    before = np.array(m(ids))
    original, sdpa = llama.swiglu, llama.scaled_dot_product_attention
    with fast_swiglu(m) as applied:
        inside = np.array(m(ids))
        assert applied == (not mx.metal.is_available())
        assert llama.scaled_dot_product_attention is not sdpa or not applied
    assert llama.swiglu is original and llama.scaled_dot_product_attention is sdpa
    np.testing.assert_allclose(inside, before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask_kind", [None, "causal", "packed"])
def test_training_attention_and_its_gradients(mask_kind):
    """Grouped-query attention on the polynomial softmax: values against NumPy, gradients of q, k
    and v against autodiff of MLX's own attention on expanded heads."""
    B, hq, hkv, L, D = 2, 6, 2, 7, 8
    q, k, v = mx.random.normal((B, hq, L, D)), mx.random.normal((B, hkv, L, D)), mx.random.normal((B, hkv, L, D))
    causal = np.tril(np.ones((L, L), dtype=bool))[None, None]
    if mask_kind == "packed":     # two conversations in one row: no attention across the boundary
        m = causal.copy()
        m[..., 4:, :4] = False
        mask = mx.array(np.broadcast_to(m, (B, 1, L, L)))
    else:
        mask = mask_kind
    np_mask = None if mask_kind is None else (causal if mask_kind == "causal" else np.array(mask))
    got = attention(q, k, v, 0.3, mask)
    np.testing.assert_allclose(np.array(got), np_reference.attention(q, k, v, 0.3, np_mask), rtol=1e-5, atol=1e-5)

    def reference(q, k, v):
        g = hq // hkv
        return mx.fast.scaled_dot_product_attention(q, mx.repeat(k, g, axis=1), mx.repeat(v, g, axis=1),
                                                    scale=0.3, mask=mask)

    w = mx.random.normal((B, hq, L, D))
    ours = mx.grad(lambda *a: (attention(*a, 0.3, mask) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    theirs = mx.grad(lambda *a: (reference(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5)
