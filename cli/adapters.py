"""`iceburg-mlx adapters ...`: list, show and remove entries of the adapter registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from iceburg_mlx.cli.app import app

adapters_app = typer.Typer(help="List, inspect and remove registered adapters (<dir>/<role>/<version>/).",
                           no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")

DirOpt = typer.Option(None, "--adapters-dir", help="Registry directory (default: $ICEBURG_MLX_ADAPTERS or ./adapters).")
RECIPE_KEYS = ("extends", "model.base", "role.name", "method.name", "method.loss", "method.beta",
               "method.init_adapter", "data.train", "data.valid", "lora.rank", "lora.alpha", "lora.layers",
               "lora.dora", "optim.name", "optim.lr", "train.steps", "train.epochs", "train.batch_size",
               "train.grad_accum")


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _loss(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _headline(evals: dict[str, float]) -> str:
    return " ".join(f"{b} {100 * a:.0f}%" for b, a in evals.items())


def _when(info) -> str:
    return info.created.astimezone().strftime("%Y-%m-%d %H:%M")


@adapters_app.command("list")
def list_cmd(adapters_dir: Optional[Path] = DirOpt,
             as_json: bool = typer.Option(False, "--json", help="Print a JSON array instead of a table.")) -> None:
    """Every entry: name, base model, steps, losses, eval headline, created."""
    from rich.table import Table

    from iceburg_mlx.adapters.registry import adapters_root, list_entries

    entries = list_entries(adapters_dir)
    if as_json:
        typer.echo(json.dumps([e.to_dict() for e in entries], ensure_ascii=False))
        return
    if not entries:
        typer.echo(f"no adapters in {adapters_root(adapters_dir)}")
        return
    table = Table(title=f"adapters in {adapters_root(adapters_dir)}")
    for col, just in (("name", "left"), ("base", "left"), ("steps", "right"), ("final loss", "right"),
                      ("best valid", "right"), ("eval", "left"), ("created", "left")):
        table.add_column(col, justify=just, overflow="fold")
    for e in entries:
        m = e.metrics
        table.add_row(e.name, e.base or "", "" if m.steps is None else str(m.steps), _loss(m.final_train_loss),
                      _loss(m.best_val_loss), _headline(e.evals), _when(e))
    console = _console()
    console.print(table)
    for e in entries:
        for p in e.problems:
            console.print(f"warning: {e.name}: {p}", markup=False, style="yellow")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


@adapters_app.command("show")
def show_cmd(name: str = typer.Argument(..., help="role (the newest version) or role@version."),
             adapters_dir: Optional[Path] = DirOpt,
             as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """One entry: adapter config, provenance, recipe summary, metrics summary, eval."""
    from iceburg_mlx.adapters.registry import entry_info, get, read_entry_files

    ref = get(name, adapters_dir)
    info = entry_info(ref)
    files = read_entry_files(ref)
    if as_json:
        typer.echo(json.dumps({**info.to_dict(), **files}, ensure_ascii=False, default=str))
        return
    out = _console()

    def say(text: str) -> None:
        out.print(text, markup=False)

    say(f"{info.name}  {info.path}")
    say(f"created   {_when(info)}")
    say(f"base      {info.base or '?'}")
    cfg = files["config"] or {}
    lp = cfg.get("lora_parameters") or {}
    say(f"adapter   {cfg.get('fine_tune_type', 'lora')}, rank {lp.get('rank', '?')}, scale {lp.get('scale', '?')}, "
        f"{cfg.get('num_layers', '?')} layers, keys: {', '.join(lp.get('keys') or []) or 'all linears'}")
    if isinstance(files["provenance"], dict) and files["provenance"]:
        say("provenance:")
        for k, v in files["provenance"].items():
            say(f"  {k}: {_value(v)}")
    if files["recipe"] is not None:
        flat = _flatten(files["recipe"])
        keys = [k for k in RECIPE_KEYS if k in flat] or list(flat)
        say("recipe:   " + ", ".join(f"{k}={_value(flat[k])}" for k in keys))
    m = info.metrics
    if m.lines:
        parts = [f"{m.steps} steps" if m.steps is not None else "steps ?"]
        if m.final_train_loss is not None:
            parts.append(f"final train loss {m.final_train_loss:.4f}")
        if m.best_val_loss is not None:
            parts.append(f"best valid loss {m.best_val_loss:.4f}"
                         + (f" (step {m.best_val_step})" if m.best_val_step is not None else ""))
        say("metrics:  " + ", ".join(parts) + f" ({m.lines} records)")
    else:
        say("metrics:  none")
    record = files["eval"]
    if record:
        from iceburg_mlx.eval.report import summary_rows

        say(f"eval:     {record.get('created', '')}")
        for r in summary_rows(record):
            say(f"  {r['bench']:<12} {r['model']:<16} n {r['n']:<4} accuracy {100 * r['accuracy']:.0f}% "
                f"(95% CI {100 * r['ci95'][0]:.0f}-{100 * r['ci95'][1]:.0f}%)")
        p = (record.get("model") or {}).get("perplexity")
        if p:
            say(f"  perplexity {p['perplexity']:.3f} over {p['tokens']} tokens")
        for v in record.get("verdicts") or []:
            say(f"  {v}")
    else:
        say("eval:     none (run `iceburg-mlx eval --adapter NAME --out ENTRY-DIR`)")
    for p in info.problems:
        say(f"warning: {p}")


@adapters_app.command("rm")
def rm_cmd(name: str = typer.Argument(..., help="role@version (the version is required)."),
           adapters_dir: Optional[Path] = DirOpt) -> None:
    """Remove one entry."""
    from iceburg_mlx.adapters.registry import remove

    ref = remove(name, adapters_dir)
    typer.echo(f"removed {ref.name} ({ref.path})")
