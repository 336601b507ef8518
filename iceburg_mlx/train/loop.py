"""The one training loop: `train(model, optimizer, objective, batches, cfg, ...)`, every method alike.

The objective and the batches are passed in (the method decides both; see `train.methods`):

    objective(model, arrays, k, for_grad=True) -> (loss_sum, count, metrics)

a loss summed over `count` units (supervised tokens, pairs, completions) and metrics summed over
the same units (reported per step as sum / count). A batch knows its own arrays (`arrays()`), its
static gather size `k` (`gather`) and its non-pad positions (`n_tokens`). Gradients of loss_sum
are added over micro-batches (grad_accum) and ranks (`mx.distributed.all_sum`) and divided by the
total count once, so accumulated and data-parallel steps equal one big batch exactly. With one
micro-batch and one rank the whole update is a single `mx.compile`d step over
[model.state, optimizer.state, mx.random.state]; the trainable weights are compiled inputs, never
constants.

The PRNG is re-seeded from (seed, step) before each step, so a run resumed from a checkpoint
continues exactly. Ctrl-C saves a checkpoint before stopping; a NaN/Inf loss stops with
`TrainingDivergedError` naming the step and the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

from iceburg_mlx.errors import IceburgError
from iceburg_mlx.train.checkpoints import Checkpointer, LoopState

Objective = Callable[..., tuple[mx.array, mx.array, dict]]


class TrainingDivergedError(IceburgError):
    """The loss became NaN or Inf."""


class TrainingInterrupted(IceburgError):
    """Ctrl-C: a checkpoint was saved."""

    exit_code = 130


@dataclass
class LoopConfig:
    steps: int                      # optimizer steps
    grad_accum: int = 1
    grad_clip: float = 0.0          # 0: off
    eval_every: int = 0             # 0: off
    eval_batches: int = 25
    save_every: int = 0             # 0: only at the end
    keep_best: bool = True
    seed: int = 0                   # the PRNG is re-seeded from (seed, step) before every step
    fast_activations: bool = True   # CPU: SiLU on a polynomial exp while training (fast_ops)
    unit: str = "tokens"            # what the objective's count counts (progress and metrics)


@dataclass(frozen=True)
class StepInfo:
    step: int
    loss: float
    lr: float
    tokens: int                     # non-pad positions this step (all ranks)
    count: int                      # the objective's units this step (all ranks)
    unit: str                       # ... and what they are: "tokens", "pairs", "completions"
    tokens_per_sec: float
    count_per_sec: float
    peak_memory_bytes: int
    elapsed: float
    eta: float
    total_steps: int
    extra: dict = field(default_factory=dict)   # the objective's metrics (sum / count)


@dataclass
class Callbacks:
    on_step: Callable[[StepInfo], None] | None = None
    on_eval: Callable[[int, float, dict], None] | None = None   # (step, loss, metrics)
    on_checkpoint: Callable[[Any], None] | None = None
    metrics: list[dict] = field(default_factory=list)


def _all_sum(x, group):
    return x if group is None else mx.distributed.all_sum(x, group=group)


def evaluate(model, objective: Objective, batches, group=None) -> tuple[float, dict[str, float]]:
    """(mean loss, metrics as sum / count) of `objective` over `batches`, all ranks together."""
    tot = cnt = 0.0
    sums: dict[str, float] = {}
    for b in batches:
        ls, n, ex = objective(model, b.arrays(), b.gather, for_grad=False)
        ls, n = _all_sum(ls, group), _all_sum(n, group)
        ex = {k: _all_sum(v, group) for k, v in ex.items()}
        mx.eval(ls, n, ex)
        tot, cnt = tot + ls.item(), cnt + n.item()
        for k, v in ex.items():
            sums[k] = sums.get(k, 0.0) + v.item()
    return tot / max(cnt, 1.0), {k: v / max(cnt, 1.0) for k, v in sums.items()}


def make_step(model: nn.Module, optimizer: optim.Optimizer, objective: Objective, grad_clip: float = 0.0,
              group=None) -> tuple[Callable[[list], tuple[mx.array, mx.array, dict]], list]:
    """(step, state): `step(micro_batches)` runs one optimizer update over the micro-batches and
    returns (loss_sum, count, metric sums); `state` is what to `mx.eval` after it. Compiled per
    (gather size, array keys), with the model, optimizer and PRNG state as compiled inputs."""
    world = group.size() if group is not None else 1
    compiled_state = [model.state, optimizer.state, mx.random.state]
    loss_and_grad = nn.value_and_grad(model, objective)

    def apply(grads, n):
        grads = tree_map(lambda g: g / n, grads)
        if grad_clip > 0:
            grads, _ = optim.clip_grad_norm(grads, grad_clip)
        optimizer.update(model, grads)

    apply_compiled = mx.compile(apply, inputs=compiled_state, outputs=compiled_state)
    fused, grad_only = {}, {}

    def fused_step(k: int, keys: tuple):       # one micro-batch, one rank: loss, grads and update
        if (k, keys) not in fused:
            def step(arrays):
                (lsum, n, extra), grads = loss_and_grad(model, arrays, k)
                apply(grads, mx.maximum(n, 1.0))
                return lsum, n, extra
            fused[(k, keys)] = mx.compile(step, inputs=compiled_state, outputs=compiled_state)
        return fused[(k, keys)]

    def grad_step(k: int, keys: tuple):        # accumulated or data-parallel: grads only
        if (k, keys) not in grad_only:
            def step(arrays):
                (lsum, n, extra), grads = loss_and_grad(model, arrays, k)
                return lsum, n, extra, grads
            grad_only[(k, keys)] = mx.compile(step, inputs=compiled_state, outputs=compiled_state)
        return grad_only[(k, keys)]

    def train_step(micro: list):
        if len(micro) == 1 and world == 1:
            arrays = micro[0].arrays()
            return fused_step(micro[0].gather, tuple(sorted(arrays)))(arrays)
        lsum = n = grads = extra = None
        for b in micro:
            arrays = b.arrays()
            ls, nn_, ex, g = grad_step(b.gather, tuple(sorted(arrays)))(arrays)
            lsum = ls if lsum is None else lsum + ls
            n = nn_ if n is None else n + nn_
            extra = ex if extra is None else {k: extra[k] + ex[k] for k in ex}
            grads = g if grads is None else tree_map(mx.add, grads, g)
        lsum, n = _all_sum(lsum, group), _all_sum(n, group)
        extra = {k: _all_sum(v, group) for k, v in extra.items()}
        grads = tree_map(lambda g: _all_sum(g, group), grads)
        apply_compiled(grads, mx.maximum(n, 1.0))
        return lsum, n, extra

    return train_step, compiled_state


def train(model: nn.Module, optimizer: optim.Optimizer, objective: Objective,
          batches: Iterator[tuple[int, int, Any]], cfg: LoopConfig, *, state: LoopState | None = None,
          val: list | None = None, callbacks: Callbacks | None = None, checkpoints: Checkpointer | None = None,
          group=None) -> LoopState:
    """Run optimizer steps from `state` up to `cfg.steps` over `batches` ((epoch, index, batch),
    endless); returns the final state."""
    from iceburg_mlx.models.fast_ops import fast_swiglu

    cb = callbacks or Callbacks()
    st = state or LoopState()
    world = group.size() if group is not None else 1
    train_step, compiled_state = make_step(model, optimizer, objective, cfg.grad_clip, group)

    def save(name: str | None = None):
        return checkpoints.save(st, name) if checkpoints is not None else None

    last_ck = None
    t_start = time.perf_counter() - st.elapsed
    mx.reset_peak_memory()
    with fast_swiglu(model) if cfg.fast_activations else contextlib.nullcontext():
        try:
            while st.step < cfg.steps:
                micro = []
                for _ in range(cfg.grad_accum):
                    epoch, index, b = next(batches)
                    micro.append(b)
                t0 = time.perf_counter()
                mx.random.seed(cfg.seed * 1_000_003 + st.step)  # dropout and sampling depend only on the step
                lsum, n, extra = train_step(micro)
                mx.eval(lsum, n, extra, compiled_state)
                count = max(n.item(), 1.0)
                loss = lsum.item() / count
                extra = {k: v.item() / count for k, v in extra.items()}
                dt = time.perf_counter() - t0
                if not math.isfinite(loss):
                    raise TrainingDivergedError(
                        f"loss became {loss} at step {st.step + 1}; last good checkpoint: {last_ck or 'none'}")
                st.step += 1
                st.epoch, st.index = epoch, index + 1
                toks = sum(b.n_tokens for b in micro) * world
                st.tokens += toks
                st.elapsed = time.perf_counter() - t_start
                lr = optimizer.learning_rate
                lr = float(lr.item()) if isinstance(lr, mx.array) else float(lr)
                info = StepInfo(step=st.step, loss=loss, lr=lr, tokens=toks, count=int(n.item()), unit=cfg.unit,
                                tokens_per_sec=toks / dt, count_per_sec=n.item() / dt,
                                peak_memory_bytes=mx.get_peak_memory(), elapsed=st.elapsed,
                                eta=st.elapsed / st.step * (cfg.steps - st.step), total_steps=cfg.steps, extra=extra)
                cb.metrics.append({"step": st.step, "train_loss": loss, "lr": lr, "tokens": toks, "count": info.count,
                                   "unit": cfg.unit, "tokens_per_sec": info.tokens_per_sec,
                                   "count_per_sec": info.count_per_sec, **extra})
                if cb.on_step:
                    cb.on_step(info)
                if val and cfg.eval_every and (st.step % cfg.eval_every == 0 or st.step == cfg.steps):
                    v, metrics = evaluate(model, objective, val[: cfg.eval_batches], group)
                    cb.metrics.append({"step": st.step, "val_loss": v, **{f"val_{k}": x for k, x in metrics.items()}})
                    if cb.on_eval:
                        cb.on_eval(st.step, v, metrics)
                    if cfg.keep_best and v < st.best_val:
                        st.best_val = v
                        save("best")
                if cfg.save_every and st.step % cfg.save_every == 0 and st.step < cfg.steps:
                    last_ck = save()
                    if cb.on_checkpoint and last_ck:
                        cb.on_checkpoint(last_ck)
        except KeyboardInterrupt:
            ck = save()
            where = f"; checkpoint saved to {ck} (resume with --resume {ck.parent.parent})" if ck else ""
            raise TrainingInterrupted(f"interrupted at step {st.step}{where}") from None
    return st


__all__ = ["Callbacks", "LoopConfig", "LoopState", "Objective", "StepInfo", "TrainingDivergedError",
           "TrainingInterrupted", "evaluate", "make_step", "train"]
