"""Linux CPU set-up: OpenBLAS preload, the sgemm->sgemv shim (checked against NumPy), malloc env."""

import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from iceburg_mlx import _platform

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU set-up")


@linux
def test_openblas_and_shim_loaded():
    st = _platform.status()
    assert st.openblas, st.openblas_note
    assert st.gemv_shim, st.gemv_note


@linux
@pytest.mark.parametrize("m,n,k", [(1, 7, 5), (1, 300, 64), (5, 1, 9), (1, 1, 33), (4, 6, 3)])
def test_matmul_through_the_shim_equals_numpy(m, n, k):
    rng = np.random.default_rng(m * 100 + n + k)
    a, at = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, m), np.float32)
    b, bt = rng.standard_normal((k, n), np.float32), rng.standard_normal((n, k), np.float32)
    before = _platform.gemv_counts()
    cases = [(a, b), (a, bt.T), (at.T, b), (at.T, bt.T)]
    for x, y in cases:
        # transposed operands are built in MLX so the matmul sees strided (transposed) inputs
        mx_x = mx.array(x) if x.base is None else mx.array(at).T
        mx_y = mx.array(y) if y.base is None else mx.array(bt).T
        got = np.array(mx_x @ mx_y)
        np.testing.assert_allclose(got, x @ y, rtol=1e-4, atol=1e-4)
    c = rng.standard_normal((m, n), np.float32)
    got = np.array(mx.addmm(mx.array(c), mx.array(a), mx.array(b), alpha=0.5, beta=2.0))
    np.testing.assert_allclose(got, 2 * c + 0.5 * (a @ b), rtol=1e-4, atol=1e-4)
    after = _platform.gemv_counts()
    if m == 1 or n == 1:
        assert after[0] > before[0]  # the matrix-vector path was taken
    else:
        assert after[1] > before[1]


@linux
def test_batched_matvec_equals_numpy():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 1, 40), np.float32), rng.standard_normal((3, 40, 24), np.float32)
    np.testing.assert_allclose(np.array(mx.array(x) @ mx.array(w)), x @ w, rtol=1e-4, atol=1e-4)


def test_malloc_env():
    env = _platform.malloc_env({"PATH": "/bin"})
    if sys.platform.startswith("linux"):
        assert env["GLIBC_TUNABLES"] == _platform.MALLOC_TUNABLES
        assert _platform.malloc_env({"GLIBC_TUNABLES": _platform.MALLOC_TUNABLES}) is None
        merged = _platform.malloc_env({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
        assert merged["GLIBC_TUNABLES"].startswith("glibc.pthread.rseq=0:glibc.malloc.mmap_max=0")
    assert _platform.malloc_env({_platform.OPT_OUT_ENV: "1"}) is None or not sys.platform.startswith("linux")


@linux
def test_opt_out_skips_everything():
    code = ("import iceburg_mlx, json; s = iceburg_mlx._platform.status();"
            "print(json.dumps([s.opted_out, s.openblas, s.gemv_shim]))")
    env = dict(os.environ, ICEBURG_MLX_NO_TUNE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[true, null, null]"
    env = dict(os.environ, ICEBURG_MLX_NO_GEMV="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    opted, blas, shim = __import__("json").loads(out.stdout)
    assert not opted and blas and shim is None
