"""Exact and near-duplicate detection with MinHash LSH (datasketch), streaming over files.

Records are read in batches; each batch's signatures are computed at once (`minhash`), then
each record is checked in order: an exact duplicate (same normalised text) or a near duplicate
(an LSH candidate whose estimated Jaccard similarity is >= threshold) joins the cluster of the
first record it matches; otherwise it becomes a new cluster representative and is inserted in
the index. Memory is the index (band hashes plus one signature per kept record, the latter
used to confirm candidates) and a small dict of exact digests; it does not hold any text.
"""

from __future__ import annotations

import hashlib
from array import array
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iceburg_mlx.data import minhash as mh
from iceburg_mlx.data.formats import record_text
from iceburg_mlx.atomic import open_atomic
from iceburg_mlx.data.io import iter_lines, parse_line
from iceburg_mlx.errors import DataError


@dataclass(frozen=True)
class DedupOptions:
    """threshold: estimated Jaccard similarity at or above which two records are duplicates.
    k / unit: shingles of k words ('word') or k characters ('char'). num_perm: MinHash size."""

    threshold: float = 0.5
    k: int = 3
    unit: str = "word"
    num_perm: int = 64
    seed: int = 1
    batch: int = 512

    def shingles(self) -> mh.ShingleConfig:
        return mh.ShingleConfig(k=self.k, unit=self.unit, num_perm=self.num_perm, seed=self.seed)


@dataclass
class Cluster:
    """A kept representative and the records removed as its duplicates (locations `file:line`)."""

    keep: str
    removed: list[str] = field(default_factory=list)
    similarity: list[float] = field(default_factory=list)  # 1.0 for exact duplicates


@dataclass
class DedupReport:
    records: int = 0
    kept: int = 0
    exact_removed: int = 0
    near_removed: int = 0
    clusters: list[Cluster] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return self.exact_removed + self.near_removed

    @property
    def duplicate_fraction(self) -> float:
        return self.removed / self.records if self.records else 0.0


def _digest(text: str) -> bytes:
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8", "surrogatepass"), digest_size=12).digest()


class DuplicateIndex:
    """Incremental near-duplicate index: `add(texts)` returns, per text, the index of the earlier
    text it duplicates (or -1) and the estimated similarity. Indices count all texts added."""

    def __init__(self, options: DedupOptions = DedupOptions()):
        from datasketch import MinHashLSH

        if not 0.0 < options.threshold <= 1.0:
            raise DataError(f"dedup threshold must be in (0, 1], got {options.threshold}")
        if options.unit not in ("word", "char") or options.k < 1:
            raise DataError(f"shingles must be k >= 1 words or chars, got k={options.k} unit={options.unit!r}")
        self.options = options
        self.lsh = MinHashLSH(threshold=min(options.threshold, 0.99), num_perm=options.num_perm)
        self._exact: dict[bytes, int] = {}
        self._sigs = np.empty((1024, options.num_perm), dtype=np.uint32)
        self._sig_ids: list[int] = []
        self._n = 0
        self._empty = np.full(options.num_perm, mh.MAX32, dtype=np.uint32)

    def _store(self, idx: int, sig: np.ndarray) -> int:
        slot = len(self._sig_ids)
        if slot == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        self._sigs[slot] = sig
        self._sig_ids.append(idx)
        return slot

    def add(self, texts: Sequence[str]) -> list[tuple[int, float]]:
        return self.add_sketches(*sketch(texts, self.options))

    def add_sketches(self, sigs: np.ndarray, digests: Sequence[bytes]) -> list[tuple[int, float]]:
        """Like `add`, from precomputed `sketch` output (so sketching can run in other processes)."""
        from datasketch import LeanMinHash

        out = []
        for d, sig in zip(digests, sigs):
            idx = self._n
            self._n += 1
            if d in self._exact:
                out.append((self._exact[d], 1.0))
                continue
            self._exact[d] = idx
            if (sig == self._empty).all():  # no shingles: only exact matching applies
                out.append((-1, 0.0))
                continue
            lean = LeanMinHash(seed=self.options.seed, hashvalues=sig, scheme=mh.SCHEME)
            best, best_sim = -1, 0.0
            cands = self.lsh.query(lean)
            if cands:
                slots = np.fromiter(cands, dtype=np.int64, count=len(cands))
                sims = mh.jaccard(self._sigs[slots], sig[None, :])
                j = int(np.argmax(sims))
                if sims[j] >= self.options.threshold:
                    best, best_sim = self._sig_ids[slots[j]], float(sims[j])
            if best >= 0:
                self._exact[d] = best
                out.append((best, best_sim))
                continue
            slot = self._store(idx, sig)
            self.lsh.insert(slot, lean, check_duplication=False)
            out.append((-1, 0.0))
        return out


def sketch(texts: Sequence[str], options: DedupOptions) -> tuple[np.ndarray, list[bytes]]:
    """(MinHash signatures, exact-match digests) of a batch of texts: the parallelisable part."""
    return mh.signatures(texts, options.shingles()), [_digest(t) for t in texts]


