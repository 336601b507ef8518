"""`iceburg-mlx data ...`: the data pipeline commands (issue 5).

Each command calls one library function in `iceburg_mlx.data` and prints its report; library
errors (DataError, ConfigError) reach the top-level handler as one line and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from iceburg_mlx.cli.app import app

data_app = typer.Typer(help="Validate, dedup, score, split and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _console(stderr: bool = False):
    from iceburg_mlx.cli import ui

    return ui.console(stderr=stderr, highlight=False, markup=False, soft_wrap=True)


def _left_out(shown: int, total: int, what: str, hint: str) -> str | None:
    """The line saying a listing stopped short, or None when it showed everything."""
    return f"... {total - shown} more {what} not shown ({hint})" if total > shown else None


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
    workers: int = typer.Option(0, "--workers", help="Processes that parse and sketch (0: in-process)."),
    show: int = typer.Option(10, help="Clusters to print (the largest first)."),
) -> None:
    """Remove exact and near duplicates (MinHash LSH) across all files; first occurrence kept."""
    from dataclasses import asdict

    from iceburg_mlx.data.dedup import dedup_files
    from iceburg_mlx.data.io import write_json

    rep = dedup_files([str(f) for f in files], str(out), _dedup_options(threshold, shingle, unit, num_perm), workers=workers)
    con = _console()
    for c in sorted(rep.clusters, key=lambda c: -len(c.removed))[:show]:
        sims = ", ".join(f"{r} ({s:.2f})" for r, s in zip(c.removed[:5], c.similarity[:5]))
        more = f" +{len(c.removed) - 5} more" if len(c.removed) > 5 else ""
        con.print(f"kept {c.keep}; removed {sims}{more}")
    rest = _left_out(min(show, len(rep.clusters)), len(rep.clusters), "clusters",
                     "--show N prints more; --report FILE writes them all")
    if rest:
        con.print(rest)
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
    rest = _left_out(min(show, len(rep.clusters)), len(rep.clusters), "skeletons", "--show N prints more")
    if rest:
        con.print(rest)
    con.print(f"{rep.in_templates}/{rep.records} records ({rep.fraction:.1%}) in {len(rep.clusters)} template clusters")


@data_app.command("score")
def score_cmd(
    file: Path = typer.Argument(..., help="JSONL file."),
    out: Path = typer.Option(..., "--out", help="Output JSONL with quality_score and quality_features."),
    role: Optional[str] = typer.Option(None, "--role", help="dissident, oracle, surveyor or synthesist (default: meta.role)."),
    min_quality: Optional[float] = typer.Option(None, "--min-quality", help="Drop records scoring below this."),
) -> None:
    """Score each record in [0, 1] from transparent features and role rules."""
    from iceburg_mlx.data.score import score_file

    rep = score_file(file, out, role=role, min_quality=min_quality)
    con = _console()
    top = max(rep.histogram) or 1
    for i, c in enumerate(rep.histogram):
        con.print(f"{i / 10:.1f}-{(i + 1) / 10:.1f} {c:>7} {'#' * round(30 * c / top)}")
    con.print(f"{rep.records} records, mean score {rep.mean:.3f}, kept {rep.kept} -> {out}")


@data_app.command("order")
def order_cmd(
    file: Path = typer.Argument(..., help="JSONL file."),
    out: Path = typer.Option(..., "--out", help="Output JSONL in curriculum order (with emergence_score)."),
    by: str = typer.Option("weighted", "--by", help="weighted, novel_first or progressive."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Score novelty (emergence_score) and order records by a named curriculum."""
    from iceburg_mlx.data.curriculum import add_emergence_scores, get_curriculum
    from iceburg_mlx.data.io import iter_jsonl, write_jsonl

    fn = get_curriculum(by)
    rows = fn(add_emergence_scores([r for _, r in iter_jsonl(file)]), seed=seed)
    _console().print(f"wrote {write_jsonl(out, rows)} records ordered by {by} -> {out}")


