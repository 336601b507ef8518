"""A run directory and its checkpoints.

    runs/<role>-<time>/
      recipe.yaml  provenance.json  metrics.jsonl      (written atomically)
      checkpoints/step-000020/  best/  final/           (adapter + optimizer.safetensors + trainer.json)
      adapter/                                          (the finished adapter, then published)

A checkpoint holds the adapter weights, the optimizer state and the `LoopState` (step, data
position, best validation loss, elapsed time): `Checkpointer.load` puts a model and optimizer back
exactly where `save` left them. Each checkpoint directory is swapped in whole (`atomic_dir`), so a
crash leaves the previous one intact; only the newest `keep` step checkpoints are kept.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from iceburg_mlx.adapters.files import METRICS_FILE
from iceburg_mlx.atomic import atomic_dir, write_jsonl
from iceburg_mlx.errors import ConfigError

CHECKPOINTS = "checkpoints"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer.json"


@dataclass
class LoopState:
    """Where a run is: what a checkpoint restores besides the weights and the optimizer."""

    step: int = 0
    epoch: int = 0
    index: int = 0              # next batch index within `epoch`
    tokens: int = 0
    best_val: float = math.inf
    elapsed: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__, best_val=None if math.isinf(self.best_val) else self.best_val)

    @classmethod
    def from_json(cls, d: dict) -> LoopState:
        d = dict(d)
        d["best_val"] = math.inf if d.get("best_val") is None else d["best_val"]
        return cls(**d)


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
        elif last:
            tree[key] = value
        else:
            tree = tree.setdefault(key, {})


class Checkpointer:
    """Saves and restores (adapter, optimizer state, LoopState) under `run_dir/checkpoints/`.

    `save_adapter(model, dir)` / `load_adapter(model, dir)` write and read the adapter files; only
    rank 0 writes."""

    def __init__(self, run_dir: Path, model, optimizer, save_adapter: Callable, load_adapter: Callable,
                 rank: int = 0, keep: int = 2):
        self.dir = Path(run_dir) / CHECKPOINTS
        self.model, self.optimizer = model, optimizer
        self.save_adapter, self.load_adapter = save_adapter, load_adapter
        self.rank, self.keep = rank, keep

    def save(self, state: LoopState, name: str | None = None) -> Path | None:
        """A checkpoint named `name` ("best", "final") or, by default, after the step (then pruned)."""
        import mlx.core as mx
        from mlx.utils import tree_flatten

        if self.rank != 0:
            return None
        final = self.dir / (name or f"step-{state.step:06d}")
        with atomic_dir(final) as tmp:
            self.save_adapter(self.model, tmp)
            mx.save_safetensors(str(tmp / OPTIMIZER_FILE), dict(tree_flatten(self.optimizer.state)))
            (tmp / STATE_FILE).write_text(json.dumps(state.to_json()))
        if name is None:
            steps = sorted(p for p in self.dir.glob("step-*") if p.is_dir())
            for p in steps[: max(0, len(steps) - self.keep)]:
                shutil.rmtree(p, ignore_errors=True)
        return final

    def load(self, path: Path) -> LoopState:
        """Restore the adapter and the optimizer state from checkpoint `path`; its LoopState."""
        import mlx.core as mx

        self.load_adapter(self.model, path)
        flat = mx.load(str(path / OPTIMIZER_FILE))
        # fill the existing state dict in place: a compiled step holds a reference to it
        self.optimizer.init(self.model.trainable_parameters())
        for key, value in flat.items():
            _set_leaf(self.optimizer.state, key.split("."), value)
        mx.eval(self.model.parameters(), self.optimizer.state)
        return LoopState.from_json(json.loads((path / STATE_FILE).read_text()))

    def latest(self) -> Path:
        """The newest step checkpoint (what --resume continues from)."""
        cks = sorted(p for p in self.dir.glob("step-*") if (p / STATE_FILE).is_file())
        if not cks:
            raise ConfigError(f"--resume {self.dir.parent}: no step checkpoint to resume from")
        return cks[-1]


# ----------------------------------------------------------------------------- the run directory

def new_run_dir(runs_dir: Path, role: str, rank: int = 0) -> Path:
    """runs_dir/<role>-<YYYYmmdd-HHMMSS>[-n], created by rank 0."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_dir) / f"{role}-{stamp}"
    n = 1
    while run_dir.exists() and rank == 0:
        n += 1
        run_dir = Path(runs_dir) / f"{role}-{stamp}-{n}"
    if rank == 0:
        run_dir.mkdir(parents=True)
    return run_dir


def open_run_dir(run_dir: Path) -> list[dict]:
    """An existing run directory to resume: its metrics so far (ConfigError if it is not one)."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINTS).is_dir():
        raise ConfigError(f"--resume {run_dir}: not a run directory with checkpoints")
    return read_metrics(run_dir)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    write_jsonl(Path(run_dir) / METRICS_FILE, metrics)


def finish_adapter(run_dir: Path, save_adapter: Callable, model, with_files: tuple[str, ...]) -> Path:
    """run_dir/adapter: the adapter plus copies of the run's `with_files`, swapped in whole."""
    final = Path(run_dir) / "adapter"
    with atomic_dir(final) as tmp:
        save_adapter(model, tmp)
        for name in with_files:
            if (Path(run_dir) / name).is_file():
                shutil.copy2(Path(run_dir) / name, tmp / name)
    return final


__all__ = ["CHECKPOINTS", "Checkpointer", "LoopState", "finish_adapter", "new_run_dir", "open_run_dir",
           "read_metrics", "write_metrics"]
