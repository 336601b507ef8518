"""Preference training (DPO and its family: sigmoid, ipo, hinge, orpo) on {prompt, chosen, rejected} pairs.

The reference is the policy's own model: the base with adapters disabled, or, when the run starts
from an SFT adapter (`method.init_adapter`), the base plus that adapter as loaded before the first
step. Its log-probs are computed once (cached on disk by `prefs.cached_reference`), so the frozen
reference needs neither a second copy of the weights nor a forward per step.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import mlx.core as mx

from iceburg_mlx.adapters import files as adapter_files
from iceburg_mlx.adapters.layers import adapters_disabled
from iceburg_mlx.errors import AdapterError
from iceburg_mlx.hashing import sha256_file
from iceburg_mlx.train import prefs
from iceburg_mlx.train.forward import hidden_states
from iceburg_mlx.train.losses import get_preference_loss, is_reference_free, lm_head, sequence_logprobs
from iceburg_mlx.train.methods.base import Method, MethodData, RunContext, pad_id, steps_for

AVERAGED = ("ipo", "orpo")  # losses fed per-token average log-probs instead of sums


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


def summary(metrics: dict) -> str:
    """One line of preference metrics (training or held-out): accuracy, margin, rewards."""
    if not metrics:
        return "no metrics"
    return (f"reward accuracy {metrics.get('reward_accuracy', float('nan')):.3f}, "
            f"margin {metrics.get('reward_margin', float('nan')):+.4f}, "
            f"rewards chosen {metrics.get('rewards_chosen', float('nan')):+.4f} / "
            f"rejected {metrics.get('rewards_rejected', float('nan')):+.4f}")


def check_init_adapter(recipe, adapters_dir=None) -> Path | None:
    """The directory of `method.init_adapter` (registry name or path), checked before any compute:
    it exists, was trained on `model.base` and has the recipe's LoRA shape. AdapterError otherwise."""
    spec = recipe.method.init_adapter
    if not spec:
        return None
    from iceburg_mlx.adapters import base_mismatch, resolve_adapter_path

    try:
        path = resolve_adapter_path(spec, adapters_dir)
        config = adapter_files.read_adapter_config(path)
    except AdapterError as e:
        raise AdapterError(f"method.init_adapter: {e}") from None
    other = base_mismatch(path, recipe.model.base)
    if other is not None:
        raise AdapterError(f"method.init_adapter: {spec} ({path}) was trained on base '{other}', "
                           f"not on model.base '{recipe.model.base}'")
    p = config.get("lora_parameters", {})
    want = (recipe.lora.rank, recipe.lora.alpha / recipe.lora.rank, "dora" if recipe.lora.dora else "lora")
    have = (int(p["rank"]), float(p["scale"]), config.get("fine_tune_type", "lora"))
    if have[0] != want[0] or not math.isclose(have[1], want[1]) or have[2] != want[2]:
        raise AdapterError(f"method.init_adapter: {spec} is {have[2]} rank {have[0]} scale {have[1]:g}, the recipe's "
                           f"lora is {want[2]} rank {want[0]} scale {want[1]:g} (set lora.rank/lora.alpha to match)")
    return path


class DPO(Method):
    name = "dpo"

    def check(self, recipe, ctx: RunContext) -> None:
        check_init_adapter(recipe, ctx.adapters_dir)

    def prepare(self, recipe, loaded, ctx: RunContext) -> MethodData:
        """Pairs (train, held-out), the init adapter loaded into the model, the reference log-probs."""
        model, tok = loaded.model, loaded.tokenizer
        d, m, bs = recipe.data, recipe.method, recipe.train.batch_size
        sysp, note = recipe.role.system_prompt, ctx.note
        init_dir = check_init_adapter(recipe, ctx.adapters_dir)

        def pairs_of(path: Path):
            return prefs.build_pref_examples(tok, path, d.max_seq_len, d.overlong, sysp, ctx.skip.get(path, ()))

        pairs, rep = pairs_of(ctx.train_path)
        if ctx.valid_path is not None:
            train, valid = pairs, pairs_of(ctx.valid_path)[0]
        else:
            train, valid = prefs.split_pairs(pairs, recipe.seed)
            note(f"dpo: {len(train)} training pairs, {len(valid)} held out from {ctx.train_path.name} "
                 f"({prefs.VALID_FRACTION:.0%}, at least {prefs.MIN_VALID})")
        init_sha = None
        if init_dir is not None:
            adapter_files.load_adapters(model, init_dir)
            mx.eval(model.parameters())
            init_sha = sha256_file(init_dir / adapter_files.WEIGHTS_FILE)
            note(f"dpo: policy and reference start from {m.init_adapter} ({init_dir})")
        prov = {"method": "dpo", "loss": m.loss, "beta": m.beta, "label_smoothing": m.label_smoothing,
                "init_adapter": str(init_dir) if init_dir else None, "init_adapter_sha256": init_sha,
                "pairs": {"train": len(train), "valid": len(valid)}}
        pad = pad_id(tok)
        ref_train = ref_valid = None
        if not is_reference_free(m.loss):
            base_id = prefs.base_identity(ctx.base_path, recipe.model.base)

            def reference(path: Path, examples):
                key = prefs.cache_key(data_sha256=sha256_file(path), base=base_id, init_adapter=init_sha,
                                      max_seq_len=d.max_seq_len, overlong=d.overlong, system_prompt=sysp,
                                      compute=recipe.model.compute_dtype)
                report = ((lambda done, total: ctx.progress(f"reference log-probs ({path.name})", done, total))
                          if ctx.progress else None)
                with adapters_disabled(model) if init_dir is None else contextlib.nullcontext():
                    arr, file, hit = prefs.cached_reference(model, examples, key, bs, pad, on_progress=report)
                note(f"dpo: reference log-probs for {len(examples)} pairs "
                     f"{'read from' if hit else 'computed, cached in'} {file}")
                prov.setdefault("reference_cache", {})[path.name] = {"key": key, "hit": hit}
                return arr

            ref_train = reference(ctx.train_path, pairs)
            ref_valid = reference(ctx.valid_path, valid) if ctx.valid_path is not None else ref_train

        def batches(start_epoch: int, start_index: int):
            return prefs.iterate_pref(train, bs, recipe.seed, pad, ref_train, start_epoch, start_index)

        val = prefs.epoch_pref_batches(valid, bs, recipe.seed, 0, pad, ref_valid) if valid else None
        return MethodData(dpo_objective(m.loss, m.beta, m.label_smoothing), batches,
                          steps_for(recipe, math.ceil(len(train) / bs)), rep, val, unit="pairs",
                          provenance=prov, describe_eval=lambda metrics: f"held-out {summary(metrics)}")
