"""`prepare`: the whole chain (validate, dedup, score, filter, novelty, split, order) into a
prepared dataset directory plus `report.json`. Options are a plain dataclass so the recipe
system (not written yet) can fill it from YAML.

This version holds the surviving records in memory (fine for fine-tuning-sized sets); the
individual stages also exist as streaming functions for large files.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iceburg_mlx.data.curriculum import add_emergence_scores, get_curriculum
from iceburg_mlx.data.dedup import DedupOptions, cluster_ids, dedup_records
from iceburg_mlx.data.formats import record_text
from iceburg_mlx.data.io import iter_jsonl, write_json, write_jsonl
from iceburg_mlx.data.score import score_record
from iceburg_mlx.data.split import assign_splits
from iceburg_mlx.data.templates import template_report
from iceburg_mlx.data.validate import validate_files
from iceburg_mlx.errors import DataError


@dataclass(frozen=True)
class PrepareOptions:
    fail_on_errors: bool = True          # stop if validation finds errors (else drop bad lines)
    dedup: DedupOptions = field(default_factory=DedupOptions)
    role: str | None = None              # role rules for the quality score (None: from meta.role)
    min_quality: float | None = None     # drop records scoring below this
    emergence: bool = True               # compute emergence_score (novelty)
    valid: float = 0.1
    test: float = 0.0
    seed: int = 0
    curriculum: str | None = None        # weighted | novel_first | progressive (train order)
    max_template_fraction: float | None = None  # refuse a dataset more templated than this


@dataclass
class PrepareReport:
    input_records: int = 0
    invalid: int = 0
    duplicates_removed: int = 0
    below_quality: int = 0
    template_fraction: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def prepare(files: list[str | os.PathLike], out_dir: str | os.PathLike, options: PrepareOptions = PrepareOptions()) -> PrepareReport:
    rep = PrepareReport()
    if options.curriculum is not None:
        get_curriculum(options.curriculum)  # fail early on a bad name
    vreports = validate_files(files, template_threshold=None)
    bad: set[tuple[str, int]] = set()
    for vr in vreports:
        rep.input_records += vr.records
        for p in vr.problems:
            if p.severity == "error":
                rep.problems.append(str(p))
                bad.add((vr.path, p.line))
    if bad and options.fail_on_errors:
        raise DataError(f"{len(rep.problems)} validation errors; first: {rep.problems[0]}")
    records: list[dict[str, Any]] = []
    for f in files:
        try:
            for n, r in iter_jsonl(f):
                if (str(f), n) not in bad:
                    records.append(r)
        except DataError:
            continue  # only reachable when fail_on_errors is False: the rest of the file is skipped
    rep.invalid = rep.input_records - len(records)

    records, drep = dedup_records(records, options.dedup)
    rep.duplicates_removed = drep.removed
    tr = template_report(records)
    rep.template_fraction = tr.fraction
    if options.max_template_fraction is not None and tr.fraction > options.max_template_fraction:
        raise DataError(f"{tr.fraction:.0%} of records share a template skeleton (limit "
                        f"{options.max_template_fraction:.0%}); e.g. {tr.clusters[0].skeleton[:100]!r}")

    scored = []
    for r in records:
        s, feats = score_record(r, options.role)
        if options.min_quality is not None and s < options.min_quality:
            rep.below_quality += 1
            continue
        scored.append({**r, "quality_score": s, "quality_features": feats})
    if options.emergence and scored:
        scored = add_emergence_scores(scored)

    clusters = cluster_ids((record_text(r) for r in scored), options.dedup)
    codes = assign_splits(clusters, options.valid, options.test, options.seed) if scored else np.zeros(0, np.int8)
    parts = {name: [r for r, c in zip(scored, codes) if c == code] for code, name in enumerate(("train", "valid", "test"))}
    if options.curriculum is not None:
        parts["train"] = get_curriculum(options.curriculum)(parts["train"], seed=options.seed)
    out = Path(out_dir)
    for name, rows in parts.items():
        if name == "test" and options.test <= 0:
            continue
        rep.files[name] = str(out / f"{name}.jsonl")
        rep.counts[name] = write_jsonl(rep.files[name], rows)
    rep.files["report"] = str(out / "report.json")
    write_json(rep.files["report"], {**asdict(rep), "options": asdict(options),
                                     "templates": tr.to_dict(max_clusters=10)["clusters"]})
    return rep
