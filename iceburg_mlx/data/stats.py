"""Dataset statistics in one streaming pass: counts per format and role, token-length percentiles
(estimated as UTF-8 bytes / 4, no tokenizer needed), score histograms, and the near-duplicate
and template fractions."""

from __future__ import annotations

import os
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iceburg_mlx.data import formats
from iceburg_mlx.data.dedup import DedupOptions, DuplicateIndex
from iceburg_mlx.data.io import iter_lines, parse_line
from iceburg_mlx.data.templates import template_report
from iceburg_mlx.data.validate import validate_record
from iceburg_mlx.errors import DataError

BYTES_PER_TOKEN = 4.0
PERCENTILES = (50, 90, 99)
HIST_BINS = 10


def estimate_tokens(text: str) -> int:
    """A fast token-count estimate: about four UTF-8 bytes per token for English-like text."""
    return int(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN + 0.999)


@dataclass
class StatsReport:
    files: list[str]
    records: int = 0
    errors: int = 0
    formats: Counter = field(default_factory=Counter)
    roles: Counter = field(default_factory=Counter)
    turns: Counter = field(default_factory=Counter)  # messages per record
    token_percentiles: dict[str, int] = field(default_factory=dict)
    score_histograms: dict[str, list[int]] = field(default_factory=dict)
    near_duplicate_fraction: float = 0.0
    template_fraction: float = 0.0
    template_skeletons: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "records": self.records,
            "errors": self.errors,
            "formats": dict(self.formats),
            "roles": dict(self.roles),
            "turns": {str(k): v for k, v in sorted(self.turns.items())},
            "token_percentiles": self.token_percentiles,
            "score_histograms": self.score_histograms,
            "near_duplicate_fraction": round(self.near_duplicate_fraction, 4),
            "template_fraction": round(self.template_fraction, 4),
            "template_skeletons": self.template_skeletons,
        }


def compute_stats(
    paths: Sequence[str | os.PathLike],
    dedup: DedupOptions = DedupOptions(),
    template_sample: int = 5000,
) -> StatsReport:
    """Stream over `paths` once (bad lines count as errors and are skipped)."""
    rep = StatsReport(files=[str(p) for p in paths])
    lengths = array("i")
    scores = {"quality_score": array("d"), "emergence_score": array("d")}
    index = DuplicateIndex(dedup)
    dups = 0
    batch: list[str] = []
    sample: list[dict[str, Any]] = []

    def flush() -> int:
        found = sum(d >= 0 for d, _ in index.add(batch)) if batch else 0
        batch.clear()
        return found

    for p in paths:
        try:
            for _, line in iter_lines(p):
                rep.records += 1
                try:
                    rec = parse_line(line)
                    fmt = formats.detect_format(rec)
                except DataError:
                    rep.errors += 1
                    continue
                rep.errors += bool(validate_record(rec))
                rep.formats[fmt] += 1
                try:
                    msgs = formats.to_messages(rec)
                except DataError:
                    msgs = []
                rep.turns[len(msgs)] += 1
                for m in msgs:
                    rep.roles[str(m.get("role"))] += 1
                text = formats.record_text(rec, include_system=True)
                lengths.append(estimate_tokens(text))
                for key, vals in scores.items():
                    v = rec.get(key)
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        vals.append(float(v))
                batch.append(formats.record_text(rec))
                if len(batch) >= dedup.batch:
                    dups += flush()
                if len(sample) < template_sample:
                    sample.append(rec)
        except DataError:
            rep.errors += 1
    dups += flush()
    if lengths:
        arr = np.frombuffer(lengths, dtype=np.int32)
        rep.token_percentiles = {f"p{q}": int(np.percentile(arr, q)) for q in PERCENTILES}
        rep.token_percentiles["max"] = int(arr.max())
        rep.token_percentiles["total"] = int(arr.sum())
    for key, vals in scores.items():
        if vals:
            hist, _ = np.histogram(np.clip(vals, 0, 1), bins=HIST_BINS, range=(0.0, 1.0))
            rep.score_histograms[key] = hist.tolist()
    rep.near_duplicate_fraction = dups / len(lengths) if lengths else 0.0
    if sample:
        tr = template_report(sample)
        rep.template_fraction = tr.fraction
        rep.template_skeletons = tr.to_dict(max_clusters=5)["clusters"]
    return rep
