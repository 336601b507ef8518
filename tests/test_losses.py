"""Losses against NumPy: custom-vjp CE, masked SFT CE at gathered positions, DPO family."""

from __future__ import annotations

import math

import numpy as np
import pytest

import iceburg_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs

from iceburg_mlx.errors import ConfigError
from iceburg_mlx.train.config import LoraConfig
from iceburg_mlx.adapters.layers import adapter_layers, apply_lora
from iceburg_mlx.train.losses import (
    PREFERENCE_LOSSES,
    bucket,
    cross_entropy,
    gather_index,
    get_preference_loss,
    is_reference_free,
    lm_head,
    model_sft_loss,
    sequence_logprobs,
)

ARGS = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=256)


def np_(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    top = x.max(-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- cross-entropy

def test_cross_entropy_value_and_grad_match_numpy_and_mlx():
    rng = np.random.default_rng(0)
    logits_np = rng.normal(size=(6, 11)).astype(np.float32) * 3
    logits_np[2] += 500.0  # stability: huge logits
    targets_np = rng.integers(0, 11, size=6)
    weights_np = rng.uniform(0.5, 2.0, size=6).astype(np.float32)  # non-uniform cotangent
    logits, targets, weights = mx.array(logits_np), mx.array(targets_np), mx.array(weights_np)

    logp = np_log_softmax(logits_np)
    want = -logp[np.arange(6), targets_np]
    np.testing.assert_allclose(np_(cross_entropy(logits, targets)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(cross_entropy(logits, targets, for_grad=False)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(nn.losses.cross_entropy(logits, targets)), want, rtol=1e-5, atol=1e-5)

    onehot = np.eye(11)[targets_np]
    want_grad = (np.exp(logp) - onehot) * weights_np[:, None]
    ours = mx.grad(lambda x: (cross_entropy(x, targets) * weights).sum())(logits)
    theirs = mx.grad(lambda x: (nn.losses.cross_entropy(x, targets) * weights).sum())(logits)
    np.testing.assert_allclose(np_(ours), want_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(ours), np_(theirs), rtol=1e-5, atol=1e-6)


def test_cross_entropy_shapes_and_dtypes():
    logits = mx.random.normal((2, 3, 7), key=mx.random.key(1)).astype(mx.bfloat16)
    targets = mx.array([[0, 6, 3], [1, 1, 2]])
    loss = cross_entropy(logits, targets)
    assert loss.shape == (2, 3) and loss.dtype == mx.float32
    np.testing.assert_allclose(np_(loss), np_(nn.losses.cross_entropy(logits.astype(mx.float32), targets)),
                               rtol=1e-5)
    g = mx.grad(lambda x: cross_entropy(x, targets).sum())(logits)
    assert g.dtype == mx.bfloat16 and g.shape == logits.shape


# ----------------------------------------------------------------------------- masked SFT loss

def tiny(tied: bool = True) -> Model:
    mx.random.seed(3)
    model = Model(ModelArgs(**ARGS, tie_word_embeddings=tied))
    mx.eval(model.parameters())
    return model


def batch():
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 256, size=(3, 17))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = np.zeros(targets.shape, np.float32)
    mask[0, 4:9] = 1      # an assistant turn
    mask[1, 2:5] = 1      # two turns
    mask[1, 10:16] = 1
    mask[2, 15] = 1       # a single supervised token at the end
    return mx.array(inputs), mx.array(targets), mx.array(mask), targets, mask


@pytest.mark.parametrize("tied", [True, False])
def test_masked_ce_equals_full_vocab_ce(tied):
    model = tiny(tied)
    inputs, targets, mask, targets_np, mask_np = batch()
    logp = np_log_softmax(np_(model(inputs)))                 # full (B, L, V) logits
    tok = np.take_along_axis(logp, targets_np[..., None], -1)[..., 0]
    ntoks = mask_np.sum()
    want = -(tok * mask_np).sum() / ntoks

    k = bucket(int(ntoks), 8)
    assert k == 16 and k >= ntoks
    for kk, for_grad in ((k, True), (None, True), (k, False)):
        loss, n = model_sft_loss(model, inputs, targets, mask, kk, for_grad)
        assert n.item() == ntoks
        np.testing.assert_allclose(loss.item(), want, rtol=1e-5)

    for for_grad in (True, False):
        sums, counts = sequence_logprobs(lm_head(model), model.model(inputs), targets, mask, k, for_grad)
        np.testing.assert_allclose(np_(sums), (tok * mask_np).sum(1), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np_(counts), mask_np.sum(1))


def test_masked_ce_gradients_equal_full_vocab_reference_and_compile():
    model = tiny()
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj", "down_proj")))
    for _, layer in adapter_layers(model):
        layer.lora_b = 0.1 * mx.random.normal(layer.lora_b.shape, key=mx.random.key(9))
    inputs, targets, mask, _, _ = batch()

    def reference(m, x, t, w):
        ce = nn.losses.cross_entropy(m(x), t)
        return (ce * w).sum() / w.sum()

    def ours(m, x, t, w):
        return model_sft_loss(m, x, t, w, 16)[0]

    want_loss, want_grads = nn.value_and_grad(model, reference)(model, inputs, targets, mask)
    loss, grads = nn.value_and_grad(model, ours)(model, inputs, targets, mask)
    np.testing.assert_allclose(loss.item(), want_loss.item(), rtol=1e-5)
    flat_want = dict(tree_flatten(want_grads))
    assert flat_want.keys() == dict(tree_flatten(grads)).keys()
    for key, g in tree_flatten(grads):
        np.testing.assert_allclose(np_(g), np_(flat_want[key]), rtol=1e-3, atol=1e-5)

    loss_and_grad = nn.value_and_grad(model, ours)
    step = mx.compile(lambda x, t, w: loss_and_grad(model, x, t, w), inputs=model.state)
    c_loss, c_grads = step(inputs, targets, mask)
    np.testing.assert_allclose(c_loss.item(), want_loss.item(), rtol=1e-5)
    for key, g in tree_flatten(c_grads):
        np.testing.assert_allclose(np_(g), np_(flat_want[key]), rtol=1e-3, atol=1e-5)


def test_gather_index_and_bucket():
    mask = mx.array([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=mx.float32)
    idx, w = gather_index(mask, 5)
    assert sorted(np.array(idx)[:3].tolist()) == [1, 3, 4]
    np.testing.assert_array_equal(np_(w), [1, 1, 1, 0, 0])
    assert [bucket(n, 64) for n in (0, 1, 64, 65, 300)] == [64, 64, 64, 128, 320]


# ----------------------------------------------------------------------------- preference losses

PC = np.array([-10.0, -20.0, -5.0, -7.5])
PR = np.array([-12.0, -18.0, -9.0, -7.0])
RC = np.array([-11.0, -19.0, -6.0, -7.0])
RR = np.array([-11.0, -19.0, -8.0, -7.0])


def np_log_sigmoid(x):
    return -np.log1p(np.exp(-x))


def run(name, beta, eps=0.0, **kw):
    args = [mx.array(a, dtype=mx.float32) for a in (PC, PR, RC, RR)]
    losses, metrics = get_preference_loss(name)(*args, beta=beta, label_smoothing=eps, **kw)
    return np_(losses), {k: np_(v) for k, v in metrics.items()}


def test_dpo_sigmoid_hand_value_and_numpy():
    losses, metrics = run("sigmoid", 0.1)
    # row 0: z = (-10 + 11) - (-12 + 11) = 2  ->  -log sigmoid(0.2) = log(1 + e^-0.2)
    assert losses[0] == pytest.approx(math.log1p(math.exp(-0.2)), rel=1e-6)
    assert losses[0] == pytest.approx(0.598138869, rel=1e-6)
    z = (PC - RC) - (PR - RR)
    np.testing.assert_allclose(losses, -np_log_sigmoid(0.1 * z), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards_chosen"], 0.1 * (PC - RC), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards_rejected"], 0.1 * (PR - RR), rtol=1e-6)
    np.testing.assert_array_equal(metrics["accuracy"], [1, 0, 1, 0])   # z = 2, -2, 2, -0.5
    np.testing.assert_allclose(metrics["margin"], 0.1 * z, rtol=1e-6, atol=1e-7)


def test_dpo_sigmoid_label_smoothing():
    losses, _ = run("sigmoid", 0.5, eps=0.2)
    z = 0.5 * ((PC - RC) - (PR - RR))
    np.testing.assert_allclose(losses, -0.8 * np_log_sigmoid(z) - 0.2 * np_log_sigmoid(-z), rtol=1e-6)


def test_ipo_and_hinge():
    z = (PC - RC) - (PR - RR)
    losses, _ = run("ipo", 0.25)
    np.testing.assert_allclose(losses, (z - 2.0) ** 2, rtol=1e-6)   # 1 / (2 * 0.25) = 2
    assert losses[0] == pytest.approx(0.0)
    losses, _ = run("hinge", 0.1)
    np.testing.assert_allclose(losses, np.maximum(0, 1 - 0.1 * z), rtol=1e-6)
    assert losses[0] == pytest.approx(0.8) and losses[1] == pytest.approx(1.2)


def test_orpo_reference_free():
    pc, pr = np.array([-0.5, -1.2, -0.01]), np.array([-0.9, -0.8, -3.0])   # average log-probs
    nll = np.array([0.5, 1.2, 0.01])
    losses, metrics = PREFERENCE_LOSSES["orpo"](mx.array(pc, dtype=mx.float32), mx.array(pr, dtype=mx.float32),
                                                None, None, beta=0.2, chosen_nll=mx.array(nll, dtype=mx.float32))
    log_odds = (pc - np.log(-np.expm1(pc))) - (pr - np.log(-np.expm1(pr)))
    np.testing.assert_allclose(np_(losses), nll - 0.2 * np_log_sigmoid(log_odds), rtol=1e-5)
    np.testing.assert_allclose(np_(metrics["log_odds"]), log_odds, rtol=1e-5)
    np.testing.assert_array_equal(np_(metrics["accuracy"]), [1, 0, 1])
    assert is_reference_free("orpo") and not is_reference_free("sigmoid")


def test_registry_and_unknown_name():
    assert set(PREFERENCE_LOSSES) == {"sigmoid", "ipo", "hinge", "orpo"}
    with pytest.raises(ConfigError, match="unknown preference loss 'kto'; supported: hinge, ipo, orpo, sigmoid"):
        get_preference_loss("kto")
    with pytest.raises(ConfigError, match="reference log-probs"):
        get_preference_loss("sigmoid")(mx.array([0.0]), mx.array([0.0]), None, None, beta=0.1)
