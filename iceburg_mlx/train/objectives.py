"""Objectives for the training loop: (model, batch arrays, k) -> (summed loss, count[, metric sums])."""

from __future__ import annotations

import mlx.core as mx

from iceburg_mlx.train.forward import hidden_states
from iceburg_mlx.train.losses import (
    get_preference_loss,
    is_reference_free,
    lm_head,
    selected_logprobs,
    sequence_logprobs,
)

AVERAGED = ("ipo", "orpo")  # losses fed per-token average log-probs instead of sums


def sft_objective(model, arrays: dict, k: int, for_grad: bool = True):
    """Cross-entropy summed over the supervised (assistant) targets, and their count.

    The lm_head runs only at the k gathered supervised positions (never over masked ones)."""
    h = hidden_states(model, arrays["inputs"], arrays.get("attn"))
    logps, w, _ = selected_logprobs(lm_head(model), h, arrays["targets"], arrays["mask"], k, for_grad)
    return -(logps * w).sum(), w.sum()


def dpo_objective(loss: str = "sigmoid", beta: float = 0.1, label_smoothing: float = 0.0):
    """A preference objective over a `prefs.PrefBatch`'s arrays: 2B rows, the B chosen answers then
    the B rejected ones, one forward; `ref` (2B,) holds the cached reference log-prob sums.

    Returns (summed loss, number of pairs, summed metrics): rewards_chosen / rewards_rejected
    (beta * policy-vs-reference log-ratio), reward_accuracy, reward_margin, logps_chosen /
    logps_rejected (the policy's, as fed to the loss)."""
    fn = get_preference_loss(loss)
    needs_ref = not is_reference_free(loss)
    average = loss in AVERAGED

    def objective(model, arrays: dict, k: int, for_grad: bool = True):
        h = hidden_states(model, arrays["inputs"])
        logps, ntok = sequence_logprobs(lm_head(model), h, arrays["targets"], arrays["mask"], k, for_grad)
        b = logps.shape[0] // 2
        scale = 1.0 / mx.maximum(ntok, 1.0) if average else None
        if scale is not None:
            logps = logps * scale
        pc, pr = logps[:b], logps[b:]
        rc = rr = None
        if needs_ref:
            ref = arrays["ref"] * scale if scale is not None else arrays["ref"]
            rc, rr = ref[:b], ref[b:]
        losses, m = fn(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing, chosen_nll=-pc)
        metrics = {"rewards_chosen": m["rewards_chosen"].sum(), "rewards_rejected": m["rewards_rejected"].sum(),
                   "reward_accuracy": m["accuracy"].sum(), "reward_margin": m["margin"].sum(),
                   "logps_chosen": pc.sum(), "logps_rejected": pr.sum()}
        return losses.sum(), mx.array(float(b)), metrics

    return objective


OBJECTIVES = {"sft": lambda method: sft_objective,
              "dpo": lambda method: dpo_objective(method.loss, method.beta, method.label_smoothing)}


def make_objective(method):
    """The objective for a recipe's `method` section (MethodConfig)."""
    from iceburg_mlx.errors import ConfigError

    if method.name not in OBJECTIVES:
        raise ConfigError(f"method.name: '{method.name}' training is not available (available: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[method.name](method)
