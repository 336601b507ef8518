"""A training run from a recipe: model, adapters, data, the loop, the run directory, the registry.

    result = train_from_recipe(load_recipe("recipes/oracle.yaml"), TrainOptions(...))

The run directory holds the resolved recipe, metrics.jsonl, provenance.json, checkpoints/ and the
final adapter; on success the adapter is published to the registry as <role>/<version>/.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from iceburg_mlx.errors import ConfigError, DataError


@dataclass
class TrainOptions:
    adapters_dir: Path | None = None
    runs_dir: Path = Path("runs")
    resume: Path | None = None
    recipe_path: Path | None = None        # to resolve relative data paths
    publish: bool = True
    on_step: Callable | None = None
    on_eval: Callable | None = None
    on_event: Callable[[str], None] | None = None  # one-line notes for the user
    on_progress: Callable[[str, int, int], None] | None = None  # (stage, done, total) of preparation work


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float | None
    best_val: float | None
    adapter_dir: Path
    registry_name: str | None = None
    data_report: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)


def _resolve_data(path: str | None, recipe_path: Path | None, key: str) -> Path | None:
    if not path:
        return None
    p = Path(path).expanduser()
    cands = [p] if p.is_absolute() else [Path.cwd() / p] + (
        [recipe_path.parent / p, recipe_path.parent.parent / p] if recipe_path else [])
    for c in cands:
        if c.is_file():
            return c
    raise DataError(f"{key}: data file '{path}' not found")


def _note(opts: TrainOptions, msg: str) -> None:
    if opts.on_event:
        opts.on_event(msg)


def _dump_recipe(recipe) -> str:
    from iceburg_mlx.train.config import dump_recipe

    return dump_recipe(recipe)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    _write_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))


def train_from_recipe(recipe, opts: TrainOptions) -> TrainResult:
    import mlx.core as mx

    from iceburg_mlx import hardware
    from iceburg_mlx.models import load_model
    from iceburg_mlx.train import batching
    from iceburg_mlx.adapters import files, layers
    from iceburg_mlx.train.loop import Callbacks, LoopConfig, Trainer
    from iceburg_mlx.train.objectives import make_objective
    from iceburg_mlx.train.provenance import collect
    from iceburg_mlx.train.schedule import make_optimizer, make_schedule

    if opts.resume:
        _check_resume(recipe, Path(opts.resume), opts)
    objective = make_objective(recipe.method)
    is_dpo = recipe.method.name == "dpo"
    role = recipe.role.name or "adapter"
    group = mx.distributed.init() if _distributed_requested() else None
    world, rank = (group.size(), group.rank()) if group is not None else (1, 0)
    train_path = _resolve_data(recipe.data.train, opts.recipe_path, "data.train")
    if train_path is None:
        raise ConfigError("data.train: no training data file given")
    valid_path = _resolve_data(recipe.data.valid, opts.recipe_path, "data.valid")
    skip = _validate_data(recipe, {"data.train": train_path, "data.valid": valid_path}, opts)
    if is_dpo:
        from iceburg_mlx.train import dpo, prefs

        init_dir = dpo.check_init_adapter(recipe, opts.adapters_dir)  # refused before any compute

    mx.random.seed(recipe.seed)
    compute = recipe.model.compute_dtype
    loaded = load_model(recipe.model.base, compute="auto" if compute == "auto" else compute)
    dev = hardware.device_info()
    if loaded.info.get("quantized_source") and loaded.compute == "float32":
        _note(opts, f"{dev.backend}: training on f32 weights dequantized from the quantized base "
                    "(quantized matmuls do not use BLAS on CPU; a q4 LoRA step ran ~25x slower)")
    model, tok = loaded.model, loaded.tokenizer
    n_wrapped = layers.apply_lora(model, recipe.lora)
    if recipe.train.grad_checkpointing:
        _checkpoint_blocks(model)
    _note(opts, f"{'DoRA' if recipe.lora.dora else 'LoRA'} r{recipe.lora.rank} on {n_wrapped} layers, "
                f"{layers.trainable_parameter_count(model) / 1e6:.2f} M trainable parameters")

    if is_dpo:  # pairs, held-out split, init adapter, cached reference log-probs
        data = dpo.prepare(recipe, model, tok, base_path=loaded.source.path, train_path=train_path,
                           valid_path=valid_path, init_dir=init_dir, note=lambda m: _note(opts, m), skip=skip,
                           progress=opts.on_progress)
        rep, valid = data.report, data.valid
    else:
        examples, rep = _examples(tok, train_path, recipe, skip[train_path])
        valid = _examples(tok, valid_path, recipe, skip[valid_path])[0] if valid_path else None
    if rep.truncated or rep.dropped_overlong or rep.dropped_unsupervised:
        _note(opts, f"data: {rep.truncated} truncated, {rep.dropped_overlong} dropped as over-long, "
                    f"{rep.dropped_unsupervised} dropped with no supervised token (max_seq_len "
                    f"{recipe.data.max_seq_len}, policy {recipe.data.overlong})")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    bs = recipe.train.batch_size
    if bs % world:
        raise ConfigError(f"train.batch_size {bs} is not divisible by the {world} ranks")
    steps = data.steps(recipe) if is_dpo else _total_steps(recipe, examples, world)

    schedule = make_schedule(recipe.schedule.kind, recipe.optim.lr, steps, recipe.schedule.warmup,
                             recipe.schedule.min_lr)
    opt = make_optimizer(recipe.optim.name, schedule, recipe.optim.weight_decay, recipe.optim.betas,
                         recipe.optim.eps)
    cfg = LoopConfig(steps=steps, grad_accum=recipe.train.grad_accum, grad_clip=recipe.optim.grad_clip or 0.0,
                     eval_every=recipe.eval.every if valid else 0,
                     eval_batches=recipe.eval.batches if recipe.eval.batches > 0 else 10**9,
                     save_every=recipe.save.every, keep_best=recipe.save.keep_best, seed=recipe.seed)

    run_dir, st, metrics = _prepare_run_dir(opts, role, rank)

    from iceburg_mlx.adapters import base_fingerprint

    identity = {"base_model": recipe.model.base, "base_fingerprint": base_fingerprint(model), "role": role}

    def save_adapter(m, path):
        files.save_adapters(m, path, extra_config=identity)

    trainer = Trainer(model, opt, objective, cfg, run_dir, save_adapter, group)
    if is_dpo:
        trainer.to_arrays, trainer.gather = prefs.pref_arrays, prefs.pref_gather
    if opts.resume:
        st = trainer.load_checkpoint(_latest_checkpoint(run_dir), files.load_adapters)
        metrics = [m for m in metrics if m.get("step", 0) <= st.step]
        _note(opts, f"resumed {run_dir} at step {st.step}")
    recipe_text = _dump_recipe(recipe)
    if rank == 0:
        _write_atomic(run_dir / "recipe.yaml", recipe_text)
        prov = collect(base_spec=recipe.model.base, base_path=loaded.source.path,
                       data_files={k: v for k, v in (("train", train_path), ("valid", valid_path)) if v},
                       seed=recipe.seed, backend=dev.backend,
                       recipe_sha=hashlib.sha256(recipe_text.encode()).hexdigest(), world=world)
        prov.update({"role": role, "data_report": rep.as_dict(), "compute": loaded.compute})
        if is_dpo:
            prov["dpo"] = data.provenance
        _write_atomic(run_dir / "provenance.json", json.dumps(prov, indent=2))

    def shard(it):
        for epoch, index, b in it:
            yield epoch, index, batching.take_rows(b, list(range(rank, len(b.inputs), world))) if world > 1 else b

    if is_dpo:
        it = data.batches(recipe, pad, st.epoch, st.index, rank, world)
        val_batches = data.val_batches(recipe, pad, rank, world)
    else:
        it = shard(batching.iterate(examples, bs, recipe.seed, recipe.data.packing, recipe.data.max_seq_len, pad,
                                    st.epoch, st.index))
        val_batches = None
    if valid and not is_dpo:
        val_batches = [batching.take_rows(b, list(range(rank, len(b.inputs), world))) if world > 1 else b
                       for b in batching.epoch_batches(valid, bs, recipe.seed, 0, recipe.data.packing,
                                                       recipe.data.max_seq_len, pad)]
    on_eval = opts.on_eval
    if is_dpo:  # held-out reward metrics as a note after each evaluation
        def on_eval(step, v):
            if opts.on_eval:
                opts.on_eval(step, v)
            _note(opts, f"step {step}: held-out {dpo.summary(trainer.eval_metrics)}")
    cb = Callbacks(on_step=opts.on_step, on_eval=on_eval, metrics=metrics)
    cb.on_checkpoint = (lambda p: _write_metrics(run_dir, cb.metrics)) if rank == 0 else None
    try:
        st = trainer.run(it, st, val_batches, cb)
    finally:
        if rank == 0:
            _write_metrics(run_dir, cb.metrics)
    final = run_dir / "adapter"
    if rank == 0:
        trainer.save_checkpoint(st, name="final")
        _finish_adapter(run_dir, final, save_adapter, model)
    train_losses = [m["train_loss"] for m in cb.metrics if "train_loss" in m]
    result = TrainResult(run_dir, st.step, train_losses[-1] if train_losses else None,
                         None if math.isinf(st.best_val) else st.best_val, final, None, rep.as_dict(), cb.metrics)
    if rank == 0 and opts.publish:
        from iceburg_mlx.adapters.registry import publish

        ref = publish(final, role, opts.adapters_dir)
        result.registry_name = ref.name
        result.adapter_dir = ref.path
    return result


def _check_resume(recipe, run_dir: Path, opts: TrainOptions) -> None:
    """A resumed run continues the run it names: its recipe may differ from the saved one only in
    RESUME_SAFE keys (said in a note); anything else is refused before any compute."""
    from iceburg_mlx.train.config import check_resume, load_recipe

    saved_file = run_dir / "recipe.yaml"
    if not saved_file.is_file():
        raise ConfigError(f"--resume {run_dir}: no recipe.yaml (not a run directory)")
    changes = check_resume(load_recipe(saved_file), recipe, f"--resume {run_dir}")
    if changes:
        _note(opts, "resuming with " + ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes))


def _validate_data(recipe, paths: dict, opts: TrainOptions) -> dict:
    """Each data file through the validator before any compute: {path: line numbers to skip}."""
    from iceburg_mlx.data.validate import check_training_file

    skip = {}
    for key, path in paths.items():
        if path is not None:
            skip[path], notes = check_training_file(path, key, recipe.data.skip_invalid)
            for n in notes:
                _note(opts, n)
    return skip


def _distributed_requested() -> bool:
    return any(k in os.environ for k in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MLX_HOSTFILE"))


def _examples(tok, path, recipe, skip):
    from iceburg_mlx.train.examples import build_examples

    return build_examples(tok, path, recipe.data.max_seq_len, recipe.data.overlong, recipe.role.system_prompt, skip)


def _total_steps(recipe, examples, world) -> int:
    from iceburg_mlx.train import batching

    if recipe.train.steps is not None:
        return int(recipe.train.steps)
    per_epoch = batching.batches_per_epoch(examples, recipe.train.batch_size, recipe.seed, recipe.data.packing,
                                           recipe.data.max_seq_len)
    return max(1, math.ceil(recipe.train.epochs * per_epoch / recipe.train.grad_accum))


def _prepare_run_dir(opts: TrainOptions, role: str, rank: int):
    from iceburg_mlx.train.loop import LoopState

    if opts.resume:
        run_dir = Path(opts.resume)
        if not (run_dir / "checkpoints").is_dir():
            raise ConfigError(f"--resume {run_dir}: not a run directory with checkpoints")
        metrics = []
        mpath = run_dir / "metrics.jsonl"
        if mpath.is_file():
            metrics = [json.loads(line) for line in mpath.read_text().splitlines() if line.strip()]
        return run_dir, LoopState(), metrics
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(opts.runs_dir) / f"{role}-{stamp}"
    n = 1
    while run_dir.exists() and rank == 0:
        n += 1
        run_dir = Path(opts.runs_dir) / f"{role}-{stamp}-{n}"
    if rank == 0:
        run_dir.mkdir(parents=True)
    return run_dir, LoopState(), []


def _latest_checkpoint(run_dir: Path) -> Path:
    cks = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / "trainer.json").is_file())
    if not cks:
        raise ConfigError(f"--resume {run_dir}: no step checkpoint to resume from")
    return cks[-1]


def _finish_adapter(run_dir: Path, final: Path, save_adapter, model) -> None:
    import shutil

    tmp = run_dir / ".adapter-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_adapter(model, tmp)
    for name in ("recipe.yaml", "metrics.jsonl", "provenance.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _checkpoint_blocks(model) -> None:
    """Recompute each transformer block in the backward pass (activation memory for compute)."""
    import mlx.core as mx

    for layer in model.layers:
        cls = type(layer)
        if getattr(cls, "_iceburg_checkpointed", False):
            continue
        orig = cls.__call__

        def call(self, x, *args, __orig=orig, **kwargs):
            def inner(params, x):
                self.update(params)
                return __orig(self, x, *args, **kwargs)

            return mx.checkpoint(inner)(self.trainable_parameters(), x)

        cls.__call__ = call
        cls._iceburg_checkpointed = True
