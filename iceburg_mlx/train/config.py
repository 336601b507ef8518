"""Training recipes: YAML files read into frozen, validated dataclasses.

A recipe may `extends:` another one (a path relative to the file, or a bare name looked up in
the recipes directory); `--set key.sub=value` overrides come last. Everything is merged once,
in the order: dataclass defaults < extended recipes (outermost first) < the recipe < `--set`.
Values are coerced by the field's declared type, so `lr: 1e-5` (a *string* to PyYAML) is a
float. Every problem raises `ConfigError` with one line naming the file and the key path, e.g.
`recipes/oracle.yaml: lora.rnak: unknown key (did you mean 'rank'?)`.

This module does not import MLX: the CLI can read and check a recipe cheaply.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from iceburg_mlx.errors import ConfigError
from iceburg_mlx.train import typed_yaml as ty

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RECIPE_SUFFIXES = (".yaml", ".yml")


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with help text (metadata keys: see `typed_yaml`)."""
    if dataclasses.is_dataclass(default):
        return field(default_factory=type(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class ModelConfig:
    base: str = _f("smollm2-135m-instruct", "Base model: registry name, local path or HF repo id.")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16", "quantized"] = _f(
        "auto", "Training compute: auto dequantizes to float32 on CPU when memory allows (bf16/quantized "
                "matmul is slow there) and keeps a quantized base quantized on Metal (QLoRA); "
                "'quantized' forces QLoRA.")


@dataclass(frozen=True)
class RoleConfig:
    name: str | None = _f(None, "Role this recipe trains (e.g. oracle); names the adapter.")
    system_prompt: str | None = _f(None, "System prompt inserted into every training conversation.")


@dataclass(frozen=True)
class DataConfig:
    train: str | None = _f(None, "Training data file (JSONL).")
    valid: str | None = _f(None, "Validation data file (JSONL); none disables evaluation.")
    format: Literal["auto", "chat", "completions", "text", "preference"] = _f(
        "auto", "Record formats the data files may hold: auto (any, detected per record), chat (ChatML, "
                "ShareGPT, Alpaca), completions, text or preference; a record of another format fails validation.")
    max_seq_len: int = _f(1024, "Maximum tokens per training sequence.")
    packing: bool = _f(False, "Pack several short examples into one sequence.")
    overlong: Literal["truncate", "drop"] = _f("truncate", "What to do with examples over max_seq_len.")
    skip_invalid: bool = _f(False, "Train on the valid records only, skipping (and counting) those that fail "
                                   "validation; by default an invalid record stops the run before any compute.")


@dataclass(frozen=True)
class LoraConfig:
    rank: int = _f(8, "LoRA rank r.")
    alpha: float = _f(16.0, "LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = _f(0.0, "Dropout on the adapter input (0 <= p < 1).")
    target_modules: tuple[str, ...] = _f(DEFAULT_TARGET_MODULES, "Linear layers to adapt, by name inside a block.")
    layers: int = _f(-1, "Adapt the last N transformer blocks; -1 or 'all' for every block.",
                     aliases={"all": -1})
    dora: bool = _f(False, "Use DoRA (learned per-row magnitude) instead of plain LoRA.")


@dataclass(frozen=True)
class MethodConfig:
    name: str = _f("sft", "Training method: sft, dpo, or any registered in iceburg_mlx.train.methods.")
    beta: float = _f(0.1, "DPO: strength of the KL penalty towards the reference.")
    loss: Literal["sigmoid", "ipo", "hinge", "orpo"] = _f("sigmoid", "DPO: preference loss family.")
    label_smoothing: float = _f(0.0, "DPO sigmoid: assumed label noise (robust / cDPO), 0 <= e < 0.5.")
    init_adapter: str | None = _f(None, "DPO: start from this SFT adapter (also the reference if set).")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "adam", "sgd"] = _f("adamw", "Optimizer.")
    lr: float = _f(1e-4, "Peak learning rate.")
    weight_decay: float = _f(0.0, "Decoupled weight decay (adamw).")
    betas: tuple[float, float] = _f((0.9, 0.999), "Adam betas.")
    eps: float = _f(1e-8, "Adam epsilon.")
    grad_clip: float | None = _f(1.0, "Clip the global gradient norm to this value; null disables.")


@dataclass(frozen=True)
class ScheduleConfig:
    warmup: int = _f(0, "Linear warm-up steps from 0 to the peak lr.")
    kind: Literal["cosine", "linear", "constant"] = _f("cosine", "Decay after warm-up.")
    min_lr: float = _f(0.0, "Learning rate at the end of the decay.")


@dataclass(frozen=True)
class TrainConfig:
    steps: int | None = _f(200, "Optimizer steps (exclusive with epochs).", exclusive="epochs")
    epochs: float | None = _f(None, "Passes over the training data (exclusive with steps).", exclusive="steps")
    batch_size: int = _f(4, "Sequences per micro-batch.")
    grad_accum: int = _f(1, "Micro-batches accumulated per optimizer step.")
    grad_checkpointing: bool = _f(False, "Recompute block activations in backward to save memory.")


@dataclass(frozen=True)
class EvalConfig:
    every: int = _f(50, "Evaluate every N optimizer steps; 0 disables.")
    batches: int = _f(25, "Validation batches per evaluation; -1 for the whole set.")


@dataclass(frozen=True)
class SaveConfig:
    every: int = _f(100, "Save the adapter every N optimizer steps; 0 saves only at the end.")
    keep_best: bool = _f(True, "Also keep the adapter with the lowest validation loss.")


@dataclass(frozen=True)
class Recipe:
    model: ModelConfig = _f(ModelConfig(), "Base model and compute dtype.")
    role: RoleConfig = _f(RoleConfig(), "The role being trained.")
    data: DataConfig = _f(DataConfig(), "Training and validation data.")
    lora: LoraConfig = _f(LoraConfig(), "Adapter shape.")
    method: MethodConfig = _f(MethodConfig(), "SFT or DPO, and DPO's settings.")
    optim: OptimConfig = _f(OptimConfig(), "Optimizer.")
    schedule: ScheduleConfig = _f(ScheduleConfig(), "Learning-rate schedule.")
    train: TrainConfig = _f(TrainConfig(), "Length and batching of training.")
    eval: EvalConfig = _f(EvalConfig(), "Validation during training.")
    save: SaveConfig = _f(SaveConfig(), "Checkpointing.")
    seed: int = _f(0, "Random seed for adapter init, dropout and data order.")


# ----------------------------------------------------------------------------- reference

def recipe_fields() -> list[tuple[str, str, Any, str]]:
    """(key path, type, default, help) for every recipe key: the CLI's recipe reference."""
    return ty.field_table(Recipe)


# ----------------------------------------------------------------------------- reading files

def _label(path: Path) -> str:
    """How a file is named in messages: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _default_recipes_dirs() -> list[Path]:
    repo = Path(__file__).resolve().parents[2] / "recipes"
    return [Path.cwd() / "recipes", repo]


def _find(name: str | os.PathLike, dirs: list[Path]) -> Path | None:
    p = Path(name)
    if p.suffix in RECIPE_SUFFIXES or len(p.parts) != 1:
        return None
    for d in dirs:
        for cand in (d / p.name, *(d / (p.name + s) for s in RECIPE_SUFFIXES)):
            if cand.is_file():
                return cand.resolve()
    return None


def resolve_recipe_path(name: str | os.PathLike, recipes_dir: str | os.PathLike | None = None) -> Path:
    """A recipe file from a path, or from a bare name (`oracle`) looked up in the recipes dir."""
    if Path(name).is_file():
        return Path(name).resolve()
    dirs = [Path(recipes_dir)] if recipes_dir is not None else _default_recipes_dirs()
    found = _find(name, dirs)
    if found is None:
        where = ", ".join(_label(d) for d in dirs)
        raise ConfigError(f"{name}: recipe not found (looked for a file, then in {where})")
    return found


def _read_yaml(path: Path) -> dict:
    label = _label(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{label}: cannot read recipe: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark is not None else label
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def _chain(path: Path, recipes_dir: Any, seen: tuple[Path, ...]) -> list[tuple[str, dict]]:
    """[(label, mapping)] from the outermost extended recipe to `path` itself."""
    if path in seen:
        cycle = " -> ".join(_label(p) for p in (*seen[seen.index(path):], path))
        raise ConfigError(f"{_label(seen[-1])}: extends cycle: {cycle}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    layers: list[tuple[str, dict]] = []
    if parent is not None:
        if not isinstance(parent, str) or not parent.strip():
            raise ConfigError(f"{_label(path)}: extends: expected a recipe name or path, got {parent!r}")
        dirs = [Path(recipes_dir)] if recipes_dir is not None else [path.parent, *_default_recipes_dirs()]
        target = _find(parent, dirs)
        if target is None:
            rel = Path(parent) if Path(parent).is_absolute() else path.parent / parent
            if not rel.is_file():
                raise ConfigError(f"{_label(path)}: extends: {parent}: recipe not found")
            target = rel.resolve()
        layers = _chain(target, recipes_dir, (*seen, path))
    layers.append((_label(path), data))
    return layers


# ----------------------------------------------------------------------------- validation

# keys of older recipes that no longer exist, with what to do instead
REMOVED = {"data.curriculum": "removed: training never applied it (batches are shuffled every epoch); "
                              "delete the key (`iceburg-mlx data order` still orders a file)"}


def _problems(r: Recipe) -> typing.Iterator[tuple[str, str]]:
    from iceburg_mlx.train.methods import METHODS

    if r.method.name not in METHODS:
        yield "method.name", f"'{r.method.name}' is not a training method (available: {', '.join(sorted(METHODS))})"
    if not r.model.base.strip():
        yield "model.base", "must not be empty"
    if r.data.max_seq_len < 2:
        yield "data.max_seq_len", f"must be >= 2, got {r.data.max_seq_len}"
    if r.lora.rank < 1:
        yield "lora.rank", f"must be >= 1, got {r.lora.rank}"
    if r.lora.alpha <= 0:
        yield "lora.alpha", f"must be > 0, got {r.lora.alpha}"
    if not 0.0 <= r.lora.dropout < 1.0:
        yield "lora.dropout", f"must be in [0, 1), got {r.lora.dropout}"
    if not r.lora.target_modules:
        yield "lora.target_modules", "must name at least one module"
    if r.lora.layers != -1 and r.lora.layers < 1:
        yield "lora.layers", f"must be >= 1, or -1/'all', got {r.lora.layers}"
    if r.method.beta <= 0:
        yield "method.beta", f"must be > 0, got {r.method.beta}"
    if not 0.0 <= r.method.label_smoothing < 0.5:
        yield "method.label_smoothing", f"must be in [0, 0.5), got {r.method.label_smoothing}"
    if r.optim.lr <= 0:
        yield "optim.lr", f"must be > 0, got {r.optim.lr}"
    if r.optim.weight_decay < 0:
        yield "optim.weight_decay", f"must be >= 0, got {r.optim.weight_decay}"
    if not all(0.0 <= b < 1.0 for b in r.optim.betas):
        yield "optim.betas", f"each must be in [0, 1), got {list(r.optim.betas)}"
    if r.optim.eps <= 0:
        yield "optim.eps", f"must be > 0, got {r.optim.eps}"
    if r.optim.grad_clip is not None and r.optim.grad_clip <= 0:
        yield "optim.grad_clip", f"must be > 0 or null, got {r.optim.grad_clip}"
    if r.schedule.warmup < 0:
        yield "schedule.warmup", f"must be >= 0, got {r.schedule.warmup}"
    if not 0.0 <= r.schedule.min_lr <= r.optim.lr:
        yield "schedule.min_lr", f"must be in [0, optim.lr={r.optim.lr}], got {r.schedule.min_lr}"
    t = r.train
    if (t.steps is None) == (t.epochs is None):
        yield "train.steps", "set exactly one of train.steps and train.epochs"
    if t.steps is not None and t.steps < 1:
        yield "train.steps", f"must be >= 1, got {t.steps}"
    if t.epochs is not None and t.epochs <= 0:
        yield "train.epochs", f"must be > 0, got {t.epochs}"
    for key in ("batch_size", "grad_accum"):
        if getattr(t, key) < 1:
            yield f"train.{key}", f"must be >= 1, got {getattr(t, key)}"
    if r.eval.every < 0:
        yield "eval.every", f"must be >= 0, got {r.eval.every}"
    if r.eval.batches == 0 or r.eval.batches < -1:
        yield "eval.batches", f"must be >= 1 or -1, got {r.eval.batches}"
    if r.save.every < 0:
        yield "save.every", f"must be >= 0, got {r.save.every}"
    if r.seed < 0:
        yield "seed", f"must be >= 0, got {r.seed}"


# ----------------------------------------------------------------------------- public API

def _resolve(layers: list[tuple[str, dict]], fallback: str) -> Recipe:
    merged: dict = {}
    origin: dict[str, str] = {}
    for label, data in layers:
        ty.check_keys(label, data, Recipe, removed=REMOVED)
        ty.merge(merged, data, origin, label, Recipe)
    recipe = ty.build(Recipe, merged, origin)
    for key, message in _problems(recipe):
        raise ConfigError(f"{origin.get(key, fallback)}: {key}: {message}")
    return recipe


def read_recipe(path_or_name: str | os.PathLike, overrides: typing.Iterable[str] = (),
                recipes_dir: str | os.PathLike | None = None) -> tuple[Recipe, Path]:
    """(the recipe, the file it was read from): read, merge, coerce and validate; raises
    ConfigError naming file and key. `overrides` are `key.sub=value` strings (the CLI's
    repeatable `--set`), applied last."""
    path = resolve_recipe_path(path_or_name, recipes_dir)
    layers = _chain(path, recipes_dir, ())
    layers.append(("--set", ty.parse_overrides(overrides)))
    return _resolve(layers, _label(path)), path


def load_recipe(path_or_name: str | os.PathLike, overrides: typing.Iterable[str] = (),
                recipes_dir: str | os.PathLike | None = None) -> Recipe:
    """`read_recipe` without the path."""
    return read_recipe(path_or_name, overrides, recipes_dir)[0]


def recipe_from_dict(data: dict, overrides: typing.Iterable[str] = (), label: str = "recipe") -> Recipe:
    """The same checks as `load_recipe` for an in-memory mapping (no `extends`)."""
    data = dict(data)
    if "extends" in data:
        raise ConfigError(f"{label}: extends: only recipe files can extend another recipe")
    return _resolve([(label, data), ("--set", ty.parse_overrides(overrides))], label)


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain YAML/JSON-ready dict of a resolved recipe (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(recipe))


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML text, in field order (for the run directory)."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True)


# Keys a resumed run may change: how long it runs and how often it evaluates and saves. Anything
# else (data, role, model, adapter shape, optimizer, schedule shape, seed) would make the resumed
# run a different run.
RESUME_SAFE = ("train.steps", "train.epochs", "eval.every", "eval.batches", "save.every", "save.keep_best")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def recipe_diff(old: Recipe, new: Recipe) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every recipe key whose value differs."""
    a, b = _flat(recipe_to_dict(old)), _flat(recipe_to_dict(new))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_resume(saved: Recipe, new: Recipe, label: str) -> list[tuple[str, Any, Any]]:
    """The changes of `new` against a run's `saved` recipe, all in RESUME_SAFE; ConfigError naming
    the other keys otherwise."""
    changes = recipe_diff(saved, new)
    unsafe = [c for c in changes if c[0] not in RESUME_SAFE]
    if unsafe:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in unsafe[:6])
        more = f" and {len(unsafe) - 6} more" if len(unsafe) > 6 else ""
        raise ConfigError(f"{label}: this recipe differs from the run's saved recipe.yaml in {shown}{more}; "
                          f"a resumed run may only change {', '.join(RESUME_SAFE)}")
    return changes