@data_app.command("pairs")
def pairs_cmd(
    logs: Optional[List[Path]] = typer.Argument(None, help="Interaction/feedback logs written by iceburg_mlx.data.collect."),
    out: Path = typer.Option(..., "--out", help="Output JSONL of preference pairs."),
    bon: int = typer.Option(0, "--bon", help="Best-of-N: sample N answers per prompt of --prompts instead of reading logs."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Best-of-N: JSONL of prompts (messages ending in a user turn, or prompt)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help="Best-of-N: adapter to sample with (registry name or path)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Best-of-N: base model (default: the adapter's base, else the default model)."),
    role: Optional[str] = typer.Option(None, "--role", help="Best-of-N: scorer role rule (default: the adapter's role)."),
    min_margin: float = typer.Option(0.1, "--min-margin", help="Best-of-N: keep a pair when best - worst score >= this."),
    temperature: float = typer.Option(0.8, "--temperature", help="Best-of-N: sampling temperature."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Best-of-N: tokens per sample."),
    seed: int = typer.Option(0, "--seed", help="Best-of-N: base seed (prompt i, sample j uses seed + 1000 i + j)."),
    hard_negatives: bool = typer.Option(True, "--hard-negatives/--no-hard-negatives",
                                        help="Best-of-N: add perturbed copies of the best answer as rejected."),
) -> None:
    """Turn feedback (edits, thumbs, regenerates) into preference pairs, or sample best-of-N pairs (--bon N)."""
    from collections import Counter

    from iceburg_mlx.data.io import write_jsonl

    if bon:
        pairs = _bon_pairs(bon, prompts, adapter, model, role, min_margin, temperature, max_tokens, seed,
                           hard_negatives)
    else:
        from iceburg_mlx.data.pairs import feedback_pairs

        if not logs:
            raise typer.BadParameter("give feedback log files, or --bon N --prompts FILE --adapter A")
        pairs = feedback_pairs(logs)
    write_jsonl(out, pairs)
    by = ", ".join(f"{k} {v}" for k, v in Counter(p["source"] for p in pairs).items())
    _console().print(f"wrote {len(pairs)} preference pairs ({by or 'none'}) -> {out}")


def _bon_pairs(n, prompts, adapter, model, role, min_margin, temperature, max_tokens, seed, hard_negatives):
    from iceburg_mlx.datagen.bon import BonRequest, sample_pairs
    from iceburg_mlx.errors import ConfigError

    if prompts is None:
        raise ConfigError("--bon needs --prompts FILE")
    err = _console(stderr=True)
    req = BonRequest(prompts, n, adapter, model, role, min_margin, temperature, max_tokens, seed, hard_negatives)
    pairs, rep = sample_pairs(req, on_prompt=lambda i, total: err.print(f"  prompt {i}/{total}"), on_start=err.print)
    err.print(f"best-of-{n}: {rep.pairs} pairs cleared margin {min_margin}, {rep.below_margin} below it, "
              f"{rep.hard_negatives} hard negatives")
    return pairs


@data_app.command("prepare")
def prepare_cmd(
    files: List[Path] = typer.Argument(..., help="JSONL files (recipes will name these later)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    role: Optional[str] = typer.Option(None, "--role"),
    min_quality: Optional[float] = typer.Option(None, "--min-quality"),
    valid: float = typer.Option(0.1, "--valid"),
    test: float = typer.Option(0.0, "--test"),
    seed: int = typer.Option(0, "--seed"),
    curriculum: Optional[str] = typer.Option(None, "--curriculum", help="weighted, novel_first or progressive."),
    threshold: float = ThresholdOpt,
    keep_going: bool = typer.Option(False, "--keep-going", help="Drop invalid lines instead of stopping."),
    max_template_fraction: Optional[float] = typer.Option(None, help="Refuse data more templated than this."),
) -> None:
    """Validate, dedup, score, filter, split and order into a prepared dataset plus report.json."""
    from iceburg_mlx.data.dedup import DedupOptions
    from iceburg_mlx.data.prepare import PrepareOptions, prepare

    opts = PrepareOptions(fail_on_errors=not keep_going, dedup=DedupOptions(threshold=threshold), role=role,
                          min_quality=min_quality, valid=valid, test=test, seed=seed, curriculum=curriculum,
                          max_template_fraction=max_template_fraction)
    rep = prepare(files, out, opts)
    con = _console()
    con.print(f"{rep.input_records} records: {rep.invalid} invalid, {rep.duplicates_removed} duplicates, "
              f"{rep.below_quality} below quality; template fraction {rep.template_fraction:.1%}")
    con.print(", ".join(f"{k} {v}" for k, v in rep.counts.items()) + f"; report {rep.files['report']}")
