"""Novelty ("emergence") scores and curriculum orderings.

Each example becomes a signed hashed bag of word unigrams and bigrams (`dim` buckets, L2
normalised). Its novelty is its distance to the rest of the corpus, averaged over two views:

- global: 1 - cosine to the centroid of all *other* examples (how atypical it is);
- local: 1 - max cosine to a fixed random reference sample of other examples (how far its
  nearest neighbour is; near duplicates score ~0).

Orderings (a registry that recipes name): ``weighted`` (a seeded weighted shuffle, sampling
weight = 0.5 + novelty, also written as ``sample_weight``), ``novel_first`` and ``progressive``
(easy to hard: short, typical examples first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from iceburg_mlx.data import minhash as mh
from iceburg_mlx.data.formats import record_text
from iceburg_mlx.errors import ConfigError


def hashed_vectors(texts: Sequence[str], dim: int = 1024) -> np.ndarray:
    """(len(texts), dim) float32 rows: signed feature hashing of word unigrams + bigrams, L2-normalised."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    for k in (1, 2):
        h, doc = mh.shingle_hashes(texts, mh.ShingleConfig(k=k))
        bucket = (h % np.uint32(dim)).astype(np.int64)
        sign = np.where((h >> np.uint32(31)) & np.uint32(1), -1.0, 1.0).astype(np.float32)
        np.add.at(out, (doc, bucket), sign)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-9)


def novelty_scores(texts: Sequence[str], dim: int = 1024, reference: int = 1024, seed: int = 0) -> np.ndarray:
    """Per-text novelty in [0, 1] (see module docstring)."""
    n = len(texts)
    if n < 2:
        return np.ones(n)
    v = hashed_vectors(texts, dim)
    total = v.sum(axis=0)
    rest = total[None, :] - v
    rest /= np.maximum(np.linalg.norm(rest, axis=1, keepdims=True), 1e-9)
    global_nov = 1.0 - np.clip((v * rest).sum(axis=1), 0.0, 1.0)
    ref = np.random.default_rng(seed).choice(n, size=min(reference, n), replace=False)
    local_sim = np.zeros(n, dtype=np.float32)
    for lo in range(0, n, 4096):
        sims = v[lo:lo + 4096] @ v[ref].T
        self_mask = ref[None, :] == np.arange(lo, min(lo + 4096, n))[:, None]
        sims[self_mask] = -1.0
        local_sim[lo:lo + 4096] = sims.max(axis=1)
    local_nov = 1.0 - np.clip(local_sim, 0.0, 1.0)
    return np.round(0.5 * global_nov + 0.5 * local_nov, 4)


def add_emergence_scores(records: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    """Copies of records with `emergence_score` set from `novelty_scores`."""
    scores = novelty_scores([record_text(r) for r in records], **kwargs)
    return [{**r, "emergence_score": float(s)} for r, s in zip(records, scores)]


def _novelty(records: Sequence[dict[str, Any]]) -> np.ndarray:
    if all(isinstance(r.get("emergence_score"), (int, float)) for r in records):
        return np.array([float(r["emergence_score"]) for r in records])
    return novelty_scores([record_text(r) for r in records])


def weighted(records: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Weighted random order (Efraimidis-Spirakis keys u^(1/w)); each record gets `sample_weight`."""
    w = 0.5 + _novelty(records)
    keys = np.random.default_rng(seed).random(len(records)) ** (1.0 / w)
    order = np.argsort(-keys, kind="stable")
    mean = float(w.mean()) if len(w) else 1.0
    return [{**records[i], "sample_weight": round(float(w[i] / mean), 4)} for i in order]


def novel_first(records: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Most novel first (ties keep input order)."""
    order = np.argsort(-_novelty(records), kind="stable")
    return [records[i] for i in order]


def progressive(records: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Easy to hard: difficulty = mean of the length rank and the novelty rank."""
    n = len(records)
    if n == 0:
        return []
    lengths = np.array([len(record_text(r)) for r in records])
    nov = _novelty(records)
    rank = lambda x: np.argsort(np.argsort(x, kind="stable"), kind="stable") / max(1, n - 1)  # noqa: E731
    order = np.argsort(0.5 * rank(lengths) + 0.5 * rank(nov), kind="stable")
    return [records[i] for i in order]


CURRICULA: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "weighted": weighted,
    "novel_first": novel_first,
    "progressive": progressive,
}


def get_curriculum(name: str) -> Callable[..., list[dict[str, Any]]]:
    if name not in CURRICULA:
        raise ConfigError(f"unknown curriculum {name!r}; supported: {', '.join(CURRICULA)}")
    return CURRICULA[name]
