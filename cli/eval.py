"""`iceburg-mlx eval`: role benches, perplexity and contamination for one model, or A vs B paired."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Optional

import typer

from iceburg_mlx.cli.main import app

BENCH_CHOICES = ("oracle", "surveyor", "dissident", "synthesist", "general", "all")


def _label(model: Optional[str], adapter: Optional[str]) -> str:
    if adapter:
        return Path(adapter).expanduser().resolve().name or str(adapter)
    if not model:
        return "smollm2-135m-instruct"
    p = Path(model).expanduser()
    return p.stem if p.suffix == ".gguf" else (p.name if p.exists() else model)


def _against_spec(against: str, model: Optional[str]) -> tuple[Optional[str], Optional[str], str]:
    """B as (model spec, adapter dir, label): 'base' = A's model without adapter; an adapter
    directory = A's model with that adapter; anything else = a model spec."""
    if against == "base":
        return model, None, "base"
    p = Path(against).expanduser()
    if p.is_dir() and (p / "adapter_config.json").is_file():
        return model, str(p), _label(model, str(p))
    return against, None, _label(against, None)


def _run_one(spec, adapter, label, items, params, ppl, contamination, console, regression=None, convs=None):
    import mlx.core as mx

    from iceburg_mlx.eval.bench import evaluate
    from iceburg_mlx.models import load_model

    with console.status(f"loading {label}...", spinner="dots") as status:
        loaded = load_model(spec, adapter=adapter)

        def progress(stage: str, done: int, total: int) -> None:
            status.update(f"{stage} [{done}/{total}]")

        result = evaluate(loaded.model, loaded.tokenizer, items, params, label=label, perplexity=ppl,
                          contamination=contamination, progress=progress, conversations=convs)
        result.info = {"spec": loaded.source.spec, "adapter": adapter, "compute": loaded.compute}
        reg = None
        if regression is not None:
            from iceburg_mlx.eval.compare import run_regression

            status.update(f"{label}: regression set")
            reg = run_regression(loaded.model, loaded.tokenizer, regression, params)
    del loaded
    gc.collect()
    mx.clear_cache()
    return result, reg


def _fmt_ci(r: dict) -> str:
    return f"{100 * r['ci95'][0]:.0f}-{100 * r['ci95'][1]:.0f}%"


def _print_human(record: dict, paths: dict | None, previous_note: Optional[str]) -> None:  # noqa: C901
    from rich.console import Console
    from rich.table import Table

    from iceburg_mlx.eval.report import summary_rows

    console = Console()
    table = Table(title="iceburg-mlx eval")
    for col, just in (("bench", "left"), ("model", "left"), ("n", "right"), ("accuracy", "right"),
                      ("95% CI", "right"), ("mean score", "right"), ("ECE", "right"), ("Brier", "right")):
        table.add_column(col, justify=just, overflow="fold")
    for r in summary_rows(record):
        table.add_row(r["bench"], r["model"], str(r["n"]), f"{100 * r['accuracy']:.0f}%", _fmt_ci(r),
                      f"{r['mean_score']:.2f}", "" if r["ece"] is None else f"{r['ece']:.3f}",
                      "" if r["brier"] is None else f"{r['brier']:.3f}")
    console.print(table)
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
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help="Adapter directory to evaluate."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (default: smollm2-135m-instruct)."),
    against: Optional[str] = typer.Option(None, "--against", help="Compare with B: 'base' (the model without "
                                          "the adapter), an adapter directory, or a model."),
    bench: str = typer.Option("all", "--bench", "-b", help=f"One of {', '.join(BENCH_CHOICES)}."),
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
) -> None:
    """Score a model (or adapter) on the role benches; with --against, a paired A/B with statistics."""
    from rich.console import Console

    from iceburg_mlx.errors import ConfigError
    from iceburg_mlx.eval.bench import eval_params, load_items, select_benches
    from iceburg_mlx.eval.compare import compare, diff_evals
    from iceburg_mlx.eval.report import build_record, read_eval_json, write_report

    if bench not in BENCH_CHOICES:
        raise ConfigError(f"--bench: {bench!r} is not one of {', '.join(BENCH_CHOICES)}")
    if n is not None and n < 1:
        raise ConfigError(f"--n: must be >= 1, got {n}")
    if against == "base" and not adapter:
        raise ConfigError("--against base needs --adapter (base = the model without it)")
    params = eval_params(seed, max_tokens)
    items = {b: load_items(b, data_dir, n) for b in select_benches(bench, data_dir)}
    prev_path = previous or (out if out is not None and (out / "eval.json").is_file() else None)
    prev = read_eval_json(prev_path) if prev_path is not None else None
    if previous is not None and prev is None:
        raise ConfigError(f"--previous: {previous} holds no eval.json")
    convs, ppl_source = None, "bench reference answers"
    if not no_perplexity:
        from iceburg_mlx.eval.perplexity import load_conversations

        if ppl_data is not None:
            convs, ppl_source = load_conversations(ppl_data, n), str(ppl_data)
            if not convs:
                raise ConfigError(f"--ppl-data: {ppl_data} holds no conversation with an assistant turn")
        elif not any(it.reference for its in items.values() for it in its):
            # eval prompts carry no answers: fall back to the benches' preference pairs (prompt +
            # chosen answer), whose topics are disjoint from train (data/README.md)
            files = [data_dir / b / "prefs.jsonl" for b in items if (data_dir / b / "prefs.jsonl").is_file()]
            convs = [c for f in files for c in load_conversations(f, n)]
            ppl_source = ", ".join(f"{f} (chosen)" for f in files) if convs else "none"
    console = Console(stderr=True)
    ppl, contam = not no_perplexity, not no_contamination
    a, reg = _run_one(model, adapter, _label(model, adapter), items, params, ppl, contam, console, regression, convs)
    b, comparisons = None, []
    if against:
        spec_b, adapter_b, label_b = _against_spec(against, model)
        b, _ = _run_one(spec_b, adapter_b, label_b, items, params, ppl, contam, console, convs=convs)
        comparisons = compare(a, b)
    settings = {"seed": seed, "max_tokens": max_tokens, "n": n, "bench": bench, "data_dir": str(data_dir),
                "temperature": 0.0, "perplexity_on": None if no_perplexity else ppl_source}
    changes = diff_evals(prev, build_record(a)) if prev is not None else None
    record = build_record(a, b, comparisons, settings, changes, reg)
    paths = write_report(out, record) if out is not None else None
    if as_json:
        typer.echo(json.dumps(record, ensure_ascii=False, default=str))
        return
    _print_human(record, paths, str(prev_path) if prev_path is not None else None)