def _sketch_lines(lines: list[bytes], options: DedupOptions) -> tuple[np.ndarray, list[bytes]] | tuple[int, str]:
    """Worker: parse raw JSONL lines and sketch them; on a bad line return (its index, reason)."""
    texts = []
    for i, line in enumerate(lines):
        try:
            texts.append(record_text(parse_line(line)))
        except DataError as e:
            return i, str(e)
    return sketch(texts, options)


def _batched(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for x in it:
        batch.append(x)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def find_duplicates(texts: Iterable[str], options: DedupOptions = DedupOptions()) -> Iterator[tuple[int, float]]:
    """For each text in order: (index of the earlier text it duplicates or -1, similarity)."""
    index = DuplicateIndex(options)
    for batch in _batched(texts, options.batch):
        yield from index.add(batch)


def cluster_ids(texts: Iterable[str], options: DedupOptions = DedupOptions()) -> np.ndarray:
    """A cluster id per text (the index of its representative), so callers can keep clusters together."""
    ids = []
    for i, (dup, _) in enumerate(find_duplicates(texts, options)):
        ids.append(dup if dup >= 0 else i)
    return np.asarray(ids, dtype=np.int64)


def _line_batches(paths: Sequence[str | os.PathLike], n: int) -> Iterator[tuple[list[tuple[int, int]], list[bytes]]]:
    """Batches of ((file index, line number), raw line) across files."""
    locs: list[tuple[int, int]] = []
    lines: list[bytes] = []
    for fi, p in enumerate(paths):
        for ln, line in iter_lines(p):
            locs.append((fi, ln))
            lines.append(line)
            if len(lines) >= n:
                yield locs, lines
                locs, lines = [], []
    if lines:
        yield locs, lines


def _sketched_batches(paths: Sequence[str | os.PathLike], options: DedupOptions, workers: int) -> Iterator[tuple[list[tuple[int, int]], Any]]:
    """(locations, sketch result) per batch, in file order; with workers > 0 sketching runs in a
    process pool with a bounded number of batches in flight (memory stays flat)."""
    batches = _line_batches(paths, options.batch)
    if workers <= 0:
        for locs, lines in batches:
            yield locs, _sketch_lines(lines, options)
        return
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for locs, lines in batches:
            pending.append((locs, pool.submit(_sketch_lines, lines, options)))
            if len(pending) >= 2 * workers + 1:
                locs0, fut = pending.popleft()
                yield locs0, fut.result()
        while pending:
            locs0, fut = pending.popleft()
            yield locs0, fut.result()


def dedup_files(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike | None,
    options: DedupOptions = DedupOptions(),
    workers: int = 0,
) -> DedupReport:
    """Remove exact and near duplicates across `paths` (first occurrence kept), write the rest to `out`.

    Two passes: the first finds duplicates, the second copies kept lines verbatim (every field
    preserved). With out=None only the report is produced. `workers` > 0 parses and sketches
    in that many processes while this one queries and updates the LSH index.
    """
    report = DedupReport()
    removed: set[tuple[int, int]] = set()
    clusters: dict[int, Cluster] = {}
    names = [str(p) for p in paths]
    locs_all = array("q")  # (file index << 40) | line, per record: 8 bytes each
    index = DuplicateIndex(options)
    for locs, result in _sketched_batches(paths, options, workers):
        if isinstance(result[0], int):
            fi, ln = locs[result[0]]
            raise DataError(f"{names[fi]}:{ln}: {result[1]}")
        for (fi, ln), (dup, sim) in zip(locs, index.add_sketches(*result)):
            report.records += 1
            locs_all.append((fi << 40) | ln)
            if dup < 0:
                report.kept += 1
                continue
            removed.add((fi, ln))
            if sim >= 1.0:
                report.exact_removed += 1
            else:
                report.near_removed += 1
            if dup not in clusters:
                clusters[dup] = Cluster(keep=f"{names[locs_all[dup] >> 40]}:{locs_all[dup] & ((1 << 40) - 1)}")
            c = clusters[dup]
            c.removed.append(f"{names[fi]}:{ln}")
            c.similarity.append(round(sim, 3))
    report.clusters = list(clusters.values())
    if out is not None:
        with open_atomic(out, "wb") as f:
            for fi, p in enumerate(paths):
                for n, line in iter_lines(p):
                    if (fi, n) not in removed:
                        f.write(line)
                        f.write(b"\n")
    return report


def dedup_records(records: Sequence[dict[str, Any]], options: DedupOptions = DedupOptions()) -> tuple[list[dict[str, Any]], DedupReport]:
    """In-memory variant: (kept records, report); cluster locations are record indices."""
    report = DedupReport(records=len(records))
    kept = []
    clusters: dict[int, Cluster] = {}
    for i, (dup, sim) in enumerate(find_duplicates((record_text(r) for r in records), options)):
        if dup < 0:
            kept.append(records[i])
            continue
        report.exact_removed += sim >= 1.0
        report.near_removed += sim < 1.0
        c = clusters.setdefault(dup, Cluster(keep=str(dup)))
        c.removed.append(str(i))
        c.similarity.append(round(sim, 3))
    report.kept = len(kept)
    report.clusters = list(clusters.values())
    return kept, report

