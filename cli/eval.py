"""`iceburg-mlx eval`: role benches, perplexity and contamination for one model, or A vs B paired."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from iceburg_mlx.cli.app import app
from iceburg_mlx.cli.options import NoRepeatNgramOpt, RepetitionPenaltyOpt

BENCH_CHOICES = ("oracle", "surveyor", "dissident", "synthesist", "general", "all")


def _fmt_ci(r: dict) -> str:
    return f"{100 * r['ci95'][0]:.0f}-{100 * r['ci95'][1]:.0f}%"


def _print_human(record: dict, paths: dict | None, previous_note: Optional[str]) -> None:  # noqa: C901
    from rich.table import Table

    from iceburg_mlx.cli import ui
    from iceburg_mlx.eval.report import summary_rows

    console = ui.console()
    table = Table(title="iceburg-mlx eval")
    for col, just in (("bench", "left"), ("model", "left"), ("n", "right"), ("accuracy", "right"),
                      ("95% CI", "right"), ("mean score", "right"), ("ECE", "right"), ("Brier", "right")):
        table.add_column(col, justify=just, overflow="fold")
    rows = summary_rows(record)
    for r in rows:
        table.add_row(r["bench"], r["model"], str(r["n"]), f"{100 * r['accuracy']:.0f}%", _fmt_ci(r),
                      f"{r['mean_score']:.2f}", "n/a" if r["ece"] is None else f"{r['ece']:.3f}",
                      "n/a" if r["brier"] is None else f"{r['brier']:.3f}")
    console.print(table)
    if any(r["ece"] is None for r in rows):
        console.print("ECE and Brier (calibration) need a stated confidence per answer: only the oracle "
                      "bench's answers carry one (n/a elsewhere, or when no answer parsed one)", highlight=False)
    for side in ("model", "against"):
        m = record.get(side)
        if not m:
            continue
        p = m.get("perplexity")
        on = record.get("settings", {}).get("perplexity_on")
        console.print(f"perplexity {m['label']}: " + (f"{p['perplexity']:.3f} ({p['tokens']} assistant tokens, "
                                                       f"{p['conversations']} conversations of {on})" if p else "n/a"),
                      highlight=False, soft_wrap=True)
        c = m.get("contamination")
        if c:
            state = "clean" if c["passed"] else f"{len(c['failures'])}/{c['n']} answers show template markers"
            console.print(f"contamination {m['label']} ({c['mode']} mode): {state}", highlight=False)
    for v in record.get("verdicts", []):
        console.print(v, highlight=False, markup=False, soft_wrap=True)
    if record.get("changes") is not None:
        ch = record["changes"]
        kinds = {k: sum(c["change"] == k for c in ch) for k in ("regressed", "fixed", "drifted")}
        console.print(f"since {previous_note}: " + ", ".join(f"{v} {k}" for k, v in kinds.items()), highlight=False)
        for c in ch:
            if c["change"] == "regressed":
                console.print(f"  regressed: {c['bench']}/{c['id']}", highlight=False, markup=False)
    if record.get("regression"):
        reg = record["regression"]
        console.print(f"regression set: {len(reg['flags'])} of {reg['n']} prompts flagged", highlight=False)
        for f in reg["flags"]:
            console.print(f"  {f['flag']}: {f['id']}", highlight=False, markup=False)
    if paths:
        console.print("wrote " + ", ".join(str(p) for p in paths.values()), highlight=False)
        if "chart" not in paths:
            console.print("chart skipped: matplotlib is not installed", highlight=False)


@app.command("eval")
def eval_command(
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help="Adapter to evaluate: registry name (oracle, oracle@3) or directory."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (default: smollm2-135m-instruct)."),
    against: Optional[str] = typer.Option(None, "--against", help="Compare with B: 'base' (the model without "
                                          "the adapter), an adapter (registry name or directory), or a model."),
    bench: str = typer.Option("all", "--bench", "-b", help=f"One of {', '.join(BENCH_CHOICES)}, or several "
                              "comma-separated; ROLE:SET runs data/ROLE/eval-SET.jsonl (e.g. oracle:v1, the first item set)."),
    n: Optional[int] = typer.Option(None, "--n", help="First N items of each bench (default: all)."),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Holds <bench>/eval.jsonl."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write eval.json, report.md and scores.png here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    seed: int = typer.Option(0, "--seed", help="Decoding seed (greedy; item i uses seed + i)."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most new tokens per answer."),
    previous: Optional[Path] = typer.Option(None, "--previous", help="A stored eval.json to diff against "
                                            "(default: the one already in --out, if any)."),
    regression: Optional[Path] = typer.Option(None, "--regression", help="A regression-set JSONL to run on the model."),
    ppl_data: Optional[Path] = typer.Option(None, "--ppl-data", help="Held-out conversations (JSONL; the first "
                                            "N with --n) for perplexity (default: the benches' reference answers)."),
    no_perplexity: bool = typer.Option(False, "--no-perplexity", help="Skip perplexity."),
    no_contamination: bool = typer.Option(False, "--no-contamination", help="Skip the template contamination probe."),
    repetition_penalty: float = RepetitionPenaltyOpt,
    no_repeat_ngram: int = NoRepeatNgramOpt,
    force: bool = typer.Option(False, "--force", help="Evaluate adapters trained on another base (a warning instead of an error)."),
) -> None:
    """Score a model (or adapter) on the role benches; with --against, a paired A/B with statistics."""
    from iceburg_mlx.cli import ui
    from iceburg_mlx.errors import ConfigError
    from iceburg_mlx.eval.report import write_report
    from iceburg_mlx.eval.run import EvalRequest, resolve_against, run_eval, side

    names = [b.strip() for b in bench.split(",") if b.strip()]
    bad = [b for b in names if b.partition(":")[0] not in BENCH_CHOICES or (b == "all" and len(names) > 1)]
    if not names or bad:
        raise ConfigError(f"--bench: {(bad or [bench])[0]!r} is not one of {', '.join(BENCH_CHOICES)} "
                          "(or ROLE:SET, comma-separated)")
    prev_path = previous or (out if out is not None and (out / "eval.json").is_file() else None)
    req = EvalRequest(a=side(model, adapter), b=resolve_against(against, model, adapter) if against else None,
                      bench=bench, n=n, data_dir=data_dir, seed=seed, max_tokens=max_tokens,
                      perplexity=not no_perplexity, contamination=not no_contamination, ppl_data=ppl_data,
                      regression=regression, previous=prev_path, force=force,
                      repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram)
    err = ui.console(stderr=True)
    with ui.progress(err, "answers", transient=True) as bar:
        task = bar.add_task("eval", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total or None)

        record = run_eval(req, progress)
    for s in ("model", "against"):
        for w in ((record.get(s) or {}).get("info") or {}).get("warnings", []):
            err.print(f"warning: {w}", markup=False, highlight=False)
    paths = write_report(out, record) if out is not None else None
    if as_json:
        typer.echo(json.dumps(record, ensure_ascii=False, default=str))
        return
    _print_human(record, paths, str(prev_path) if prev_path is not None else None)
