"""A training run from a recipe: model, adapters, the method's data, the loop, the run directory,
the registry. No method is named here: `recipe.method.name` picks one from `train.methods`.

    result = train_from_recipe(load_recipe("recipes/oracle.yaml"), TrainOptions(...))

The run directory holds the resolved recipe, metrics.jsonl, provenance.json, checkpoints/ and the
final adapter (`train.checkpoints`); on success the adapter is published to the registry as
<role>/<version>/.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from iceburg_mlx.adapters import files as adapter_files
from iceburg_mlx.adapters import layers
from iceburg_mlx.atomic import write_text
from iceburg_mlx.errors import ConfigError, DataError
from iceburg_mlx.train import checkpoints as ck
from iceburg_mlx.train.methods import RunContext, get_method


@dataclass
class TrainOptions:
    adapters_dir: Path | None = None
    runs_dir: Path = Path("runs")
    resume: Path | None = None
    recipe_path: Path | None = None        # to resolve relative data paths
    publish: bool = True
    on_step: Callable | None = None                              # (StepInfo)
    on_eval: Callable | None = None                              # (step, validation loss)
    on_event: Callable[[str], None] | None = None                # one-line notes for the user
    on_progress: Callable[[str, int, int], None] | None = None   # (stage, done, total) of preparation


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


def train_from_recipe(recipe, opts: TrainOptions) -> TrainResult:
    import mlx.core as mx

    from iceburg_mlx import hardware
    from iceburg_mlx.models import load_model
    from iceburg_mlx.train.loop import Callbacks, LoopConfig, train
    from iceburg_mlx.train.provenance import collect
    from iceburg_mlx.train.schedule import make_optimizer, make_schedule

    def note(msg: str) -> None:
        if opts.on_event:
            opts.on_event(msg)

    method = get_method(recipe.method.name)
    if opts.resume:
        _check_resume(recipe, Path(opts.resume), note)
    role = recipe.role.name or "adapter"
    group = mx.distributed.init() if _distributed_requested() else None
    world, rank = (group.size(), group.rank()) if group is not None else (1, 0)
    if recipe.train.batch_size % world:
        raise ConfigError(f"train.batch_size {recipe.train.batch_size} is not divisible by the {world} ranks")
    train_path = _resolve_data(recipe.data.train, opts.recipe_path, "data.train")
    if train_path is None:
        raise ConfigError("data.train: no training data file given")
    valid_path = _resolve_data(recipe.data.valid, opts.recipe_path, "data.valid")
    skip = _validate_data(recipe, {"data.train": train_path, "data.valid": valid_path}, note)
    ctx = RunContext(train_path, valid_path, skip, Path(opts.adapters_dir) if opts.adapters_dir else None,
                     note=note, progress=opts.on_progress)
    method.check(recipe, ctx)  # refused before any compute

    mx.random.seed(recipe.seed)
    compute = recipe.model.compute_dtype
    loaded = load_model(recipe.model.base, compute="auto" if compute == "auto" else compute)
    dev = hardware.device_info()
    if loaded.info.get("quantized_source") and loaded.compute == "float32":
        note(f"{dev.backend}: training on f32 weights dequantized from the quantized base "
             "(quantized matmuls do not use BLAS on CPU; a q4 LoRA step ran ~25x slower)")
    model = loaded.model
    identity = {"base_model": recipe.model.base, "base_fingerprint": adapter_files.base_fingerprint(model),
                "role": role}
    n_wrapped = layers.apply_lora(model, recipe.lora)
    if recipe.train.grad_checkpointing:
        _checkpoint_blocks(model)
    note(f"{'DoRA' if recipe.lora.dora else 'LoRA'} r{recipe.lora.rank} on {n_wrapped} layers, "
         f"{layers.trainable_parameter_count(model) / 1e6:.2f} M trainable parameters")

    data = method.prepare(recipe, loaded, replace(ctx, base_path=loaded.source.path))
    rep = data.report
    if rep.truncated or rep.dropped_overlong or rep.dropped_unsupervised:
        note(f"data: {rep.truncated} truncated, {rep.dropped_overlong} dropped as over-long, "
             f"{rep.dropped_unsupervised} dropped with no supervised token (max_seq_len "
             f"{recipe.data.max_seq_len}, policy {recipe.data.overlong})")

    schedule = make_schedule(recipe.schedule.kind, recipe.optim.lr, data.steps, recipe.schedule.warmup,
                             recipe.schedule.min_lr)
    opt = make_optimizer(recipe.optim.name, schedule, recipe.optim.weight_decay, recipe.optim.betas,
                         recipe.optim.eps)
    cfg = LoopConfig(steps=data.steps, grad_accum=recipe.train.grad_accum, grad_clip=recipe.optim.grad_clip or 0.0,
                     eval_every=recipe.eval.every if data.valid else 0,
                     eval_batches=recipe.eval.batches if recipe.eval.batches > 0 else 10**9,
                     save_every=recipe.save.every, keep_best=recipe.save.keep_best, seed=recipe.seed, unit=data.unit)

    def save_adapter(m, path):
        adapter_files.save_adapters(m, path, extra_config=identity)

    state, metrics = ck.LoopState(), []
    if opts.resume:
        run_dir = Path(opts.resume)
        metrics = ck.open_run_dir(run_dir)
    else:
        run_dir = ck.new_run_dir(opts.runs_dir, role, rank)
    checkpoints = ck.Checkpointer(run_dir, model, opt, save_adapter, adapter_files.load_adapters, rank)
    if opts.resume:
        state = checkpoints.load(checkpoints.latest())
        metrics = [m for m in metrics if m.get("step", 0) <= state.step]
        note(f"resumed {run_dir} at step {state.step}")
    if rank == 0:
        _write_run_files(run_dir, recipe, loaded, dev, {"train": train_path, "valid": valid_path}, world, role,
                         method.name, data, collect)

    def on_eval(step, v, metrics_):
        if opts.on_eval:
            opts.on_eval(step, v)
        if data.describe_eval:
            note(f"step {step}: {data.describe_eval(metrics_)}")

    cb = Callbacks(on_step=opts.on_step, on_eval=on_eval, metrics=metrics)
    cb.on_checkpoint = (lambda p: ck.write_metrics(run_dir, cb.metrics)) if rank == 0 else None
    batches = ((e, i, b.shard(rank, world)) for e, i, b in data.batches(state.epoch, state.index))
    val = [b.shard(rank, world) for b in data.valid] if data.valid else None
    try:
        state = train(model, opt, data.objective, batches, cfg, state=state, val=val, callbacks=cb,
                      checkpoints=checkpoints, group=group)
    finally:
        if rank == 0:
            ck.write_metrics(run_dir, cb.metrics)
    final = run_dir / "adapter"
    if rank == 0:
        checkpoints.save(state, name="final")
        final = ck.finish_adapter(run_dir, save_adapter, model, (adapter_files.RECIPE_FILE, adapter_files.METRICS_FILE,
                                                                 adapter_files.PROVENANCE_FILE))
    train_losses = [m["train_loss"] for m in cb.metrics if "train_loss" in m]
    result = TrainResult(run_dir, state.step, train_losses[-1] if train_losses else None,
                         None if math.isinf(state.best_val) else state.best_val, final, None, rep.as_dict(), cb.metrics)
    if rank == 0 and opts.publish:
        from iceburg_mlx.adapters.registry import publish

        ref = publish(final, role, opts.adapters_dir)
        result.registry_name = ref.name
        result.adapter_dir = ref.path
    return result


def _write_run_files(run_dir, recipe, loaded, dev, data_files, world, role, method_name, data, collect) -> None:
    """recipe.yaml (the resolved recipe) and provenance.json."""
    from iceburg_mlx.train.config import dump_recipe

    recipe_text = dump_recipe(recipe)
    write_text(run_dir / adapter_files.RECIPE_FILE, recipe_text)
    prov = collect(base_spec=recipe.model.base, base_path=loaded.source.path,
                   data_files={k: v for k, v in data_files.items() if v}, seed=recipe.seed, backend=dev.backend,
                   recipe_sha=hashlib.sha256(recipe_text.encode()).hexdigest(), world=world)
    prov.update({"role": role, "method": method_name, "data_report": data.report.as_dict(),
                 "compute": loaded.compute})
    if data.provenance:
        prov[method_name] = data.provenance
    write_text(run_dir / adapter_files.PROVENANCE_FILE, json.dumps(prov, indent=2))


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


def _check_resume(recipe, run_dir: Path, note) -> None:
    """A resumed run continues the run it names: its recipe may differ from the saved one only in
    RESUME_SAFE keys (said in a note); anything else is refused before any compute."""
    from iceburg_mlx.train.config import check_resume, load_recipe

    saved_file = run_dir / adapter_files.RECIPE_FILE
    if not saved_file.is_file():
        raise ConfigError(f"--resume {run_dir}: no recipe.yaml (not a run directory)")
    changes = check_resume(load_recipe(saved_file), recipe, f"--resume {run_dir}")
    if changes:
        note("resuming with " + ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes))


def _validate_data(recipe, paths: dict, note) -> dict:
    """Each data file through the validator before any compute: {path: line numbers to skip}."""
    from iceburg_mlx.data.formats import recipe_formats
    from iceburg_mlx.data.validate import check_training_file

    skip = {}
    for key, path in paths.items():
        if path is not None:
            skip[path], notes = check_training_file(path, key, recipe.data.skip_invalid,
                                                    formats=recipe_formats(recipe.data.format))
            for n in notes:
                note(n)
    return skip


def _distributed_requested() -> bool:
    return any(k in os.environ for k in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MLX_HOSTFILE"))


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
