"""`iceburg-mlx`: the Typer application. Command modules import heavy libraries lazily."""

from __future__ import annotations

import os
import sys

import typer

app = typer.Typer(
    name="iceburg-mlx",
    help="Fine-tune, evaluate, serve and export ICEBURG role models with MLX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _reexec_with_malloc_tuning() -> None:
    """glibc malloc settings only apply at process start: re-exec once with them set."""
    if os.environ.get("_ICEBURG_MLX_REEXEC") == "1":
        return
    from iceburg_mlx import _platform

    env = _platform.malloc_env()
    if env is None or not sys.argv or "--help" in sys.argv[1:2] or len(sys.argv) == 1:
        return
    env["_ICEBURG_MLX_REEXEC"] = "1"
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "iceburg_mlx.cli", *sys.argv[1:]], env)
    except OSError:
        return


def run() -> None:
    """Console-script entry: typed library errors become one line and exit code 2."""
    _reexec_with_malloc_tuning()
    from iceburg_mlx.errors import IceburgError

    try:
        app(standalone_mode=True)
    except IceburgError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


# Command modules register themselves on `app` when imported (one module per command group).
from iceburg_mlx.cli import doctor, fuse, generate, models, train  # noqa: E402,F401
from iceburg_mlx.cli import data  # noqa: E402,F401  (the `data` command group, issue 5)
from iceburg_mlx.cli import eval as _eval  # noqa: E402,F401
from iceburg_mlx.cli import adapters as _adapters  # noqa: E402,F401
from iceburg_mlx.cli import serve as _serve  # noqa: E402,F401
from iceburg_mlx.cli import review as _review  # noqa: E402,F401  (blind A/B review, issue 23)
