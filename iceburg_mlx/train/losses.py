"""Training losses as pure functions of arrays.

SFT and DPO share one log-prob extraction, `selected_logprobs`: it gathers the supervised
positions of the body's hidden states *before* the lm_head, so the vocabulary projection and
the softmax run on K positions instead of B*L. K is a static count (see `bucket`): the gather
has a fixed shape and `mx.compile` retraces once per bucket, not per batch. Padding slots get
weight 0. The cross-entropy has a custom vjp that reuses the forward softmax.

Preference losses take per-example sequence log-probs and return (per-example losses, metrics);
they live in the `PREFERENCE_LOSSES` registry.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from iceburg_mlx.errors import ConfigError, UnsupportedModelError

Array = mx.array


# ----------------------------------------------------------------------------- cross-entropy

@mx.custom_function
def _ce_saving_exp(logits: Array, targets: Array) -> tuple[Array, Array, Array]:
    x = logits.astype(mx.float32)
    top = mx.max(x, axis=-1, keepdims=True)
    e = mx.exp(x - top)
    total = mx.sum(e, axis=-1, keepdims=True)
    picked = mx.take_along_axis(x, targets[:, None], axis=-1)
    return (top + mx.log(total) - picked).squeeze(-1), e, total


@_ce_saving_exp.vjp
def _ce_vjp(primals, cotangents, outputs):
    logits, targets = primals
    _, e, total = outputs  # exp saved by the forward: no second exp over the vocabulary
    dloss = cotangents[0][:, None]
    coef = dloss / total
    at_target = mx.take_along_axis(e, targets[:, None], axis=-1) * coef - dloss
    grad = mx.put_along_axis(e * coef, targets[:, None], at_target, axis=-1)
    return grad.astype(logits.dtype), mx.zeros_like(targets)


def cross_entropy(logits: Array, targets: Array, for_grad: bool = True) -> Array:
    """Per-position CE, -log softmax(logits)[target], in float32; shape = targets.shape.

    Same value as `nn.losses.cross_entropy`. With for_grad=True (training) the forward keeps
    exp(logits - max) and the backward is softmax - onehot from it: one exp over the vocabulary
    per step instead of two, and a smaller peak than autodiff of logsumexp. The saved array is
    computed even if no gradient is taken, so forward-only callers (evaluation, the DPO
    reference) pass for_grad=False for a plain logsumexp.
    """
    shape = targets.shape
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if for_grad:
        loss = _ce_saving_exp(logits, targets)[0]
    else:
        x = logits.astype(mx.float32)
        loss = mx.logsumexp(x, axis=-1) - mx.take_along_axis(x, targets[:, None], axis=-1)[:, 0]
    return loss.reshape(shape)


# ----------------------------------------------------------------------------- gathering

def bucket(n: int, multiple: int = 64) -> int:
    """A static gather size >= n: n rounded up to `multiple` (at least `multiple`)."""
    return max(multiple, -(-int(n) // multiple) * multiple)


def lm_head(model: nn.Module) -> Callable[[Array], Array]:
    """The vocabulary projection of an mlx-lm causal LM: `lm_head`, or the tied embedding."""
    head = getattr(model, "lm_head", None)
    if head is not None:
        return head
    try:
        return model.model.embed_tokens.as_linear
    except AttributeError:
        raise UnsupportedModelError(f"{type(model).__name__}: no lm_head and no tied embed_tokens") from None


def body(model: nn.Module) -> Callable[[Array], Array]:
    """The transformer body returning final-norm hidden states (mlx-lm: `model.model`)."""
    return model.model


def gather_index(mask: Array, k: int | None = None) -> tuple[Array, Array]:
    """Flat indices (k,) of the positions with the largest mask weights, and those weights.

    With k >= the number of non-zero mask entries, every supervised position is selected and
    the rest are padding with weight 0. k=None takes every position.
    """
    flat = mask.reshape(-1).astype(mx.float32)
    k = flat.size if k is None else min(int(k), flat.size)
    idx = mx.argsort(-flat)[:k]
    return idx, flat[idx]


def selected_logprobs(head: Callable[[Array], Array], h: Array, targets: Array, mask: Array,
                      k: int | None = None, for_grad: bool = True) -> tuple[Array, Array, Array]:
    """Log-probs of the targets at the supervised positions only.

    h: (B, L, D) hidden states, targets and mask: (B, L). Returns (logps (K,), weights (K,),
    rows (K,)): weights are the mask values (0 for padding), rows the batch row of each slot.
    k must be >= the number of supervised positions (else some are dropped); see `bucket`.
    """
    b, l, d = h.shape
    idx, w = gather_index(mask, k)
    logits = head(h.reshape(b * l, d)[idx])
    logps = -cross_entropy(logits, targets.reshape(-1)[idx], for_grad)
    return logps, w, idx // l


def sequence_logprobs(head: Callable[[Array], Array], h: Array, targets: Array, mask: Array,
                      k: int | None = None, for_grad: bool = True) -> tuple[Array, Array]:
    """(sum of target log-probs per row (B,), supervised tokens per row (B,)): DPO's input."""
    logps, w, rows = selected_logprobs(head, h, targets, mask, k, for_grad)
    onehot = (rows[:, None] == mx.arange(h.shape[0])[None, :]).astype(mx.float32)  # (K, B)
    return (logps * w) @ onehot, w @ onehot


