"""LoRA / DoRA layers: identity at init, NumPy forward, fuse, disable, save/load, mlx-lm compatibility."""

from __future__ import annotations

import json

import numpy as np
import pytest

import iceburg_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs
from mlx_lm.tuner.dora import DoRALinear as MlxLmDoRALinear
from mlx_lm.tuner.utils import load_adapters as mlx_lm_load_adapters

from iceburg_mlx.errors import AdapterError, ConfigError
from iceburg_mlx.train.config import LoraConfig
from iceburg_mlx.adapters.layers import DoRALinear, LoRALinear, adapter_layers, adapters_disabled, apply_lora, dense_weight, fuse_model
from iceburg_mlx.adapters.files import adapter_config_dict, load_adapters, save_adapters

ARGS = ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=256,
                 tie_word_embeddings=True)
TOKENS = mx.array([[1, 5, 9, 200, 3, 77, 12, 4], [8, 8, 1, 0, 255, 6, 30, 2]])


def tiny_model(seed: int = 0, quantized: bool = False) -> Model:
    mx.random.seed(seed)
    model = Model(ARGS)
    if quantized:
        nn.quantize(model, group_size=32, bits=4)
    mx.eval(model.parameters())
    return model


def base_linear(kind: str, bias: bool = True) -> nn.Module:
    mx.random.seed(1)
    lin = nn.Linear(64, 48, bias=bias)
    if bias:
        lin.bias = mx.random.normal((48,))
    if kind == "quantized":
        lin = nn.QuantizedLinear.from_linear(lin, group_size=32, bits=4)
    mx.eval(lin.parameters())
    return lin


def randomize(layer: LoRALinear, seed: int = 2) -> None:
    """Pretend the adapter was trained: non-zero B (and a changed magnitude for DoRA)."""
    mx.random.seed(seed)
    layer.lora_b = 0.2 * mx.random.normal(layer.lora_b.shape)
    if isinstance(layer, DoRALinear):
        layer.m = layer.m * (1.0 + 0.2 * mx.random.normal(layer.m.shape))
    mx.eval(layer.parameters())


def np_(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


X = mx.random.normal((3, 5, 64), key=mx.random.key(7))


@pytest.mark.parametrize("kind", ["linear", "quantized"])
@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_fresh_adapter_equals_base(kind, cls):
    base = base_linear(kind)
    layer = cls.from_base(base, r=4, alpha=8.0)
    assert layer.lora_a.shape == (64, 4) and layer.lora_b.shape == (4, 48)
    assert not np.any(np_(layer.lora_b)) and layer.scale == 2.0
    np.testing.assert_allclose(np_(layer(X)), np_(base(X)), rtol=1e-5, atol=1e-5)
    if cls is DoRALinear:
        w = np_(dense_weight(base))
        np.testing.assert_allclose(np_(layer.m), np.linalg.norm(w, axis=1), rtol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "quantized"])
def test_forward_matches_numpy(kind):
    base = base_linear(kind)
    w, b, x = np_(dense_weight(base)), np_(base.bias), np_(X)
    lora = LoRALinear.from_base(base, r=4, alpha=12.0)
    randomize(lora)
    a, bb = np_(lora.lora_a), np_(lora.lora_b)
    ref = x @ w.T + b + 3.0 * (x @ a) @ bb
    np.testing.assert_allclose(np_(lora(X)), ref, rtol=1e-4, atol=1e-4)

    dora = DoRALinear.from_base(base, r=4, alpha=12.0)
    randomize(dora)
    a, bb, m = np_(dora.lora_a), np_(dora.lora_b), np_(dora.m)
    adapted = w + 3.0 * (a @ bb).T
    ref = (x @ adapted.T) * (m / np.linalg.norm(adapted, axis=1)) + b
    np.testing.assert_allclose(np_(dora(X)), ref, rtol=1e-4, atol=1e-4)


