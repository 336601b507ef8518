"""The one training loop, parametrised by an objective and a batch source (SFT and DPO alike).

An objective is `objective(model, batch_arrays: dict, k: int, for_grad=True) -> (loss_sum, n)`
or `(loss_sum, n, metric_sums: dict)`: a summed loss, the count it is summed over, and optional
metrics also summed over that count (reported per step as sum / n, e.g. DPO's reward accuracy). Gradients of loss_sum are added over micro-batches (grad_accum)
and ranks (`mx.distributed.all_sum`) and divided by the total count once, so accumulated and
data-parallel steps equal one big batch exactly. With one micro-batch and one rank the whole
update is a single `mx.compile`d step over [model.state, optimizer.state, mx.random.state].

Checkpoints (adapter weights, optimizer state, data position) are written atomically, and the
PRNG is re-seeded from (seed, step) before each step; a run resumed from a checkpoint continues
exactly. Ctrl-C saves a checkpoint before stopping; a NaN/Inf loss
stops with `TrainingDivergedError` naming the step and the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from iceburg_mlx.errors import IceburgError
from iceburg_mlx.train.batching import Batch, packed_mask
from iceburg_mlx.train.losses import bucket


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
    keep_checkpoints: int = 2
    seed: int = 0                   # the PRNG is re-seeded from (seed, step) before every step
    fast_activations: bool = True   # CPU: SiLU on a polynomial exp while training (fast_ops)


@dataclass
class StepInfo:
    step: int
    loss: float
    lr: float
    tokens: int                 # non-pad positions this step (all ranks)
    trained_tokens: int         # supervised positions this step (all ranks)
    tokens_per_sec: float
    trained_per_sec: float
    peak_memory_bytes: int
    elapsed: float
    eta: float
    extra: dict = field(default_factory=dict)   # objective metrics (sum / n), e.g. DPO rewards
    total_steps: int = 0                         # the run's optimizer steps (epochs resolved)


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    index: int = 0              # next batch index within `epoch`
    tokens: int = 0
    best_val: float = math.inf
    elapsed: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__, best_val=None if math.isinf(self.best_val) else self.best_val)

    @classmethod
    def from_json(cls, d: dict) -> "LoopState":
        d = dict(d)
        d["best_val"] = math.inf if d.get("best_val") is None else d["best_val"]
        return cls(**d)


@dataclass
class Callbacks:
    on_step: Callable[[StepInfo], None] | None = None
    on_eval: Callable[[int, float], None] | None = None
    on_checkpoint: Callable[[Path], None] | None = None
    metrics: list[dict] = field(default_factory=list)


def batch_arrays(b: Batch) -> dict[str, mx.array]:
    out = {"inputs": mx.array(b.inputs), "targets": mx.array(b.targets), "mask": mx.array(b.mask)}
    if b.segments is not None:
        out["attn"] = packed_mask(b.segments)
    return out


def gather_size(b: Batch) -> int:
    return bucket(max(1, b.n_supervised))


def _set_leaf(tree, path: list[str], value) -> None:
    """tree[p0][p1]... = value, indexing lists by int and creating missing dict entries."""
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(tree, list):
            idx = int(key)
            if last:
                tree[idx] = value
            else:
                tree = tree[idx]
        else:
            if last:
                tree[key] = value
            else:
                tree = tree.setdefault(key, {})


class Trainer:
    """Owns the compiled functions; `run()` drives them. One instance per training run."""

    def __init__(self, model: nn.Module, optimizer: optim.Optimizer, objective, cfg: LoopConfig,
                 run_dir: Path, save_adapter: Callable[[nn.Module, Path], None], group=None):
        self.model, self.opt, self.objective, self.cfg = model, optimizer, objective, cfg
        self.run_dir = Path(run_dir)
        self.save_adapter = save_adapter
        self.group = group
        self.world = group.size() if group is not None else 1
        self.rank = group.rank() if group is not None else 0
        self.state = [model.state, optimizer.state, mx.random.state]
        self.to_arrays = batch_arrays      # batch -> dict of arrays for the objective
        self.gather = gather_size          # batch -> static gather size k
        self._lag = nn.value_and_grad(model, self._loss)
        self._fused = {}
        self._grad = {}
        self._apply = mx.compile(self._apply_impl, inputs=self.state, outputs=self.state)
        self.eval_metrics: dict[str, float] = {}   # the objective's metrics at the last eval_loss

    # --- compiled pieces -------------------------------------------------------------------
    def _loss(self, model, arrays, k):
        out = self.objective(model, arrays, k)
        return out if len(out) == 3 else (out[0], out[1], {})

    def _apply_impl(self, grads, n):
        grads = tree_map(lambda g: g / n, grads)
        if self.cfg.grad_clip > 0:
            grads, _ = optim.clip_grad_norm(grads, self.cfg.grad_clip)
        self.opt.update(self.model, grads)

    def _fused_step(self, k: int, keys: tuple):
        if (k, keys) not in self._fused:
            def step(arrays):
                (lsum, n, extra), grads = self._lag(self.model, arrays, k)
                self._apply_impl(grads, mx.maximum(n, 1.0))
                return lsum, n, extra
            self._fused[(k, keys)] = mx.compile(step, inputs=self.state, outputs=self.state)
        return self._fused[(k, keys)]

    def _grad_step(self, k: int, keys: tuple):
        if (k, keys) not in self._grad:
            def grad(arrays):
                (lsum, n, extra), grads = self._lag(self.model, arrays, k)
                return lsum, n, extra, grads
            self._grad[(k, keys)] = mx.compile(grad, inputs=self.state, outputs=self.state)
        return self._grad[(k, keys)]

    def train_step(self, micro: list) -> tuple[mx.array, mx.array, dict]:
        """One optimizer step over micro-batches (Batch or any object `self.to_arrays` accepts)."""
        if len(micro) == 1 and self.world == 1:
            arrays = self.to_arrays(micro[0])
            return self._fused_step(self.gather(micro[0]), tuple(sorted(arrays)))(arrays)
        lsum = n = grads = extra = None
        for b in micro:
            arrays = self.to_arrays(b)
            ls, nn_, ex, g = self._grad_step(self.gather(b), tuple(sorted(arrays)))(arrays)
            lsum = ls if lsum is None else lsum + ls
            n = nn_ if n is None else n + nn_
            extra = ex if extra is None else {k: extra[k] + ex[k] for k in ex}
            grads = g if grads is None else tree_map(mx.add, grads, g)
        if self.world > 1:
            lsum = mx.distributed.all_sum(lsum, group=self.group)
            n = mx.distributed.all_sum(n, group=self.group)
            extra = {k: mx.distributed.all_sum(v, group=self.group) for k, v in extra.items()}
            grads = tree_map(lambda g: mx.distributed.all_sum(g, group=self.group), grads)
        self._apply(grads, mx.maximum(n, 1.0))
        return lsum, n, extra

    def eval_loss(self, batches: list[Batch]) -> float:
        """Mean loss over `batches`; the objective's metrics (sum / n) are left in `eval_metrics`."""
        tot = cnt = 0.0
        sums: dict[str, float] = {}
        for b in batches:
            arrays = self.to_arrays(b)
            out = self.objective(self.model, arrays, self.gather(b), for_grad=False)
            ls, n, ex = out if len(out) == 3 else (*out, {})
            if self.world > 1:
                ls, n = mx.distributed.all_sum(ls, group=self.group), mx.distributed.all_sum(n, group=self.group)
                ex = {k: mx.distributed.all_sum(v, group=self.group) for k, v in ex.items()}
            mx.eval(ls, n, ex)
            tot, cnt = tot + ls.item(), cnt + n.item()
            for k, v in ex.items():
                sums[k] = sums.get(k, 0.0) + v.item()
        self.eval_metrics = {k: v / max(cnt, 1.0) for k, v in sums.items()}
        return tot / max(cnt, 1.0)

    # --- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, st: LoopState, name: str | None = None) -> Path | None:
        if self.rank != 0:
            return None
        ckdir = self.run_dir / "checkpoints"
        ckdir.mkdir(parents=True, exist_ok=True)
        final = ckdir / (name or f"step-{st.step:06d}")
        tmp = ckdir / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.save_adapter(self.model, tmp)
        opt_state = dict(tree_flatten(self.opt.state))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
        (tmp / "trainer.json").write_text(json.dumps(st.to_json()))
        old = ckdir / f".old-{final.name}-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        if name is None:
            self._prune(ckdir)
        return final

    def _prune(self, ckdir: Path) -> None:
        steps = sorted(p for p in ckdir.glob("step-*") if p.is_dir())
        for p in steps[: max(0, len(steps) - self.cfg.keep_checkpoints)]:
            shutil.rmtree(p, ignore_errors=True)

    def load_checkpoint(self, ck: Path, load_adapter: Callable[[nn.Module, Path], None]) -> LoopState:
        load_adapter(self.model, ck)
        flat = mx.load(str(ck / "optimizer.safetensors"))
        # fill the existing state dict in place: the compiled step holds a reference to it
        self.opt.init(self.model.trainable_parameters())
        for name, value in flat.items():
            _set_leaf(self.opt.state, name.split("."), value)
        mx.eval(self.model.parameters(), self.opt.state)
        return LoopState.from_json(json.loads((ck / "trainer.json").read_text()))

    # --- the loop --------------------------------------------------------------------------
    def run(self, batches: Iterator[tuple[int, int, Batch]], st: LoopState, val: list[Batch] | None = None,
            cb: Callbacks | None = None) -> LoopState:
        from iceburg_mlx.models.fast_ops import fast_swiglu

        with fast_swiglu(self.model) if self.cfg.fast_activations else contextlib.nullcontext():
            return self._run(batches, st, val, cb)

    def _run(self, batches, st: LoopState, val, cb) -> LoopState:
        cb = cb or Callbacks()
        cfg = self.cfg
        last_ck = None
        t_start = time.perf_counter() - st.elapsed
        mx.reset_peak_memory()
        try:
            while st.step < cfg.steps:
                micro = []
                for _ in range(cfg.grad_accum):
                    epoch, index, b = next(batches)
                    micro.append(b)
                t0 = time.perf_counter()
                mx.random.seed(cfg.seed * 1_000_003 + st.step)  # dropout noise depends only on the step
                lsum, n, extra = self.train_step(micro)
                mx.eval(lsum, n, extra, self.state)
                loss = lsum.item() / max(n.item(), 1.0)
                extra = {k: v.item() / max(n.item(), 1.0) for k, v in extra.items()}
                dt = time.perf_counter() - t0
                if not math.isfinite(loss):
                    raise TrainingDivergedError(
                        f"loss became {loss} at step {st.step + 1}; last good checkpoint: {last_ck or 'none'}")
                st.step += 1
                st.epoch, st.index = epoch, index + 1
                toks = sum(getattr(b, "n_tokens", 0) for b in micro) * self.world
                trained = int(n.item())
                st.tokens += toks
                st.elapsed = time.perf_counter() - t_start
                lr = float(self.opt.learning_rate.item()) if isinstance(self.opt.learning_rate, mx.array) \
                    else float(self.opt.learning_rate)
                info = StepInfo(st.step, loss, lr, toks, trained, toks / dt, trained / dt, mx.get_peak_memory(),
                                st.elapsed, st.elapsed / st.step * (cfg.steps - st.step) if st.step else 0.0,
                                extra, cfg.steps)
                cb.metrics.append({"step": st.step, "train_loss": loss, "lr": lr, "tokens": toks,
                                   "trained_tokens": trained, "tokens_per_sec": info.tokens_per_sec,
                                   "trained_per_sec": info.trained_per_sec, **extra})
                if cb.on_step:
                    cb.on_step(info)
                if val and cfg.eval_every and (st.step % cfg.eval_every == 0 or st.step == cfg.steps):
                    v = self.eval_loss(val[: cfg.eval_batches])
                    cb.metrics.append({"step": st.step, "val_loss": v,
                                       **{f"val_{k}": x for k, x in self.eval_metrics.items()}})
                    if cb.on_eval:
                        cb.on_eval(st.step, v)
                    if cfg.keep_best and v < st.best_val:
                        st.best_val = v
                        self.save_checkpoint(st, name="best")
                if cfg.save_every and st.step % cfg.save_every == 0 and st.step < cfg.steps:
                    last_ck = self.save_checkpoint(st)
                    if cb.on_checkpoint and last_ck:
                        cb.on_checkpoint(last_ck)
        except KeyboardInterrupt:
            ck = self.save_checkpoint(st)
            raise TrainingInterrupted(f"interrupted at step {st.step}; checkpoint saved to {ck} "
                                      f"(resume with --resume {self.run_dir})") from None
        return st
