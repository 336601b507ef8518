"""`iceburg-mlx train` on the embedded default, and the adapter it registers loaded by mlx-lm."""

import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

pytestmark = pytest.mark.smollm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_registers_an_adapter_that_mlx_lm_loads(smollm_path, tmp_path):
    env = dict(os.environ, ICEBURG_MLX_ADAPTERS=str(tmp_path / "reg"))
    r = subprocess.run([sys.executable, "-m", "iceburg_mlx.cli", "train", "recipes/oracle.yaml",
                        "--set", "train.steps=2", "--set", "data.max_seq_len=192", "--set", "eval.every=0",
                        "--set", "train.batch_size=2", "--adapters-dir", str(tmp_path / "reg"),
                        "--runs-dir", str(tmp_path / "runs")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "registered oracle@1" in r.stdout
    entry = tmp_path / "reg" / "oracle" / "1"
    for f in ("adapters.safetensors", "adapter_config.json", "recipe.yaml", "metrics.jsonl", "provenance.json"):
        assert (entry / f).is_file(), f

    from iceburg_mlx.export import FuseOptions, fuse
    from iceburg_mlx.adapters import load_with_adapter
    from iceburg_mlx.models import load_model

    ours = load_with_adapter(adapter=str(entry))
    hf_dir = tmp_path / "smollm2-hf"
    fuse(FuseOptions(out=hf_dir, dequantize=True))  # the same base in Hugging Face layout
    from mlx_lm.utils import load as mlx_lm_load

    theirs, _ = mlx_lm_load(str(hf_dir), adapter_path=str(entry))
    theirs.set_dtype(mx.float32)
    ids = mx.array([[1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575]])
    a = np.array(ours.model(ids))
    b = np.array(theirs(ids).astype(mx.float32))
    base = np.array(load_model().model(ids))
    assert np.abs(a - base).max() > 1e-3  # the adapter changes the output
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)