def test_dora_gradients_match_mlx_lm():
    base = base_linear("linear")
    ours = DoRALinear.from_base(base, r=4, alpha=8.0)
    randomize(ours)
    theirs = MlxLmDoRALinear.from_base(base, r=4, scale=2.0)
    theirs.update({"lora_a": ours.lora_a, "lora_b": ours.lora_b, "m": ours.m})

    def grads(layer):
        def f(params):
            layer.update(params)
            return (layer(X) ** 2).sum()
        return mx.grad(f)({k: layer[k] for k in ("lora_a", "lora_b", "m")})
    g1, g2 = grads(ours), grads(theirs)
    for k in g1:
        np.testing.assert_allclose(np_(g1[k]), np_(g2[k]), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
@pytest.mark.parametrize("kind", ["linear", "quantized"])
def test_fuse_equals_adapter_forward(cls, kind):
    base = base_linear(kind)
    layer = cls.from_base(base, r=4, alpha=8.0)
    randomize(layer)
    want = np_(layer(X))
    fused = layer.fuse(dequantize=True)
    assert type(fused) is nn.Linear and "bias" in fused
    np.testing.assert_allclose(np_(fused(X)), want, rtol=1e-4, atol=1e-4)
    if kind == "quantized":
        q = layer.fuse()
        assert type(q) is nn.QuantizedLinear and (q.group_size, q.bits) == (32, 4)
        # requantization error only: well below the size of the adapter's contribution
        err = np.abs(np_(q(X)) - want).max()
        assert err < 0.1 * np.abs(want - np_(base(X))).max()


def test_adapters_disabled_gives_base_and_restores():
    ref = tiny_model()
    model = tiny_model()
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dora=True))
    for _, layer in adapter_layers(model):
        randomize(layer)
    adapted = np_(model(TOKENS))
    assert np.abs(adapted - np_(ref(TOKENS))).max() > 1e-2
    with adapters_disabled(model):
        np.testing.assert_allclose(np_(model(TOKENS)), np_(ref(TOKENS)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np_(model(TOKENS)), adapted)


def test_apply_lora_freezes_base_and_targets_last_blocks():
    model = tiny_model()
    n = apply_lora(model, LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj", "mlp.down_proj"), layers=1))
    assert n == 2
    names = {k for k, _ in tree_flatten(model.trainable_parameters())}
    assert names == {f"model.layers.1.{p}.{leaf}" for p in ("self_attn.q_proj", "mlp.down_proj")
                     for leaf in ("lora_a", "lora_b")}
    assert isinstance(model.layers[0].self_attn.q_proj, nn.Linear)
    cfg = adapter_config_dict(model)
    assert cfg["num_layers"] == 1 and cfg["fine_tune_type"] == "lora"
    assert cfg["lora_parameters"] == {"rank": 4, "scale": 2.0, "dropout": 0.0, "alpha": 8.0,
                                      "keys": ["mlp.down_proj", "self_attn.q_proj"]}
    with pytest.raises(AdapterError, match="already has adapters"):
        apply_lora(model, LoraConfig())
    assert apply_lora(tiny_model(), LoraConfig(layers=-1)) == 14
    with pytest.raises(ConfigError, match="none of \\['qproj'\\] found"):
        apply_lora(tiny_model(), LoraConfig(target_modules=("qproj",)))


def test_qlora_base_stays_quantized_and_frozen():
    model = tiny_model(quantized=True)
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj")))
    layer = model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoRALinear) and isinstance(layer.linear, nn.QuantizedLinear)
    names = {k for k, _ in tree_flatten(model.trainable_parameters())}
    assert names and all(k.rsplit(".", 1)[1] in ("lora_a", "lora_b") for k in names)

    def loss(params):
        model.update(params)
        return model(TOKENS).astype(mx.float32).square().mean()
    grads = mx.grad(loss)(model.trainable_parameters())
    assert {k for k, _ in tree_flatten(grads)} == names


@pytest.mark.parametrize("dora", [False, True])
def test_save_load_round_trip_and_mlx_lm_compat(tmp_path, dora):
    model = tiny_model()
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.05, layers=1, dora=dora,
                                 target_modules=("q_proj", "v_proj", "gate_proj")))
    for _, layer in adapter_layers(model):
        randomize(layer)
    model.eval()  # no dropout when comparing
    want = np_(model(TOKENS))
    out = save_adapters(model, tmp_path / "ad", extra_config={"base_model": "tiny"})
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapters.safetensors"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == ("dora" if dora else "lora") and cfg["base_model"] == "tiny"
    assert cfg["lora_parameters"]["dropout"] == 0.05

    ours = load_adapters(tiny_model(), out)
    ours.eval()
    np.testing.assert_allclose(np_(ours(TOKENS)), want, rtol=1e-5, atol=1e-5)
    assert {k for k, _ in tree_flatten(ours.trainable_parameters())} == \
           {k for k, _ in tree_flatten(model.trainable_parameters())}

    theirs = mlx_lm_load_adapters(tiny_model(), str(out))
    theirs.eval()
    np.testing.assert_allclose(np_(theirs(TOKENS)), want, rtol=1e-4, atol=1e-4)
    assert type(theirs.layers[1].self_attn.q_proj).__name__ == ("DoRALinear" if dora else "LoRALinear")
    assert isinstance(theirs.layers[0].self_attn.q_proj, nn.Linear)

    # loading into a model that already has the same adapters just sets the weights (DPO init)
    again = tiny_model()
    apply_lora(again, LoraConfig(rank=4, alpha=8.0, layers=1, dora=dora,
                                 target_modules=("q_proj", "v_proj", "gate_proj")))
    load_adapters(again, out)
    again.eval()
    np.testing.assert_allclose(np_(again(TOKENS)), want, rtol=1e-5, atol=1e-5)


