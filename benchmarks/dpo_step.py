"""DPO step time: cached reference log-probs vs recomputing the reference every step vs mlx-lm-lora.

    nice python benchmarks/dpo_step.py [--role oracle] [--pairs 4] [--steps 3] [--no-mlx-lm-lora]

All three variants train the same LoRA policy (the role's DPO recipe: default model, f32 compute)
on the same fixed batch of preference pairs from data/<role>/prefs.jsonl, in one process:

- cached: our step (one forward over the 2B stacked rows, fwd+bwd+Adam), the reference
  log-probs read from the precomputed cache, as `iceburg-mlx train` runs it;
- recompute: the same step plus a reference forward for the batch (adapters disabled) every step;
- mlx-lm-lora: `mlx_lm_lora.trainer.dpo_trainer.train_dpo` with a separately loaded reference
  model, as its CLI runs it (policy and reference forwards of chosen and rejected every step).

Prints the median wall and process-CPU seconds per step, pairs/s and peak memory of each, and the
two ratios (CPU time is the steadier figure when other work shares the machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import iceburg_mlx  # noqa: F401,I001  (OpenBLAS preload: must come before mlx.core)
import mlx.core as mx
import numpy as np
from peers import require  # noqa: E402  (benchmarks/peers.py)


def load_policy(recipe):
    from iceburg_mlx.models import load_model
    from iceburg_mlx.adapters import layers

    loaded = load_model(recipe.model.base, compute=recipe.model.compute_dtype)
    layers.apply_lora(loaded.model, recipe.lora)
    mx.eval(loaded.model.parameters())
    return loaded


def interleaved(fns: dict, steps: int, warmup: int) -> dict:
    """{name: (wall seconds per step, CPU seconds per step, peak bytes)}, the variants run
    alternately (ABAB...) so a load that drifts on a shared machine hits them alike."""
    out = {k: ([], [], 0) for k in fns}
    for i in range(warmup + steps):
        for k, fn in fns.items():
            mx.reset_peak_memory()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            walls, cpus, peak = out[k]
            if i >= warmup:
                walls.append(wall)
                cpus.append(cpu)
            out[k] = (walls, cpus, max(peak, mx.get_peak_memory()))
            print(f"  {k} step {i + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr, flush=True)
    return out


def ours(loaded, recipe, pairs, steps, warmup):
    from iceburg_mlx.train import prefs
    from iceburg_mlx.adapters import layers
    from iceburg_mlx.train.loop import make_step
    from iceburg_mlx.train.methods.dpo import dpo_objective
    from iceburg_mlx.train.schedule import make_optimizer

    model, pad = loaded.model, loaded.tokenizer.pad_token_id or 0
    with layers.adapters_disabled(model):
        ref = prefs.compute_reference(model, pairs, len(pairs), pad)
    opt = make_optimizer("adamw", recipe.optim.lr, 0.0, recipe.optim.betas, recipe.optim.eps)
    m = recipe.method
    step, state = make_step(model, opt, dpo_objective(m.loss, m.beta, m.label_smoothing), grad_clip=1.0)
    batch = prefs.make_batch(pairs, pad, ref)

    def cached():
        out = step([batch])
        mx.eval(out, state)

    def recompute():
        with layers.adapters_disabled(model):
            r = prefs.compute_reference(model, pairs, len(pairs), pad)  # the reference forward, every step
        out = step([prefs.make_batch(pairs, pad, r)])
        mx.eval(out, state)

    return interleaved({"cached": cached, "recompute": recompute}, steps, warmup), batch


def mlx_lm_lora(loaded, recipe, pairs, steps, warmup):
    import mlx.optimizers as optim
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm_lora.trainer import dpo_trainer

    from iceburg_mlx.models import load_model

    info = mx.device_info
    if "max_recommended_working_set_size" not in info():  # its train_dpo reads this Metal-only key
        mx.device_info = lambda: {**info(), "max_recommended_working_set_size": 0}
    ref_model = load_model(recipe.model.base, compute=recipe.model.compute_dtype).model  # its second copy
    data = [{"chosen": p.chosen.ids, "rejected": p.rejected.ids,
             "chosen_prompt_length": p.chosen.mask.index(1), "rejected_prompt_length": p.rejected.mask.index(1)}
            for p in pairs]
    rates, cpu = [], [time.process_time()]

    class CB(TrainingCallback):  # reports after every iteration (steps_per_report=1)
        def on_train_loss_report(self, train_info):
            rates.append(train_info["iterations_per_second"])
            cpu.append(time.process_time())

    args = dpo_trainer.DPOTrainingArgs(batch_size=len(pairs), iters=warmup + steps, steps_per_report=1,
                                       steps_per_eval=10**9, steps_per_save=10**9, val_batches=0,
                                       max_seq_length=recipe.data.max_seq_len, beta=recipe.method.beta,
                                       loss_type="sigmoid", adapter_file="/tmp/dpo_step_mlx_lm_lora.safetensors")
    mx.reset_peak_memory()
    dpo_trainer.train_dpo(loaded.model, ref_model, optim.AdamW(learning_rate=recipe.optim.lr), data, None, args,
                          training_callback=CB(), loss_type="sigmoid")
    mx.device_info = info
    return [1.0 / r for r in rates[warmup:]], list(np.diff(cpu))[warmup:], mx.get_peak_memory()


def main() -> None:
    require("mlx_lm_lora")  # before any work: a missing peer is named at once
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", default="oracle")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-mlx-lm-lora", action="store_true")
    a = ap.parse_args()

    from iceburg_mlx.train import prefs
    from iceburg_mlx.train.config import load_recipe

    recipe = load_recipe(f"{a.role}-dpo")
    loaded = load_policy(recipe)
    exs, _ = prefs.build_pref_examples(loaded.tokenizer, f"data/{a.role}/prefs.jsonl", recipe.data.max_seq_len,
                                       system_prompt=recipe.role.system_prompt)
    pairs = [prefs.PrefExample(p.chosen, p.rejected, i, p.source) for i, p in enumerate(exs[: a.pairs])]
    res, batch = ours(loaded, recipe, pairs, a.steps, a.warmup)
    if not a.no_mlx_lm_lora:
        res["mlx-lm-lora"] = mlx_lm_lora(loaded, recipe, pairs, a.steps, a.warmup)
    print(f"{a.role}: {len(pairs)} pairs, rows {batch.rows.inputs.shape[0]} x {batch.rows.inputs.shape[1]} "
          f"({batch.n_tokens} tokens, {batch.n_supervised} supervised), LoRA r{recipe.lora.rank} "
          f"on {len(recipe.lora.target_modules)} modules x all layers, {a.steps} timed steps after {a.warmup} warm-up")
    med = {k: statistics.median(w) for k, (w, _, _) in res.items()}
    cpu = {k: statistics.median(c) for k, (_, c, _) in res.items()}
    print(f"{'variant':<12} {'s/step':>8} {'cpu s':>8} {'pairs/s':>8} {'peak MiB':>9}   wall per step")
    for k, (w, c, peak) in res.items():
        print(f"{k:<12} {med[k]:8.2f} {cpu[k]:8.2f} {len(pairs) / med[k]:8.3f} {peak / 2**20:9.0f}   "
              + " ".join(f"{x:.2f}" for x in w))
    print(f"cached / recompute step time: wall {med['cached'] / med['recompute']:.3f}, "
          f"CPU {cpu['cached'] / cpu['recompute']:.3f} (target <= 0.6)")
    if "mlx-lm-lora" in med:
        print(f"pairs/s vs mlx-lm-lora: wall {med['mlx-lm-lora'] / med['cached']:.2f}x, "
              f"CPU {cpu['mlx-lm-lora'] / cpu['cached']:.2f}x (target >= 1.5)")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