def sft_loss(head: Callable[[Array], Array], h: Array, targets: Array, mask: Array,
             k: int | None = None, for_grad: bool = True) -> tuple[Array, Array]:
    """Masked mean CE over supervised positions: (loss_sum / ntoks, ntoks)."""
    logps, w, _ = selected_logprobs(head, h, targets, mask, k, for_grad)
    ntoks = w.sum()
    return -(logps * w).sum() / mx.maximum(ntoks, 1.0), ntoks


def model_sft_loss(model: nn.Module, inputs: Array, targets: Array, mask: Array,
                   k: int | None = None, for_grad: bool = True) -> tuple[Array, Array]:
    """`sft_loss` for an mlx-lm model: body forward, then the head at the K gathered positions.

    Same signature shape as mlx-lm's `default_loss`: returns (loss, ntoks)."""
    return sft_loss(lm_head(model), body(model)(inputs), targets, mask, k, for_grad)


# ----------------------------------------------------------------------------- preference losses

def _reward_metrics(chosen: Array, rejected: Array) -> dict[str, Array]:
    return {"rewards_chosen": chosen, "rewards_rejected": rejected,
            "accuracy": (chosen > rejected).astype(mx.float32), "margin": chosen - rejected}


def _dpo_terms(pc, pr, rc, rr, beta):
    if rc is None or rr is None:
        raise ConfigError("this preference loss needs the reference log-probs")
    logits = (pc - rc) - (pr - rr)
    return logits, _reward_metrics(beta * (pc - rc), beta * (pr - rr))


def dpo_sigmoid(pc: Array, pr: Array, rc: Array | None, rr: Array | None, beta: float = 0.1,
                label_smoothing: float = 0.0, **_: Array) -> tuple[Array, dict[str, Array]]:
    """DPO; with label_smoothing e > 0 the robust / conservative (cDPO) form:
    -(1-e) log sigmoid(beta z) - e log sigmoid(-beta z), z = (pc - rc) - (pr - rr)."""
    z, metrics = _dpo_terms(pc, pr, rc, rr, beta)
    losses = -(1.0 - label_smoothing) * nn.log_sigmoid(beta * z) - label_smoothing * nn.log_sigmoid(-beta * z)
    return losses, metrics


def dpo_ipo(pc: Array, pr: Array, rc: Array | None, rr: Array | None, beta: float = 0.1,
            label_smoothing: float = 0.0, **_: Array) -> tuple[Array, dict[str, Array]]:
    """IPO: (z - 1 / (2 beta))^2. Usually fed length-averaged log-probs."""
    z, metrics = _dpo_terms(pc, pr, rc, rr, beta)
    return (z - 1.0 / (2.0 * beta)) ** 2, metrics


def dpo_hinge(pc: Array, pr: Array, rc: Array | None, rr: Array | None, beta: float = 0.1,
              label_smoothing: float = 0.0, **_: Array) -> tuple[Array, dict[str, Array]]:
    """SLiC hinge: max(0, 1 - beta z)."""
    z, metrics = _dpo_terms(pc, pr, rc, rr, beta)
    return mx.maximum(1.0 - beta * z, 0.0), metrics


def _log1m_exp(x: Array) -> Array:
    """log(1 - exp(x)) for x < 0, accurate near 0."""
    return mx.log(-mx.expm1(mx.minimum(x, -1e-7)))


def orpo(pc: Array, pr: Array, rc: Array | None = None, rr: Array | None = None, beta: float = 0.1,
         label_smoothing: float = 0.0, *, chosen_nll: Array, **_: Array) -> tuple[Array, dict[str, Array]]:
    """ORPO (reference-free): nll_chosen - beta log sigmoid(log odds(pc) - log odds(pr)).

    pc, pr are *average* per-token log-probs; chosen_nll is the per-example SFT loss on the
    chosen answer. Rewards are beta * average log-prob, as in TRL.
    """
    log_odds = (pc - _log1m_exp(pc)) - (pr - _log1m_exp(pr))
    ratio = nn.log_sigmoid(log_odds)
    metrics = _reward_metrics(beta * pc, beta * pr)
    metrics["log_odds"] = log_odds
    return chosen_nll - beta * ratio, metrics


orpo.reference_free = True  # type: ignore[attr-defined]

PREFERENCE_LOSSES: dict[str, Callable[..., tuple[Array, dict[str, Array]]]] = {
    "sigmoid": dpo_sigmoid,
    "ipo": dpo_ipo,
    "hinge": dpo_hinge,
    "orpo": orpo,
}


def get_preference_loss(name: str) -> Callable[..., tuple[Array, dict[str, Array]]]:
    """The loss registered as `name`; ConfigError listing the supported names otherwise."""
    try:
        return PREFERENCE_LOSSES[name]
    except KeyError:
        raise ConfigError(f"method.loss: unknown preference loss {name!r}; "
                          f"supported: {', '.join(sorted(PREFERENCE_LOSSES))}") from None


def is_reference_free(name: str) -> bool:
    """Whether the loss needs no reference log-probs (so the loop can skip that forward)."""
    return bool(getattr(get_preference_loss(name), "reference_free", False))