def test_load_adapters_rejects_misfits(tmp_path):
    model = tiny_model()
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj",)))
    save_adapters(model, tmp_path)
    file = str(tmp_path / "adapters.safetensors")
    weights = mx.load(file)
    weights["model.layers.0.self_attn.q_proj.lora_a"] = mx.zeros((64, 3))
    mx.save_safetensors(file, weights)
    with pytest.raises(AdapterError, match=r"q_proj.lora_a: shape \(64, 3\) != model's \(64, 4\)"):
        load_adapters(tiny_model(), tmp_path)
    weights["model.layers.0.self_attn.k_proj.lora_a"] = mx.zeros((64, 4))
    mx.save_safetensors(file, weights)
    with pytest.raises(AdapterError, match="k_proj.lora_a: not an adapter parameter"):
        load_adapters(tiny_model(), tmp_path)
    with pytest.raises(AdapterError, match="no adapter config"):
        load_adapters(tiny_model(), tmp_path / "missing")


def test_fuse_model_replaces_every_adapter():
    model = tiny_model()
    apply_lora(model, LoraConfig(rank=4, alpha=8.0))
    for _, layer in adapter_layers(model):
        randomize(layer)
    want = np_(model(TOKENS))
    assert fuse_model(model) == 14
    assert not adapter_layers(model)
    np.testing.assert_allclose(np_(model(TOKENS)), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dora", [False, True])
def test_mlx_lm_utils_load_with_adapter_path(tmp_path, tiny_hf, dora):
    """`mlx_lm.utils.load(model_dir, adapter_path=...)` loads what save_adapters wrote."""
    from mlx_lm.utils import load

    model, _ = load(str(tiny_hf))
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, layers=1, dora=dora))
    for _, layer in adapter_layers(model):
        randomize(layer)
    model.eval()
    want = np_(model(TOKENS))
    save_adapters(model, tmp_path / "adapter")
    loaded, _ = load(str(tiny_hf), adapter_path=str(tmp_path / "adapter"))
    np.testing.assert_allclose(np_(loaded(TOKENS)), want, rtol=1e-4, atol=1e-4)


def test_load_into_adapters_of_another_layout_is_refused(tmp_path):
    model = tiny_model()
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj",)))
    save_adapters(model, tmp_path)
    other = tiny_model()
    apply_lora(other, LoraConfig(rank=4, alpha=16.0, target_modules=("q_proj",)))
    with pytest.raises(AdapterError, match="scale 2"):
        load_adapters(other, tmp_path)
    dora = tiny_model()
    apply_lora(dora, LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj",), dora=True))
    with pytest.raises(AdapterError, match="does not match"):
        load_adapters(dora, tmp_path)
