"""What a training method is, and the registry of them.

A method turns a recipe and a loaded model into `MethodData`: the objective the loop minimises,
the batches it feeds (global batches; the run builder shards them over ranks), the validation
batches, the step count, and what it reports (its unit, a data report, provenance fields, a line
for held-out metrics). The loop (`train.loop.train`) and the run builder (`train.run`) know no
method by name.

    class Weighted(Method):
        name = "weighted-ce"
        def prepare(self, recipe, loaded, ctx): ...
    register(Weighted())          # then `method.name: weighted-ce` in a recipe trains with it
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceburg_mlx.errors import ConfigError


@dataclass(frozen=True)
class RunContext:
    """What the run builder hands a method: resolved data files, lines to skip, where things are."""

    train_path: Path
    valid_path: Path | None = None
    skip: dict = field(default_factory=dict)          # path -> line numbers the validator rejected
    adapters_dir: Path | None = None
    base_path: Path | None = None                     # the base model's file or directory
    note: Callable[[str], None] = lambda m: None      # one-line notes for the user
    progress: Callable[[str, int, int], None] | None = None   # (stage, done, total) of preparation


@dataclass
class MethodData:
    objective: Callable                                # (model, arrays, k, for_grad) -> (loss_sum, count, metrics)
    batches: Callable[[int, int], Iterator[tuple[int, int, Any]]]   # (start epoch, start index) -> endless
    steps: int
    report: Any                                        # the training file's BuildReport
    valid: list | None = None                          # validation batches (global)
    unit: str = "tokens"                               # what the objective's count counts
    provenance: dict = field(default_factory=dict)     # recorded in provenance.json under the method's name
    describe_eval: Callable[[dict], str] | None = None # held-out metrics -> one line for the user


class Method:
    """A training method: a name, an optional check before any compute, and `prepare`."""

    name: str = ""

    def check(self, recipe, ctx: RunContext) -> None:
        """Refuse a recipe before the model loads (e.g. an init adapter that does not fit)."""

    def prepare(self, recipe, loaded, ctx: RunContext) -> MethodData:
        raise NotImplementedError


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make `method` available as `method.name: <its name>` in recipes."""
    if not method.name:
        raise ConfigError(f"{type(method).__name__}: a method needs a name")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method.name: '{name}' is not a training method (available: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def steps_for(recipe, batches_per_epoch: int) -> int:
    """Optimizer steps: train.steps, or train.epochs over `batches_per_epoch` global batches."""
    if recipe.train.steps is not None:
        return int(recipe.train.steps)
    return max(1, math.ceil(recipe.train.epochs * batches_per_epoch / recipe.train.grad_accum))


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


__all__ = ["METHODS", "Method", "MethodData", "RunContext", "get_method", "pad_id", "register", "steps_for"]
