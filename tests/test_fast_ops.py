"""The polynomial exp / SiLU against NumPy, its vjp against the exact derivative, and the swap."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from iceburg_mlx.train.fast_ops import fast_silu, fast_swiglu, poly_exp


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
    original = llama.swiglu
    with fast_swiglu(m) as applied:
        inside = np.array(m(ids))
        assert applied == (not mx.metal.is_available())
    assert llama.swiglu is original
    np.testing.assert_allclose(inside, before, rtol=1e-4, atol=1e-5)
