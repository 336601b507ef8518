"""Creating a review session: both sides answer the bench's prompts once, with the same decoding.

A side is an adapter spec (a registry name, `role@N`, a directory) on the base model, or `base`
for the base alone. Both sides answer the same messages: the bench item's, with the role's
system prompt (from A's adapter, else B's) put first when the item has none, as `generate
--adapter` does. Each side is loaded, answers every prompt in one `generate_many` call (seeded;
greedy by default) and is freed before the other loads. Which response the page shows first is
balanced over the items and shuffled (`store.balanced_sides`); item order is shuffled per rater.
"""

from __future__ import annotations

import datetime as _dt
import gc
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from iceburg_mlx.adapters import load_with_adapter, resolve_adapter_path, role_system_prompt
from iceburg_mlx.errors import ConfigError
from iceburg_mlx.eval.bench import bench_path, load_items
from iceburg_mlx.generation import generate_many
from iceburg_mlx.review.rubrics import SCALE, get_rubric
from iceburg_mlx.review.store import NewItem, ReviewStore, balanced_sides, create_store
from iceburg_mlx.sampling import SamplingParams
from iceburg_mlx.templates import chat_prompt, with_system

BASE = "base"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Side:
    spec: str                   # as typed: "oracle@3", a directory, or "base"
    adapter: Path | None        # the resolved adapter directory; None for the base alone

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "adapter": str(self.adapter) if self.adapter else None}


def resolve_side(spec: str, adapters_dir: str | Path | None = None) -> Side:
    """`base`, or an adapter spec resolved to its directory (AdapterError if there is none)."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("a side needs an adapter spec (name, name@N, directory) or 'base'")
    if spec == BASE:
        return Side(BASE, None)
    return Side(spec, resolve_adapter_path(spec, adapters_dir).resolve())


def role_system(sides: list[Side]) -> str | None:
    """The system prompt the first adapter side was trained with, if any."""
    for side in sides:
        if side.adapter is not None:
            prompt = role_system_prompt(str(side.adapter))
            if prompt:
                return prompt
    return None


@dataclass
class Created:
    store: ReviewStore
    seconds: dict[str, float]    # per side: load + generate
    identical: int               # items where both sides gave the same answer


def create_session(out: str | Path, a: str, b: str, bench: str, *, n: int | None = 40, model: str | None = None,
                   data_dir: str | Path = "data", adapters_dir: str | Path | None = None,
                   params: SamplingParams | None = None, seed: int = 0,
                   progress: Progress | None = None) -> Created:
    """Answer the first `n` items of `bench` with sides `a` and `b`; write the session to `out`."""
    out = Path(out)
    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if out.exists():
        raise ConfigError(f"{out}: already exists; choose another --out or remove it")
    rubric = get_rubric(bench)
    sides = {"A": resolve_side(a, adapters_dir), "B": resolve_side(b, adapters_dir)}
    if sides["A"].adapter == sides["B"].adapter:
        raise ConfigError(f"--a {a} and --b {b} are the same model: nothing to compare")
    params = (params or SamplingParams(temperature=0.0, max_tokens=256, seed=seed)).validate()
    items = load_items(bench, data_dir, n)
    system = role_system(list(sides.values()))
    prompts = [with_system(it.prompt, system) for it in items]
    answers: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    base: dict[str, Any] = {}
    for key, side in sides.items():
        if progress is not None:
            progress(f"{key} ({side.spec}): loading and answering {len(prompts)} prompts")
        t0 = time.perf_counter()
        loaded = load_with_adapter(model, str(side.adapter) if side.adapter else None)
        ids = [chat_prompt(loaded.tokenizer, p) for p in prompts]
        answers[key] = [g.text for g in generate_many(loaded.model, loaded.tokenizer, ids, params)]
        seconds[key] = time.perf_counter() - t0
        base = {"spec": loaded.source.spec, "path": str(loaded.source.path)}
        del loaded
        gc.collect()
        mx.clear_cache()
    first = balanced_sides(len(items), seed)
    new = [NewItem(it.id, p, ans_a, ans_b, f)
           for it, p, ans_a, ans_b, f in zip(items, prompts, answers["A"], answers["B"], first)]
    meta = {
        "session": uuid.uuid4().hex[:12],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bench": bench, "data": str(bench_path(bench, data_dir)), "n": len(items),
        "rubric": [c.to_dict() for c in rubric], "scale": list(SCALE),
        "model": base,
        "sides": {k: {**s.to_dict(), "seconds": round(seconds[k], 2)} for k, s in sides.items()},
        "decoding": {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
                     "seed": params.seed},
        "system_prompt_added": system is not None and any(p != it.prompt for p, it in zip(prompts, items)),
        "side_seed": seed,
    }
    store = create_store(out, meta, new)
    return Created(store, seconds, sum(x.answer_a == x.answer_b for x in new))
