"""Fused Hugging Face directories reload in iceburg-mlx and mlx-lm with base + adapter outputs."""

from __future__ import annotations

import iceburg_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)
import json

import mlx.core as mx
import numpy as np
import pytest

from iceburg_mlx.errors import AdapterError
from iceburg_mlx.export import FuseOptions, fuse, hf_dir
from iceburg_mlx.models import load_model
from iceburg_mlx.adapters.layers import apply_lora, fuse_model
from iceburg_mlx.adapters.files import load_adapters, save_adapters

IDS = [5, 40, 41, 42, 100, 7, 9, 11, 3, 200]


def logits(model) -> np.ndarray:
    return np.array(model(mx.array([IDS]))[0].astype(mx.float32))


def make_adapter(base_spec: str, path, dora: bool = False, compute: str = "float32") -> np.ndarray:
    """Save a random (non-identity) adapter for `base_spec`; returns base + adapter logits."""
    loaded = load_model(base_spec, compute=compute)
    apply_lora(loaded.model, {"rank": 4, "alpha": 8, "dora": dora,
                              "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")})
    mx.random.seed(11)
    for _, m in loaded.model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape)
    save_adapters(loaded.model, path)
    return logits(loaded.model)


@pytest.mark.parametrize("dora", [False, True])
def test_fused_dir_reloads_in_iceburg_and_mlx_lm(tiny_hf, tmp_path, dora):
    from mlx_lm.utils import load as mlx_lm_load

    want = make_adapter(str(tiny_hf), tmp_path / "adapter", dora=dora)
    base = logits(load_model(str(tiny_hf), compute="float32").model)
    assert np.abs(want - base).max() > 0.05            # the adapter changes the outputs
    res = fuse(FuseOptions(out=tmp_path / "fused", model=str(tiny_hf), adapter=str(tmp_path / "adapter")))
    out = tmp_path / "fused"
    np.testing.assert_allclose(logits(load_model(str(out), compute="float32").model), want, atol=1e-4)
    model, tok = mlx_lm_load(str(out))
    np.testing.assert_allclose(logits(model), want, atol=1e-4)
    for name in ("config.json", "model.safetensors.index.json", "tokenizer.json", "generation_config.json",
                 "fuse.json"):
        assert (out / name).is_file(), name
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>")
    prov = json.loads((out / "fuse.json").read_text())
    assert prov["adapter"]["fine_tune_type"] == ("dora" if dora else "lora") and prov["format"] == "hf"
    assert set(prov["files"]) == {p.name for p in res.files if p.name != "fuse.json"}


def test_no_adapter_exports_the_base_and_shards_index(tiny_hf, tmp_path):
    loaded = load_model(str(tiny_hf), compute="float32")
    res = hf_dir.save_hf_dir(loaded.model, loaded.config, loaded.tokenizer, tmp_path, source_dir=tiny_hf,
                             max_shard_bytes=400_000)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 3 and not res.quantized
    index = json.loads((tmp_path / hf_dir.INDEX).read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    np.testing.assert_allclose(logits(load_model(str(tmp_path), compute="float32").model), logits(loaded.model),
                               atol=1e-6)


def test_quantized_base_stays_quantized_unless_dequantize(tiny_gguf, tmp_path):
    from mlx_lm.utils import load as mlx_lm_load

    src = str(tiny_gguf("Q4_1"))
    want = make_adapter(src, tmp_path / "adapter", compute="quantized")
    fuse(FuseOptions(out=tmp_path / "q", model=src, adapter=str(tmp_path / "adapter")))
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4 and cfg["quantization"]["group_size"] == 32
    model, _ = mlx_lm_load(str(tmp_path / "q"))
    ref = load_model(src, compute="quantized")                   # the same merge in memory
    load_adapters(ref.model, tmp_path / "adapter")
    fuse_model(ref.model, dequantize=False)
    np.testing.assert_allclose(logits(model), logits(ref.model), atol=1e-3)
    assert np.abs(logits(model) - want).max() < 0.2 * np.abs(want).max()   # requantized: 4-bit close
    fuse(FuseOptions(out=tmp_path / "d", model=src, adapter=str(tmp_path / "adapter"), dequantize=True))
    assert "quantization" not in json.loads((tmp_path / "d" / "config.json").read_text())
    # `want` ran the adapter over 4-bit matmuls (f16 scales); the dense merge is exact in f32
    np.testing.assert_allclose(logits(load_model(str(tmp_path / "d"), compute="float32").model), want, atol=1e-2)


def test_interrupted_hf_write_leaves_no_partial_file(tiny_hf, tmp_path, monkeypatch):
    loaded = load_model(str(tiny_hf), compute="float32")
    real, calls = mx.save_safetensors, []

    def failing(path, arrays, metadata=None):
        calls.append(path)
        real(path, arrays, metadata=metadata)   # the temporary file is complete on disk...
        if len(calls) == 2:
            raise OSError("disk full")          # ...and the write still fails before the rename

    monkeypatch.setattr(mx, "save_safetensors", failing)
    with pytest.raises(OSError, match="disk full"):
        hf_dir.save_hf_dir(loaded.model, loaded.config, loaded.tokenizer, tmp_path, max_shard_bytes=400_000)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 1 and names[0].startswith("model-00001-of-")   # the first shard; no temp, no index


def test_unknown_adapter_is_named(tiny_hf, tmp_path):
    with pytest.raises(AdapterError, match="not found"):
        fuse(FuseOptions(out=tmp_path, model=str(tiny_hf), adapter=str(tmp_path / "nope")))
