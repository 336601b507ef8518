"""`iceburg-mlx data ...`: the data pipeline commands (issue 5).

Each command calls one library function in `iceburg_mlx.data` and prints its report; library
errors (DataError, ConfigError) reach the top-level handler as one line and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from iceburg_mlx.cli.main import app

data_app = typer.Typer(help="Validate, dedup, score, split and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, markup=False, soft_wrap=True)


def _dedup_options(threshold: float, k: int, unit: str, num_perm: int):
    from iceburg_mlx.data.dedup import DedupOptions

    return DedupOptions(threshold=threshold, k=k, unit=unit, num_perm=num_perm)


ThresholdOpt = typer.Option(0.5, "--threshold", help="Jaccard similarity at or above which records are duplicates.")
ShingleOpt = typer.Option(3, "--shingle", help="Shingle size (words or characters).")
UnitOpt = typer.Option("word", "--unit", help="Shingle unit: word or char.")
PermOpt = typer.Option(64, "--num-perm", help="MinHash permutations.")


@data_app.command("validate")
def validate_cmd(
    files: List[Path] = typer.Argument(..., help="JSONL files to check."),
    template_threshold: float = typer.Option(0.3, help="Warn when more than this fraction is templated."),
    max_problems: int = typer.Option(1000, help="Problems listed per file (all are counted)."),
) -> None:
    """Check every line; print each problem as file:line: reason; exit 1 on any error."""
    from iceburg_mlx.data.validate import validate_files

    out = _console()
    reports = validate_files(files, template_threshold=template_threshold, max_problems=max_problems)
    errors = warnings = records = 0
    for rep in reports:
        for p in rep.problems:
            out.print(str(p))
        if rep.suppressed:
            out.print(f"{rep.path}: ... and {rep.suppressed} more errors")
        errors += rep.errors
        warnings += rep.warnings
        records += rep.records
        tf = "" if rep.template_fraction is None else f", template fraction {rep.template_fraction:.1%}"
        fm = ", ".join(f"{k} {v}" for k, v in rep.formats.most_common())
        out.print(f"{rep.path}: {rep.records} records ({fm or 'none'}), {rep.errors} errors, {rep.warnings} warnings{tf}")
    out.print(f"{'OK' if not errors else 'FAILED'}: {len(reports)} files, {records} records, {errors} errors, {warnings} warnings")
    if errors:
        raise typer.Exit(1)


@data_app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="Input JSONL (any supported format, mixed per record)."),
    out: Path = typer.Option(..., "--out", help="Output JSONL."),
    to: str = typer.Option("chatml", "--to", help="chatml, sharegpt or alpaca."),
) -> None:
    """Convert records between formats, keeping fields the conversion does not use."""
    from iceburg_mlx.data.formats import convert_file

    n = convert_file(str(src), str(out), to)
    _console().print(f"wrote {n} records as {to} to {out}")


@data_app.command("dedup")
def dedup_cmd(
    files: List[Path] = typer.Argument(..., help="JSONL files, deduplicated together."),
    out: Path = typer.Option(..., "--out", help="Output JSONL of the kept records."),
    threshold: float = ThresholdOpt,
    shingle: int = ShingleOpt,
    unit: str = UnitOpt,
    num_perm: int = PermOpt,
    report: Optional[Path] = typer.Option(None, help="Write all removed clusters as JSON here."),
    show: int = typer.Option(10, help="Clusters to print."),
) -> None:
    """Remove exact and near duplicates (MinHash LSH) across all files; first occurrence kept."""
    from dataclasses import asdict

    from iceburg_mlx.data.dedup import dedup_files
    from iceburg_mlx.data.io import write_json

    rep = dedup_files([str(f) for f in files], str(out), _dedup_options(threshold, shingle, unit, num_perm))
    con = _console()
    for c in sorted(rep.clusters, key=lambda c: -len(c.removed))[:show]:
        sims = ", ".join(f"{r} ({s:.2f})" for r, s in zip(c.removed[:5], c.similarity[:5]))
        more = f" +{len(c.removed) - 5} more" if len(c.removed) > 5 else ""
        con.print(f"kept {c.keep}; removed {sims}{more}")
    if report:
        write_json(report, {**{k: v for k, v in asdict(rep).items() if k != "clusters"},
                            "clusters": [asdict(c) for c in rep.clusters]})
    con.print(
        f"{rep.records} records: kept {rep.kept}, removed {rep.exact_removed} exact and {rep.near_removed} near "
        f"duplicates in {len(rep.clusters)} clusters -> {out}")


@data_app.command("split")
def split_cmd(
    file: Path = typer.Argument(..., help="JSONL file to split."),
    out: Path = typer.Option(..., "--out", help="Output directory (train/valid/test.jsonl)."),
    valid: float = typer.Option(0.1, "--valid", help="Fraction of records for validation."),
    test: float = typer.Option(0.0, "--test", help="Fraction of records for test."),
    seed: int = typer.Option(0, "--seed", help="Shuffle seed (same seed, same split)."),
    threshold: float = ThresholdOpt,
) -> None:
    """Deterministic split; near-duplicate clusters stay on one side."""
    from iceburg_mlx.data.dedup import DedupOptions
    from iceburg_mlx.data.split import SplitOptions, split_file

    rep = split_file(file, out, SplitOptions(valid=valid, test=test, seed=seed, dedup=DedupOptions(threshold=threshold)))
    parts = ", ".join(f"{k} {v} -> {rep.files[k]}" for k, v in rep.counts.items())
    _console().print(f"{parts} ({rep.multi_record_clusters} near-duplicate clusters kept together)")


@data_app.command("stats")
def stats_cmd(
    files: List[Path] = typer.Argument(..., help="JSONL files."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Counts per format and role, token-length percentiles, score histograms, duplicate and template fractions."""
    from iceburg_mlx.data.stats import compute_stats

    rep = compute_stats([str(f) for f in files])
    if as_json:
        typer.echo(json.dumps(rep.to_dict(), ensure_ascii=False))
        return
    from rich.table import Table

    con = _console()
    t = Table(title=f"{rep.records} records, {rep.errors} with errors")
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in rep.formats.most_common():
        t.add_row(f"format {k}", str(v))
    for k, v in rep.roles.most_common():
        t.add_row(f"role {k} (messages)", str(v))
    for k, v in rep.token_percentiles.items():
        t.add_row(f"tokens {k} (est.)", str(v))
    t.add_row("near-duplicate fraction", f"{rep.near_duplicate_fraction:.1%}")
    t.add_row("template fraction", f"{rep.template_fraction:.1%}")
    con.print(t)
    for key, hist in rep.score_histograms.items():
        h = Table(title=key)
        h.add_column("bin")
        h.add_column("count", justify="right")
        h.add_column("")
        top = max(hist) or 1
        for i, c in enumerate(hist):
            h.add_row(f"{i / len(hist):.1f}-{(i + 1) / len(hist):.1f}", str(c), "#" * round(30 * c / top))
        con.print(h)
    for c in rep.template_skeletons:
        con.print(f"template x{c['size']}: {c['skeleton'][:200]}")


@data_app.command("templates")
def templates_cmd(
    files: List[Path] = typer.Argument(..., help="JSONL files."),
    show: int = typer.Option(10, help="Skeletons to print."),
) -> None:
    """Find examples that share a skeleton with the topic words swapped."""
    from iceburg_mlx.data.io import iter_jsonl_many
    from iceburg_mlx.data.templates import template_report

    rep = template_report([r for _, _, r in iter_jsonl_many(files)])
    con = _console()
    for c in rep.clusters[:show]:
        con.print(f"x{c.size}: {c.skeleton}")
    con.print(f"{rep.in_templates}/{rep.records} records ({rep.fraction:.1%}) in {len(rep.clusters)} template clusters")
