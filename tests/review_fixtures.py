"""Shared set-up for the review tests: a session made by the real pipeline on the tiny model, and
synthetic sessions (no model) for the web and statistics tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REVIEW_N = 12


def synthetic_store(path: Path, n: int = 50, bench: str = "oracle", seed: int = 0, same: tuple[int, ...] = ()):
    """A session of `n` made-up items (answers 'A answer i' / 'B answer i', or the same answer for
    the items in `same`), sides balanced."""
    from iceburg_mlx.review.rubrics import SCALE, get_rubric
    from iceburg_mlx.review.store import NewItem, balanced_sides, create_store

    first = balanced_sides(n, seed)
    items = [NewItem(f"{bench}-eval-{i:03d}", [{"role": "system", "content": "Be an oracle."},
                                               {"role": "user", "content": f"Claim number {i} is true."}],
                     f"A answer {i}", f"{'A' if i in same else 'B'} answer {i}", first[i]) for i in range(n)]
    meta = {"session": f"synthetic{seed}", "created": "2026-12-01T00:00:00+00:00", "bench": bench, "n": n,
            "rubric": [c.to_dict() for c in get_rubric(bench)], "scale": list(SCALE),
            "model": {"spec": "tiny-base-model.gguf", "path": "/models/tiny-base-model.gguf"},
            "sides": {"A": {"spec": "oracle@3", "adapter": "/registry/oracle/3", "seconds": 1.0},
                      "B": {"spec": "oracle@4", "adapter": "/registry/oracle/4", "seconds": 1.0}},
            "decoding": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 32, "seed": 0}}
    return create_store(path, meta, items)


def full_scores(store, value: int = 3) -> dict:
    return {"1": {k: value for k in store.criteria}, "2": {k: value for k in store.criteria}}


def judge(store, rater: str, idx: int, preferred: str, score_a: int = 3, score_b: int = 3, comment: str = ""):
    """Save a judgment given in A/B terms, as the page would send it for this item's layout."""
    item = store.item(idx)
    first, second = ("A", "B") if item.a_first else ("B", "A")
    choice = {first: "1", second: "2", "tie": "tie"}[preferred]
    shown = {"1": score_a if first == "A" else score_b, "2": score_b if first == "A" else score_a}
    scores = {pos: {k: v for k in store.criteria} for pos, v in shown.items()}
    return store.save_judgment(store.rater(rater, create=True), idx, choice, scores, comment)


@pytest.fixture(scope="session")
def review_registry(tiny_gguf, tmp_path_factory):
    """(gguf path, adapters dir): two different tiny oracle adapters published as oracle@1 and oracle@2."""
    from serve_fixtures import make_adapter

    from iceburg_mlx.adapters import registry as reg

    gguf = tiny_gguf("F32")
    root = tmp_path_factory.mktemp("review-registry")
    adir = root / "adapters"
    for seed in (1, 2):
        src = make_adapter(gguf, root / f"src-{seed}", seed, 4, ("q_proj", "v_proj", "down_proj"), -1)
        reg.publish(src, "oracle", adir)
    return gguf, adir


@pytest.fixture(scope="session")
def review_session(review_registry, tmp_path_factory):
    """A session made by `create_session` on the tiny model: oracle@1 (A) vs oracle@2 (B), 12 oracle items."""
    from iceburg_mlx.review.create import create_session
    from iceburg_mlx.sampling import SamplingParams

    gguf, adir = review_registry
    out = tmp_path_factory.mktemp("review-session") / "session.db"
    t0 = time.perf_counter()
    made = create_session(out, "oracle@1", "oracle@2", "oracle", n=REVIEW_N, model=str(gguf), data_dir=REPO / "data",
                          adapters_dir=adir, params=SamplingParams(max_tokens=24, seed=0))
    made.seconds["total"] = time.perf_counter() - t0
    return made
