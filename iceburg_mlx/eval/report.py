"""Eval records and reports: a JSON-able dict, `eval.json` (atomic), a markdown report, a PNG chart.

The record is what the adapter registry keeps next to an adapter: who was evaluated (`model`),
against what (`against`, optional), on which items with which decoding (`settings`), the
per-bench results with every answer, perplexity, the contamination probe, the paired
comparison with its verdict lines, and any changes since a previous record (`changes`).
The chart needs matplotlib; without it the report says so and no PNG is written.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iceburg_mlx.eval.bench import ModelEval
from iceburg_mlx.eval.compare import BenchComparison

SCHEMA = "iceburg-mlx/eval/1"
EVAL_JSON = "eval.json"
REPORT_MD = "report.md"
CHART_PNG = "scores.png"


def build_record(a: ModelEval, b: ModelEval | None = None, comparisons: Sequence[BenchComparison] = (),
                 settings: dict[str, Any] | None = None, changes: list[dict[str, Any]] | None = None,
                 regression: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able eval record."""
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings or {},
        "model": a.to_dict(),
        "against": b.to_dict() if b is not None else None,
        "comparison": [c.to_dict() for c in comparisons],
        "verdicts": [c.verdict() for c in comparisons],
    }
    if changes is not None:
        record["changes"] = changes
    if regression is not None:
        record["regression"] = regression
    return record


def write_eval_json(out_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write `record` to `<out_dir>/eval.json` atomically; returns the path."""
    from iceburg_mlx.data.io import write_json

    path = Path(out_dir) / EVAL_JSON
    write_json(path, record)
    return path


def read_eval_json(path: str | Path) -> dict[str, Any] | None:
    """A stored eval record (a directory holding eval.json, or the file); None if absent."""
    import json

    from iceburg_mlx.errors import DataError

    p = Path(path)
    p = p / EVAL_JSON if p.is_dir() else p
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: cannot read eval record ({e})") from None


def summary_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (bench, model): accuracy, interval, mean score, calibration."""
    rows = []
    sides = [record[s] for s in ("model", "against") if record.get(s)]
    benches = list(dict.fromkeys(b for m in sides for b in m["benches"]))
    for bench in benches:
        for m in sides:
            r = m["benches"].get(bench)
            if r is None:
                continue
            cal = r.get("calibration") or {}
            rows.append({"bench": bench, "model": m["label"], "n": r["n"], "accuracy": r["accuracy"],
                         "ci95": r["ci95"], "mean_score": r["mean_score"], "ece": cal.get("ece"),
                         "brier": cal.get("brier")})
    return rows


def plot_scores(record: dict[str, Any], path: str | Path) -> Path | None:
    """Per-bench accuracy with 95% intervals, model (and against) side by side; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sides = [record[s] for s in ("model", "against") if record.get(s)]
    benches = list(sides[0]["benches"])
    width = 0.8 / len(sides)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(benches), 3.6), dpi=100)
    for k, m in enumerate(sides):
        xs, ys, lo, hi = [], [], [], []
        for i, b in enumerate(benches):
            r = m["benches"].get(b)
            if r is None:
                continue
            xs.append(i + (k - (len(sides) - 1) / 2) * width)
            ys.append(100 * r["accuracy"])
            lo.append(100 * (r["accuracy"] - r["ci95"][0]))
            hi.append(100 * (r["ci95"][1] - r["accuracy"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=m["label"], alpha=0.85)
    ax.set_xticks(range(len(benches)), benches)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%), 95% Wilson interval")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(sides), frameon=False)
    fig.tight_layout()
    path = Path(path)
    from iceburg_mlx.atomic import write_with

    try:
        write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return path


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def render_markdown(record: dict[str, Any], chart: str | None = None) -> str:
    """The report as markdown; `chart` is the PNG's file name relative to the report, if any."""
    m = record["model"]
    title = m["label"] + (f" vs {record['against']['label']}" if record.get("against") else "")
    s = record.get("settings", {})
    lines = [f"# Eval: {title}", "",
             (f"{record['created']} · seed {s.get('seed')} · greedy · max {s.get('max_tokens')} tokens · "
              f"n per bench {s.get('n') or 'all'}"), ""]
    lines += ["| bench | model | n | accuracy | 95% CI | mean score | ECE | Brier |",
              "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in summary_rows(record):
        ece = "" if r["ece"] is None else f"{r['ece']:.3f}"
        brier = "" if r["brier"] is None else f"{r['brier']:.3f}"
        lines.append(f"| {r['bench']} | {r['model']} | {r['n']} | {_pct(r['accuracy'])} | "
                     f"{_pct(r['ci95'][0])}–{_pct(r['ci95'][1])} | {r['mean_score']:.2f} | {ece} | {brier} |")
    lines.append("")
    if record.get("verdicts"):
        lines += ["## Paired comparison", "",
                  "Exact McNemar test per bench, Benjamini-Hochberg across benches, Cohen's h as effect size.", ""]
        lines += [f"- {v}" for v in record["verdicts"]] + [""]
    lines += ["## Perplexity (assistant tokens of the reference answers)", ""]
    for side in ("model", "against"):
        x = record.get(side)
        if x:
            p = x.get("perplexity")
            lines.append(f"- {x['label']}: " + (f"{p['perplexity']:.3f} over {p['tokens']} tokens, "
                                                f"{p['conversations']} conversations" if p else "no reference answers"))
    lines.append("")
    lines += ["## Chat-template contamination", ""]
    for side in ("model", "against"):
        x = record.get(side)
        c = x.get("contamination") if x else None
        if c:
            lines.append(f"- {x['label']} ({c['mode']} mode, {c['n']} sentinel prompts): "
                         + ("clean" if c["passed"] else f"{len(c['failures'])} contaminated answers"))
    lines.append("")
    if record.get("changes"):
        lines += ["## Changes since the previous eval", ""]
        lines += [f"- {c['bench']}/{c['id']}: {c['change']}" for c in record["changes"]] + [""]
    if record.get("regression"):
        reg = record["regression"]
        lines += ["## Regression set", "", f"{reg['n']} prompts from {reg['path']}: {len(reg['flags'])} flagged", ""]
        lines += [f"- {f['id']}: {f['flag']}" for f in reg["flags"]] + [""]
    lines.append(f"![scores]({chart})" if chart else "_Chart skipped: matplotlib is not installed._")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, record: dict[str, Any]) -> dict[str, Path]:
    """eval.json, scores.png (if matplotlib) and report.md into `out_dir`; returns their paths."""
    from iceburg_mlx.atomic import open_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"eval.json": write_eval_json(out, record)}
    chart = plot_scores(record, out / CHART_PNG)
    if chart is not None:
        paths["chart"] = chart
    with open_atomic(out / REPORT_MD) as f:
        f.write(render_markdown(record, CHART_PNG if chart is not None else None))
    paths["report"] = out / REPORT_MD
    return paths
