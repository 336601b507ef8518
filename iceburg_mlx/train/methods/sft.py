"""Supervised fine-tuning: cross-entropy on every assistant turn of the training conversations."""

from __future__ import annotations

from iceburg_mlx.train import batching
from iceburg_mlx.train.examples import build_examples
from iceburg_mlx.train.forward import hidden_states
from iceburg_mlx.train.losses import lm_head, selected_logprobs
from iceburg_mlx.train.methods.base import Method, MethodData, RunContext, pad_id, steps_for


def sft_objective(model, arrays: dict, k: int, for_grad: bool = True):
    """Cross-entropy summed over the supervised (assistant) targets, their count, no metrics.

    The lm_head runs only at the k gathered supervised positions (never over masked ones)."""
    h = hidden_states(model, arrays["inputs"], arrays.get("attn"))
    logps, w, _ = selected_logprobs(lm_head(model), h, arrays["targets"], arrays["mask"], k, for_grad)
    return -(logps * w).sum(), w.sum(), {}


def build(tokenizer, path, recipe, skip=()):
    d = recipe.data
    return build_examples(tokenizer, path, d.max_seq_len, d.overlong, recipe.role.system_prompt, skip)


class SFT(Method):
    name = "sft"

    def prepare(self, recipe, loaded, ctx: RunContext) -> MethodData:
        tok, d, bs = loaded.tokenizer, recipe.data, recipe.train.batch_size
        examples, rep = build(tok, ctx.train_path, recipe, ctx.skip.get(ctx.train_path, ()))
        pad = pad_id(tok)
        valid = None
        if ctx.valid_path is not None:
            held = build(tok, ctx.valid_path, recipe, ctx.skip.get(ctx.valid_path, ()))[0]
            valid = batching.epoch_batches(held, bs, recipe.seed, 0, d.packing, d.max_seq_len, pad)

        def batches(start_epoch: int, start_index: int):
            return batching.iterate(examples, bs, recipe.seed, d.packing, d.max_seq_len, pad, start_epoch, start_index)

        per_epoch = batching.batches_per_epoch(examples, bs, recipe.seed, d.packing, d.max_seq_len)
        return MethodData(sft_objective, batches, steps_for(recipe, per_epoch), rep, valid, unit="tokens")
