"""Objectives for the training loop: (model, batch arrays, k) -> (summed loss, count)."""

from __future__ import annotations

from iceburg_mlx.train.forward import hidden_states
from iceburg_mlx.train.losses import lm_head, selected_logprobs


def sft_objective(model, arrays: dict, k: int, for_grad: bool = True):
    """Cross-entropy summed over the supervised (assistant) targets, and their count.

    The lm_head runs only at the k gathered supervised positions (never over masked ones)."""
    h = hidden_states(model, arrays["inputs"], arrays.get("attn"))
    logps, w, _ = selected_logprobs(lm_head(model), h, arrays["targets"], arrays["mask"], k, for_grad)
    return -(logps * w).sum(), w.sum()


OBJECTIVES = {"sft": sft_objective}
