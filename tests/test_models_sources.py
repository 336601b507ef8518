"""Model sources other than a GGUF path: mlx-community dirs, the Hub cache, the Ollama store."""

import hashlib
import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from iceburg_mlx.errors import ModelNotFoundError
from iceburg_mlx.models import load_model, resolve

IDS = mx.array([[3, 70, 140, 21, 99, 180]])


def out(loaded):
    return np.array(loaded.model(IDS).astype(mx.float32))


@pytest.fixture(scope="module")
def mlx_q4_dir(tiny_hf, tmp_path_factory):
    """The tiny model converted by mlx-lm itself to its 4-bit layout (`quantization` in config.json)."""
    from mlx_lm import convert

    dest = tmp_path_factory.mktemp("mlxq") / "tiny-4bit"
    convert(str(tiny_hf), str(dest), quantize=True, q_group_size=64, q_bits=4)
    assert json.loads((dest / "config.json").read_text())["quantization"]["bits"] == 4
    return dest


def test_mlx_quantized_dir_dequantized_on_cpu(mlx_q4_dir, tiny_hf):
    loaded = load_model(str(mlx_q4_dir))
    assert loaded.compute == "float32"
    assert isinstance(loaded.model.layers[0].self_attn.q_proj, nn.Linear)
    ref = out(load_model(str(tiny_hf)))
    got = out(loaded)
    assert np.sqrt(((got - ref) ** 2).mean() / (ref**2).mean()) < 0.3
    kept = load_model(str(mlx_q4_dir), compute="quantized")
    assert isinstance(kept.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    np.testing.assert_allclose(out(kept), got, rtol=2e-2, atol=2e-2)


def _fake_hub_cache(root, repo, src_dir):
    commit = hashlib.sha1(repo.encode()).hexdigest()
    base = root / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    shutil.copytree(src_dir, snap)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    return snap


def test_hub_repo_from_local_cache(tiny_hf, tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    _fake_hub_cache(tmp_path, "test-org/tiny-llama", tiny_hf)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    src = resolve("test-org/tiny-llama")
    assert src.kind == "hub" and src.repo == "test-org/tiny-llama"
    loaded = load_model("test-org/tiny-llama")
    np.testing.assert_allclose(out(loaded), out(load_model(str(tiny_hf))), rtol=1e-6, atol=1e-6)


def test_hub_repo_missing_offline_names_the_repo(tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="test-org/absent.*huggingface-cli download"):
        load_model("test-org/absent")


def _fake_ollama_store(root, name, tag, gguf_path):
    data = gguf_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    mdir = root / "manifests" / "registry.ollama.ai" / "library" / name
    mdir.mkdir(parents=True, exist_ok=True)
    manifest = {"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 10},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)},
    ]}
    (mdir / tag).write_text(json.dumps(manifest))


def test_ollama_names_resolve_through_the_store(tiny_gguf, tmp_path, monkeypatch):
    _fake_ollama_store(tmp_path, "tinyllama", "1b", tiny_gguf("Q8_0"))
    _fake_ollama_store(tmp_path, "tinyllama", "latest", tiny_gguf("Q8_0"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    for name in ("tinyllama:1b", "tinyllama", "library/tinyllama:latest"):
        src = resolve(name)
        assert src.origin == "ollama" and src.path.name.startswith("sha256-"), name
    loaded = load_model("tinyllama:1b")
    np.testing.assert_allclose(out(loaded), out(load_model(str(tiny_gguf("Q8_0")))), rtol=1e-6, atol=1e-6)


def test_ollama_name_not_in_store(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"'qwen2.5:7b' is not in the store.*ollama pull qwen2.5:7b"):
        load_model("qwen2.5:7b")


def test_unknown_name_and_missing_path(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="unknown model 'nonsense'"):
        resolve("nonsense")
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve(str(tmp_path / "absent.gguf"))


def test_default_alias_resolves_offline(smollm_path):
    src = resolve(None)
    assert src.origin == "default" and src.path.name == smollm_path.name
    assert resolve("smollm2-135m-instruct").path == src.path


def test_default_missing_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("ICEBURG_MLX_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="iceburg-mlx models fetch"):
        resolve("smollm2-135m-instruct")
