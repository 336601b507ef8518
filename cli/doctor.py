"""`iceburg-mlx doctor`: what this machine is, how MLX is set up, what it can train."""

from __future__ import annotations

import json
from typing import Optional

import typer

from iceburg_mlx.cli.app import app


@app.command()
def doctor(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Also size up this model for training."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of a table."),
) -> None:
    """MLX backend, device, memory, Linux CPU set-up, default model and training advice."""
    from rich.console import Console
    from rich.table import Table

    from iceburg_mlx.diagnostics import collect

    report = collect(model)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    table = Table(title="iceburg-mlx doctor", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    for section, rows in report.items():
        table.add_row(f"[cyan]{section}[/cyan]", "")
        for k, v in rows.items():
            table.add_row(f"  {k}", str(v))
    Console().print(table)
