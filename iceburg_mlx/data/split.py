"""Deterministic train / valid / test splits that never separate near duplicates.

Records are first grouped into near-duplicate clusters (`dedup.cluster_ids`); whole clusters
are then shuffled with the seed and dealt to test, then valid, until each reaches its share of
records, the rest to train. Same file, options and seed: same split, byte for byte.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iceburg_mlx.data.dedup import DedupOptions, cluster_ids
from iceburg_mlx.data.formats import record_text
from iceburg_mlx.atomic import open_atomic
from iceburg_mlx.data.io import iter_jsonl, iter_lines
from iceburg_mlx.errors import ConfigError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitOptions:
    valid: float = 0.1
    test: float = 0.0
    seed: int = 0
    dedup: DedupOptions = field(default_factory=DedupOptions)


@dataclass
class SplitReport:
    counts: dict[str, int]
    files: dict[str, str]
    clusters: int
    multi_record_clusters: int


def assign_splits(clusters: np.ndarray, valid: float, test: float, seed: int) -> np.ndarray:
    """Split code per record (0 train, 1 valid, 2 test); records of one cluster share a code."""
    if valid < 0 or test < 0 or valid + test >= 1:
        raise ConfigError(f"valid and test fractions must be >= 0 and sum below 1 (got {valid}, {test})")
    n = len(clusters)
    uniq, inverse, sizes = np.unique(clusters, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    code = np.zeros(len(uniq), dtype=np.int8)
    n_test, n_valid = round(test * n), round(valid * n)
    filled_test = filled_valid = 0
    for c in order:
        if filled_test < n_test:
            code[c] = 2
            filled_test += sizes[c]
        elif filled_valid < n_valid:
            code[c] = 1
            filled_valid += sizes[c]
    return code[inverse]


def split_file(path: str | os.PathLike, out_dir: str | os.PathLike, options: SplitOptions = SplitOptions()) -> SplitReport:
    """Write train.jsonl / valid.jsonl (/ test.jsonl when test > 0) under out_dir, lines verbatim."""
    clusters = cluster_ids((record_text(r) for _, r in iter_jsonl(path)), options.dedup)
    codes = assign_splits(clusters, options.valid, options.test, options.seed)
    names = [s for s in SPLITS if s != "test" or options.test > 0]
    out = Path(out_dir)
    files = {s: str(out / f"{s}.jsonl") for s in names}
    counts = dict.fromkeys(names, 0)
    with contextlib.ExitStack() as stack:
        handles = {s: stack.enter_context(open_atomic(files[s], "wb")) for s in names}
        for i, (_, line) in enumerate(iter_lines(path)):
            s = SPLITS[codes[i]]
            handles[s].write(line)
            handles[s].write(b"\n")
            counts[s] += 1
    _, sizes = np.unique(clusters, return_counts=True)
    return SplitReport(counts=counts, files=files, clusters=len(sizes), multi_record_clusters=int((sizes > 1).sum()))
